"""Run a MergeSpec end to end: resolve the inputs, check them, merge tensor by tensor, write the new folder.

Everything that can be refused (unknown parameters, unusable weights, an occupied output folder, other
architectures or shapes) is checked before the first tensor is merged, so a bad spec fails in seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fusionrec.errors import UserError, format_validation_error
from fusionrec.model.merge import io
from fusionrec.model.merge.base import MergeMethod, copied
from fusionrec.model.merge.registry import get_method
from fusionrec.model.merge.report import InputRecord, MergeReport
from fusionrec.spec import MergeSpec, manifest_from_dict

log = logging.getLogger(__name__)

def run_merge(
    spec: MergeSpec,
    out_dir: Path,
    *,
    encoders: Mapping[str, str] | None = None,
    t_filters: Mapping[str, float] | None = None,
    overwrite: bool = False,
) -> MergeReport:
    """Merge the checkpoints `spec` names into a new HF model folder at `out_dir`.

    Args:
        spec: the merge; `base` and `models[].source` are model sources (`fusionrec.model.sources`) or, with
            `encoders`, encoder names.
        out_dir: the folder to create; it gets model.safetensors, the reference's config and tokenizer files
            and merge_report.json.
        encoders: encoder name -> source, from the manifest the merge belongs to.
        t_filters: SLERP's per-tensor `t` ({tensor-name regex: t}), in place of the spec's tFilters.
        overwrite: replace a non-empty `out_dir`.

    Returns:
        the report that was written to `out_dir/merge_report.json`.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    method = get_method(spec.method)
    raw = method_parameters(spec, method, t_filters)
    params = method.resolve_params(raw)
    weights = [ref.weight for ref in spec.models]
    method.check_weights(weights)
    io.check_out_dir(out_dir, overwrite=overwrite)

    base_path = None
    if method.needs_base():
        if spec.base_source is None:  # the spec of a task-vector method requires `base`
            raise UserError(f"merge method {method.name()!r} works on task vectors and needs merge.base",
                            field="merge.base", fix="set merge.base to the models' common base model")
        base_path = io.resolve_source(spec.base_source, encoders)
    model_paths = [io.resolve_source(ref.source, encoders) for ref in spec.models]
    target = out_dir.resolve()
    for path in [base_path, *model_paths]:
        if path is not None and (target == path.resolve() or target in path.resolve().parents):
            raise UserError(f"--out {out_dir} would replace the input model {path}", fix="write to a new folder")

    with ExitStack() as stack:
        models = [stack.enter_context(io.CheckpointReader(path, f"models[{i}] {ref.source!r}"))
                  for i, (path, ref) in enumerate(zip(model_paths, spec.models))]
        base = stack.enter_context(io.CheckpointReader(base_path, f"base {spec.base_source!r}")) if base_path else None
        # The reference decides the tensor set, the dtypes, the non-float tensors and the copied config.
        reference = base if base is not None else models[0]
        io.check_compatible([reference, *(m for m in models if m is not reference)])

        report = MergeReport(
            method=method.name(), pretty_name=method.pretty_name(), reference_url=method.reference_url(),
            parameters={**{p.name: p.default for p in method.parameters()}, **raw},
            inputs=_inputs(spec, base, models, method),
            reference=str(reference.folder), output=str(out_dir.resolve()),
        )
        merged = {}
        for name in reference.names():
            if not reference.is_float(name):
                result = copied(reference.tensor(name))  # other models may lack it: see check_compatible
            else:
                base_tensor = base.tensor(name) if base is not None else None
                result = method.merge_tensor(name, [m.tensor(name) for m in models], base_tensor, weights, params)
            merged[name] = result.tensor
            report.tensors[name] = result.stats

    with io.atomic_dir(out_dir, overwrite=overwrite) as staging:
        io.save_tensors(merged, staging / io.MERGED_WEIGHTS)
        report.copied_files = io.copy_side_files(Path(report.reference), staging)
        report.output_sha256 = {io.MERGED_WEIGHTS: io.sha256_file(staging / io.MERGED_WEIGHTS)}
        report.seconds = time.perf_counter() - started
        io.write_json(staging / io.REPORT_FILE, report.to_json())
    log.info("merged %d tensors (%d copied) with %s into %s in %.1f s", report.tensors_merged,
             report.tensors_copied, method.name(), out_dir, report.seconds)
    return report


def method_parameters(spec: MergeSpec, method: MergeMethod,
                      t_filters: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The parameters the user set for `method` (the spec's member for it takes exactly those, checked when the
    spec was read), with `t_filters` replacing SLERP's tFilters where given."""
    raw = spec.parameters()
    if t_filters is not None:
        if "tFilters" not in {p.name for p in method.parameters()}:
            raise UserError(f"method {method.name()!r} does not take tFilters (per-tensor t)", field="merge.tFilters")
        raw["tFilters"] = dict(t_filters)
    return raw


def _inputs(spec: MergeSpec, base: io.CheckpointReader | None, models: list[io.CheckpointReader],
            method: MergeMethod) -> list[InputRecord]:
    def record(role: str, source: str, reader: io.CheckpointReader, weight: float | None) -> InputRecord:
        return InputRecord(role, source, str(reader.folder), weight, {f.name: io.sha256_file(f) for f in reader.files})

    records = [record("base", spec.base_source, base, None)] if base is not None and spec.base_source else []
    for ref, reader in zip(spec.models, models):
        records.append(record("model", ref.source, reader, ref.weight if method.uses_weights() else None))
    return records


def load_merge_config(path: Path) -> tuple[MergeSpec, dict[str, str]]:
    """Read a merge YAML: a bare MergeSpec mapping, or a FusionRecommender manifest (its spec.merge).

    Returns the spec and the manifest's encoder name -> source mapping (empty for a bare spec).
    """
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"merge config {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise UserError(f"merge config {path} is not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise UserError(f"merge config {path} must be a mapping (a merge spec or a FusionRecommender manifest)")
    if {"apiVersion", "kind", "spec"} & set(document):
        manifest = manifest_from_dict(document, source=str(path))
        if manifest.spec.merge is None:
            raise UserError(f"manifest {path} has no spec.merge section", field="spec.merge")
        return manifest.spec.merge, {e.name: e.source for e in manifest.spec.encoders}
    try:
        return MergeSpec.model_validate(document), {}
    except ValidationError as exc:
        problems = format_validation_error(exc, prefix="merge")
        lines = "\n".join(f"  {field}: {message}" for field, message in problems)
        field = problems[0][0] if problems else None
        raise UserError(f"merge config {path} is invalid:\n{lines}", field=field) from None
