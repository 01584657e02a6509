"""How far the fused user tower moves in half precision, on CPU, against the compile gate's 1e-2 limit.

The torch and TensorRT backends offer fp16 and bf16 for GPUs, gated at a max relative output error of 1e-2
(`fusionrec.compile.parity`). Whether a trained tower passes depends on its LMs, not on the GPU: bf16 keeps 8
significant bits, fp16 11, and a 12-layer encoder accumulates the rounding. This measures it here, on real
user inputs of a trained artifact, so a GPU session knows which precision to compile before it starts:
- "cast": every weight and op in the precision (what `TorchRuntime` and the compile gate run);
- "autocast": weights stay fp32, matmuls run in the precision, norms and softmax in fp32 (torch.autocast).

    python bench/half_precision.py <artifact> [--users 64] [--out bench/results/half-precision.md]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fusionrec.compile.graphs import build_graph
from fusionrec.compile.inputs import TowerInputs, select
from fusionrec.compile.parity import OUTPUT_TOLERANCES, max_relative_error
from fusionrec.model.saved import USERS_NAME, load_model


def user_batch(model, artifact, users: int) -> dict[str, np.ndarray]:
    """The first `users` stored users' histories as user-graph inputs (the texts serving would tokenise)."""
    index = {item: i for i, item in enumerate(pd.read_parquet(artifact.items_path)["item_id"].astype(str))}
    stored = pd.read_parquet(artifact.path / USERS_NAME)["history"].head(users)
    histories = [np.array([index[i] for i in h if i in index], dtype=np.int64) for h in stored]
    return TowerInputs.from_model(model).user_inputs([h for h in histories if len(h)], model.item_embeddings())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, artifact = load_model(args.artifact)
    module, signature = build_graph(model, "user")
    feed = select(user_batch(model, artifact, args.users), signature)
    tensors = [torch.from_numpy(feed[name]) for name in signature.inputs]
    rows = []
    with torch.inference_mode():
        reference = module(*tensors).numpy()
        for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            cast = copy.deepcopy(module).to(dtype)(*tensors).float().numpy()
            rows.append((precision, "cast", max_relative_error(reference, cast)))
            with torch.autocast("cpu", dtype=dtype):
                amp = module(*tensors).float().numpy()
            rows.append((precision, "autocast", max_relative_error(reference, amp)))
    encoders = "+".join(e.spec.name for e in model.items.encoders)
    lines = [f"# Half precision vs fp32: fused user tower ({encoders}), {len(reference)} real users",
             "", f"Command: `python bench/half_precision.py {' '.join(sys.argv[1:])}`", "",
             (f"Artifact {artifact.path.name}; torch {torch.__version__}, CPU. Gate (compile parity): "
              f"max |half - fp32| / max |fp32| <= {OUTPUT_TOLERANCES['bf16']:g}."), "",
             "| precision | how | max relative error | gate |", "|---|---|---:|---|"]
    for precision, how, error in rows:
        verdict = "passes" if error <= OUTPUT_TOLERANCES[precision] else "fails"
        lines.append(f"| {precision} | {how} | {error:.4f} | {verdict} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report, encoding="utf-8")


if __name__ == "__main__":
    main()
