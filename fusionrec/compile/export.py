"""torch -> ONNX for the tower graphs, with dynamic batch and sequence axes.

The legacy TorchScript exporter (`dynamo=False`) is used on purpose: on these machines it exports a small
BERT in under a second and matches torch to 1e-6 in ONNX Runtime, while the dynamo exporter needs onnxscript
and takes 7-10 s (design.md section 8).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fusionrec.compile.graphs import OUTPUT_NAME, GraphSignature
from fusionrec.errors import UserError

log = logging.getLogger(__name__)


def export_onnx(module: nn.Module, signature: GraphSignature, example: dict[str, np.ndarray], path: Path,
                opset: int) -> Path:
    """Trace `module` on `example` inputs and write `path`; the graph is checked before it is returned.

    The example must have at least 2 rows and 2 tokens per encoder: a size-1 axis can be specialised to a
    constant by the tracer even when it is declared dynamic.
    """
    args = tuple(torch.from_numpy(np.ascontiguousarray(example[name])) for name in signature.inputs)
    small = {name: tuple(a.shape) for name, a in zip(signature.inputs, args) if min(a.shape, default=2) < 2}
    if small:
        raise ValueError(f"export needs example inputs with every axis >= 2, got {small}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
        torch.onnx.export(module, args, str(path), input_names=list(signature.inputs), output_names=[OUTPUT_NAME],
                          dynamic_axes=signature.dynamic_axes, opset_version=opset, do_constant_folding=True,
                          dynamo=False)
    _patch_bool_eyelike(path)
    check_onnx_file(path)
    return path


def _patch_bool_eyelike(path: Path) -> None:
    """ONNX Runtime has no bool EyeLike kernel (`torch.eye(n, dtype=torch.bool)` exports to one): run each
    such node in float between two casts, which computes the same identity mask."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    types = {v.name: v.type.tensor_type.elem_type
             for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    nodes = list(model.graph.node)
    patched = False
    for position in range(len(nodes) - 1, -1, -1):
        node = nodes[position]
        if node.op_type != "EyeLike" or types.get(node.output[0]) != TensorProto.BOOL:
            continue
        for attribute in [a for a in node.attribute if a.name == "dtype"]:
            node.attribute.remove(attribute)
        node.attribute.append(helper.make_attribute("dtype", TensorProto.FLOAT))
        float_in, float_out = f"{node.input[0]}_float", f"{node.output[0]}_float"
        cast_in = helper.make_node("Cast", [node.input[0]], [float_in], to=TensorProto.FLOAT,
                                   name=f"{node.name}_from_bool")
        cast_out = helper.make_node("Cast", [float_out], [node.output[0]], to=TensorProto.BOOL,
                                    name=f"{node.name}_to_bool")
        node.input[0], node.output[0] = float_in, float_out
        nodes[position:position + 1] = [cast_in, node, cast_out]
        patched = True
    if patched:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        onnx.save(model, str(path))


def check_onnx_file(path: Path) -> None:
    """Refuse a file that is not a well-formed ONNX model, with a UserError naming the file and the cause."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError, ValidationError, OSError... depending on the damage
        raise UserError(f"{path.name} is not a valid ONNX model: {type(exc).__name__}: {str(exc)[:300]}",
                        field=path.name, fix="recompile the artifact with `fusionrec compile`") from None
    if not model.graph.output:
        raise UserError(f"{path.name} has no graph outputs", field=path.name)
