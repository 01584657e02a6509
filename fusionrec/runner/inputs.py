"""What each step's key is made of: the files a data spec reads, the folders a model source names, and the
spec a run with the merged encoder in place trains with (one encoder alone is
`fusionrec.train.candidates.single_encoder_spec`: the training job fits those too, under `select: best`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fusionrec.errors import UserError
from fusionrec.runner.cache import FolderHasher
from fusionrec.spec import DataSpec, EncoderSpec, FusionRecommenderSpec

DEFAULT_BASELINES = {"ranking": ["pop", "bpr", "sasrec"], "ctr": ["lr", "fm"], "rating": []}
# Spec sections a trained model depends on; serving, rollout, compile, storage and evaluation do not change it.
TRAINED_SECTIONS = ("encoders", "merge", "fusion", "task", "data", "training")


def data_files(data: DataSpec) -> list[Path] | None:
    """The files `load_dataset(data)` reads, or None when a built-in dataset (ml-100k, ml-1m) is not prepared yet.

    A prepared folder, named by `data.dataset` or given as `data.path`, is keyed by its Parquet files alone: the
    card describes them (and names the folder it was written to, which must not change the key). A name that is
    neither prepared nor built in fails here, before any step runs, as `load_dataset` would later (so does
    `order: time` on a dataset prepared without timestamps). Data in object storage is fetched (or its cached
    copy checked) first, and keyed by that local copy's files, as `load_dataset` will read them.
    """
    from fusionrec.data.remote import local_data

    data = local_data(data)
    if data.interactions:
        base = Path(data.path) if data.path else Path()
        names = [name for name in (data.interactions, data.items, data.users) if name]
        files = [base / name for name in names]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise UserError(f"data file {missing[0]} does not exist", field="spec.data.interactions",
                            fix="check spec.data.path and the file names (relative names are taken inside "
                                "spec.data.path, else the current folder)")
        from fusionrec.data.prepare import check_order, is_prepared_folder

        if is_prepared_folder(files[0].parent):  # a prepared copy's files named one by one
            check_order(files[0].parent, data.order)
        return files
    from fusionrec.data.datasets import BUILT_INS
    from fusionrec.data.prepare import is_prepared, is_prepared_folder, not_a_prepared_path, not_prepared, prepared_dir

    if data.path:
        path = Path(data.path)
        if not path.exists():
            raise UserError(f"spec.data.path {data.path} does not exist", field="spec.data.path",
                            fix="give the folder `fusionrec data prepare` wrote (or a built-in's raw files or "
                                "wheel), or drop the field")
        if is_prepared_folder(path):
            return _prepared_files(path, data.order)
        if data.dataset not in BUILT_INS:
            raise not_a_prepared_path(data.path, data.dataset)
        return [path]
    name = str(data.dataset)
    if is_prepared(name):
        return _prepared_files(prepared_dir(name), data.order)
    if name in BUILT_INS:
        return None
    raise not_prepared(name)


def _prepared_files(folder: Path, order: str) -> list[Path]:
    """The Parquet files of a prepared folder, after refusing `order: time` on one without timestamps."""
    from fusionrec.data.prepare import FILES, check_order

    check_order(folder, order)
    return [folder / name for name in FILES.values() if (folder / name).is_file()]


def data_fingerprint(files: list[Path], hasher: FolderHasher) -> str:
    return hasher.files([f for path in files for f in (_walk(path) if path.is_dir() else [path])])


def _walk(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def source_location(source: str) -> Path | None:
    """The local file or folder a source names, without converting or downloading anything; None for sources
    that live elsewhere (hf://), which are then keyed by their name (and revision) only."""
    scheme, _, rest = source.partition("://") if "://" in source else ("", "", source)
    if scheme in ("", "file"):
        return Path(rest if scheme else source).expanduser()
    if scheme == "pkg":
        from fusionrec.model.packaged import find_package_dir

        pieces = [p for p in rest.strip("/").split("/") if p]
        head, *inner = pieces[0].split(".") if pieces else ("",)
        return find_package_dir(head).joinpath(*inner, *pieces[1:]) if head else None
    if scheme == "pvc":
        from fusionrec.model.sources import pvc_root

        local = pvc_root() / rest.strip("/")
        return local if local.exists() else None
    return None


def source_fingerprint(source: str, hasher: FolderHasher) -> str:
    """A content hash of the model a source names (its folder, or its package's files)."""
    location = source_location(source)
    if location is None:
        return f"name:{source}"
    if not location.exists():
        raise UserError(f"model source {source!r}: {location} does not exist", field="spec.encoders.source",
                        fix="give the folder that holds the model's config.json, or pkg://<package>")
    return hasher.path(location)


def trained_parts(spec: FusionRecommenderSpec, sources: dict[str, str]) -> dict[str, Any]:
    """The spec sections a trained model depends on, in canonical JSON form, with each encoder's source
    replaced by the content hash of its model (`sources`: name -> hash): moving a model folder, or naming
    the same package another way, keeps the key; changing a weight changes it."""
    document = spec.model_dump(mode="json", by_alias=True)
    parts: dict[str, Any] = {section: document.get(section) for section in TRAINED_SECTIONS}
    parts["encoders"] = [{**encoder, "source": sources[encoder["name"]]} for encoder in parts["encoders"]]
    return parts


def with_merged_encoder(spec: FusionRecommenderSpec, merged: Path) -> FusionRecommenderSpec:
    """The spec to train after a parameter merge: the encoder named `merge.name` reads the merged folder.

    An encoder of that name keeps its pooling, length and freezing and only changes source; without one, the
    merged model joins the fusion with the settings of the first encoder it was merged from (by name), or
    frozen mean pooling when it was merged from sources alone.
    """
    merge = spec.merge
    if merge is None:
        return spec
    encoders = list(spec.encoders)
    names = [e.name for e in encoders]
    if merge.name in names:
        index = names.index(merge.name)
        encoders[index] = encoders[index].model_copy(update={"source": str(merged)})
    else:
        consumed = [e for e in encoders if e.name in {ref.source for ref in merge.models} | {merge.base_source}]
        template = consumed[0] if consumed else EncoderSpec(name=merge.name, source=str(merged), freeze=True)
        encoders.append(template.model_copy(update={"name": merge.name, "source": str(merged)}))
    return spec.model_copy(update={"encoders": encoders}, deep=True)


def baselines_of(spec: FusionRecommenderSpec) -> list[str]:
    """The baselines to fit: the spec's list (deduplicated), else the task's defaults; each must suit the task."""
    from fusionrec.baselines.registry import get_baseline

    task = spec.task.type
    names = list(dict.fromkeys(spec.evaluation.baselines if spec.evaluation.baselines is not None
                               else DEFAULT_BASELINES[task]))
    for name in names:
        kind = get_baseline(name).task
        if kind != task:
            suited = ", ".join(DEFAULT_BASELINES[task]) or "none (no rating baselines exist yet)"
            raise UserError(f"baseline {name!r} is a {kind} model but spec.task.type is {task!r}",
                            field="spec.evaluation.baselines", fix=f"use baselines that suit {task}: {suited}")
    return names
