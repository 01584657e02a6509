"""Small helpers shared by the compile tests."""

from __future__ import annotations

import hashlib
from pathlib import Path


def snapshot(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under an artifact folder, MANIFEST.json included."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def siblings(folder: Path) -> list[str]:
    """Entries next to the artifact folder: a failed compile must leave no temp directory behind."""
    return sorted(p.name for p in folder.parent.iterdir())


def export_tiny_user_tower(artifact: Path, folder: Path):
    """Export a test artifact's user tower as compile does: (onnx path, example rows, other rows at batch 3
    with other token counts), for the int8 and smoothing tests that run the real export path."""
    import numpy as np
    import torch

    from fusionrec.compile.export import export_onnx
    from fusionrec.compile.graphs import build_graph
    from fusionrec.compile.inputs import TowerInputs, select
    from fusionrec.model.saved import load_model

    torch.set_num_threads(1)
    model, _ = load_model(artifact)
    module, signature = build_graph(model, "user")
    inputs = TowerInputs.from_model(model)
    example = select(inputs.user_inputs([np.array([0, 3, 6]), np.array([1, 2])], None, np.arange(2)), signature)
    other = select(inputs.user_inputs([np.array([4, 1, 7, 2, 9]), np.array([5]), np.array([8, 0])], None,
                                      np.arange(3)), signature)
    return export_onnx(module, signature, example, folder / "encoder.onnx", 17), example, other
