"""`fusionrec compile ARTIFACT`: export the towers of a trained artifact for serving, behind a parity gate."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("compile")
@click.argument("artifact", type=click.Path(file_okay=False, path_type=Path))
@click.option("--backend", default=None, metavar="NAME",
              help="onnxruntime | tensorrt | torch (default: the artifact spec's compile.backend).")
@click.option("--precision", default=None, metavar="NAME",
              help="fp32 | fp16 | bf16 | int8 (default: spec compile.precision). onnxruntime: fp32, int8; "
                   "tensorrt and torch: fp32, fp16, bf16.")
@click.option("--threads", type=int, default=None, help="Intra-op threads per replica (0 = all cores).")
@click.option("--opset", type=int, default=None, help="ONNX opset (default: spec compile.opset, 17).")
@click.option("--prune-layers", type=int, default=0, show_default=True,
              help="Drop this many top transformer layers of every encoder; the NDCG@10 cost is measured.")
@click.option("--tolerance", type=float, default=None,
              help="Override the parity gate: relative output error, or for int8 the relative NDCG@10 drop.")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TensorRT timing cache file, reused across builds.")
@click.option("--json", "as_json", is_flag=True, help="Print compile.json's record as JSON (for scripts).")
def compile_(artifact: Path, backend: str | None, precision: str | None, threads: int | None, opset: int | None,
             prune_layers: int, tolerance: float | None, timing_cache: Path | None, as_json: bool) -> None:
    """Compile ARTIFACT (a version folder) for serving.

    Writes encoder.onnx (user tower) and item_encoder.onnx (item tower), or TensorRT encoder.plan files with
    a sidecar naming the TensorRT version and GPU, and compile.json with the backend, precision, opset and
    parity numbers, all added to the artifact atomically. If the compiled graph differs from torch by more
    than the precision allows (fp32 1e-4, fp16/bf16 1e-2 relative; int8: validation NDCG@10 drop >= 1%),
    nothing is written and the exit code is 2. A ranking model with at least compile.index.minItems items
    also gets item_index.faiss, an approximate index for /v1/recommend, refused the same way when its
    recall@10 against exact search is below compile.index.minRecall.

    \b
    Examples:
      fusionrec compile runs/v3 --backend onnxruntime --precision int8 --threads 2
      fusionrec compile runs/v3 --backend tensorrt --precision fp16 --timing-cache ~/.cache/trt.cache
      fusionrec compile runs/v3 --json | jq .parity
    """
    from fusionrec.compile import compile_artifact

    record = compile_artifact(artifact, backend=backend, precision=precision, threads=threads, opset=opset,
                              prune_layers=prune_layers, tolerance=tolerance, timing_cache=timing_cache,
                              report=(lambda line: None) if as_json else (lambda line: click.echo(f"  parity {line}")))
    if as_json:
        click.echo(json.dumps(record, indent=2, default=str))
        return
    written = sorted({v for g in record["graphs"].values() for k, v in g.items() if k in ("onnx", "plan")})
    written += [record["index"]["file"]] if "file" in record.get("index", {}) else []
    click.echo(f"compiled {artifact} with {record['backend']} {record['precision']} (opset {record['opset']}) "
               f"in {record['seconds']:.1f}s: {', '.join(written + ['compile.json'])}")
    for key, value in record["quality"].items():
        click.echo(f"  {key}: {value}")
    if "index" in record:
        from fusionrec.compile.item_index import describe_index

        click.echo(f"  item index: {describe_index(record['index'])}")
