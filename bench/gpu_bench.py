"""GPU latency of the fused 3-encoder text tower (MiniLM-L6 + MPNet-base + SmolLM2-135M shapes, random
weights): torch eager fp32 vs eager bf16 vs torch.compile with CUDA graphs (bf16), and ONNX Runtime GPU when
its CUDA provider is installed. Run by bench/gpu.sh; needs only torch and transformers (no model downloads).

The tower mirrors fusionrec's per-request path (graphs.TextTowerGraph): each LM -> masked pooling -> linear
projection to a common dim -> softmax attention over the encoders -> fused vector.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

DIM = 256


def backbones() -> dict[str, tuple[nn.Module, str]]:
    """The three packaged shapes with random weights (pooling: mean for the encoders, last for the decoder)."""
    from transformers import AutoModel, BertConfig, LlamaConfig, MPNetConfig

    configs = {
        "minilm": (BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                              intermediate_size=1536), "mean"),
        "mpnet": (MPNetConfig(vocab_size=30527, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                              intermediate_size=3072), "mean"),
        "smollm": (LlamaConfig(vocab_size=49152, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                               num_key_value_heads=3, intermediate_size=1536, max_position_embeddings=2048,
                               tie_word_embeddings=True), "last"),
    }
    return {name: (AutoModel.from_config(config), pooling) for name, (config, pooling) in configs.items()}


class Tower(nn.Module):
    def __init__(self, models: dict[str, tuple[nn.Module, str]]) -> None:
        super().__init__()
        self.names = list(models)
        self.lms = nn.ModuleList(m for m, _ in models.values())
        self.poolings = [p for _, p in models.values()]
        self.projections = nn.ModuleList(nn.Linear(m.config.hidden_size, DIM) for m, _ in models.values())
        self.score = nn.Sequential(nn.Linear(DIM, DIM), nn.Tanh(), nn.Linear(DIM, 1))

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        vectors = []
        for m, lm in enumerate(self.lms):
            ids, mask = tensors[2 * m], tensors[2 * m + 1]  # (B, T)
            hidden = lm(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, H)
            if self.poolings[m] == "mean":
                w = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
                pooled = (hidden * w).sum(1) / w.sum(1).clamp(min=1)
            else:
                last = (torch.arange(mask.shape[1], device=mask.device) * mask).argmax(1)  # (B,)
                pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
            vectors.append(self.projections[m](pooled))  # (B, D)
        stacked = torch.stack(vectors, 1)  # (B, M, D)
        weights = torch.softmax(self.score(stacked), dim=1)  # (B, M, 1)
        return (weights * stacked).sum(1)  # (B, D)


def inputs(batch: int, seq: int, device: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = []
    for vocab in (30522, 30527, 49152):
        ids = torch.randint(5, vocab, (batch, seq), generator=g)
        mask = torch.ones(batch, seq, dtype=torch.long)
        mask[: batch // 2, seq // 2:] = 0  # half the rows padded to half length, like real traffic
        out += [ids.to(device), mask.to(device)]
    return out


def timed(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def ort_gpu(tower: nn.Module, seq: int):
    """An ONNX Runtime CUDA session of the fp32 tower, or a reason string when unavailable."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime not installed"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)"
    names = [f"{n}_{k}" for n in ("minilm", "mpnet", "smollm") for k in ("ids", "mask")]
    path = Path(tempfile.mkdtemp()) / "tower.onnx"
    example = inputs(2, seq, "cpu")
    torch.onnx.export(tower.cpu().float(), tuple(example), str(path), input_names=names, output_names=["vectors"],
                      dynamic_axes={n: {0: "batch", 1: "tokens"} for n in names}, opset_version=17, dynamo=False)
    tower.cuda()
    return ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"]), names


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", default="1,32,256")
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--budget", type=float, default=480, help="seconds; slow modes are skipped after it")
    args = parser.parse_args()
    started = time.perf_counter()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU visible")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    tower = Tower(backbones()).cuda().eval()
    bf16 = copy.deepcopy(tower).to(torch.bfloat16)  # its own weights: the fp32 tower stays fp32
    compiled = torch.compile(bf16, mode="reduce-overhead")
    session = ort_gpu(tower, args.seq)
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        x = inputs(batch, args.seq, "cuda")
        row = {"batch": batch}
        with torch.inference_mode():
            row["eager fp32"] = timed(lambda x=x: tower(*x), args.repeats)
            row["eager bf16"] = timed(lambda x=x: bf16(*x), args.repeats)
            ref = tower(*x).float()
            err = ((bf16(*x).float() - ref).abs().max() / ref.abs().max()).item()
            row["bf16 rel err"] = err
            if time.perf_counter() - started < args.budget:
                row["compile+cudagraphs bf16"] = timed(lambda x=x: compiled(*x), args.repeats)
        if isinstance(session, tuple):
            sess, names = session
            feed = {n: t.cpu().numpy() for n, t in zip(names, x)}
            row["ORT-GPU fp32"] = timed(lambda s=sess, f=feed: s.run(None, f), args.repeats)
        rows.append(row)
        print(row, flush=True)
    columns = ["eager fp32", "eager bf16", "compile+cudagraphs bf16", "ORT-GPU fp32"]
    print(f"\nfused 3-encoder tower (MiniLM-L6 + MPNet-base + SmolLM2-135M shapes), seq {args.seq}, "
          f"median ms of {args.repeats} runs")
    print("| batch | " + " | ".join(columns) + " | bf16 rel err |")
    print("|---:|" + "---:|" * (len(columns) + 1))
    for row in rows:
        cells = [f"{row[c]:.2f}" if c in row else "-" for c in columns]
        print(f"| {row['batch']} | " + " | ".join(cells) + f" | {row['bf16 rel err']:.2e} |")
    if not isinstance(session, tuple):
        print(f"ORT-GPU skipped: {session}")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
