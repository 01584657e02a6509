"""Latency of fusionrec's own serving path for the fused 3-encoder user tower (issue #5): a real
`FusedRecommender` (MiniLM-L6 + MPNet-base + SmolLM2-135M shapes, random weights, attention fusion, text user
tower) -> `build_graph(model, "user")` -> `TorchRuntime.run` (numpy in, numpy out: what serving calls), under
eager fp32 (the reference), eager bf16, bucketed CUDA graphs (bf16, fp32), torch.compile and ONNX Runtime's
CUDA provider when it is installed.

    bash bench/gpu.sh                                   # on the GPU machine (installs the carried wheels)
    python bench/gpu_bench.py --device cpu --tiny       # smoke run of the same code on CPU, a few seconds

The models go through the product's loaders (HF folders written here, `FusedRecommender.build` from a spec),
so a bench number is a number of the code serving runs, not of a copy of it. Every mode reports the median of
--repeats calls after --warmup calls, its first call (CUDA-graph capture or compilation included) and its max
relative error against eager fp32. --budget keeps the whole run inside a GPU lease: a mode or batch that would
not fit is skipped with the reason, and at the budget (+ a margin) the run stops, keeping what it measured;
the report is rewritten after every mode, so even a killed run leaves one.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

STARTED = time.perf_counter()  # the budget counts torch's import too
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402  (the environment above must be set first)
import torch  # noqa: E402

REFERENCE = "eager:fp32"
DEFAULT_MODES = "eager:fp32,cudagraphs:bf16,cudagraphs:fp16,eager:bf16,cudagraphs:fp32,onnxruntime:fp32," \
                "max-autotune-no-cudagraphs:bf16"
# Seconds a mode needs left in the budget to start (its first calls capture or compile).
RESERVE_S = {"eager": 10.0, "cudagraphs": 30.0, "onnxruntime": 150.0}
COMPILE_RESERVE_S = 240.0
FIRST_CALL_S = {"eager": 1.0, "cudagraphs": 10.0, "onnxruntime": 5.0}  # per new batch size
HARD_MARGIN_S = 30.0
TARGET_MS = 2.0  # issue #5: the fused tower at batch 1 under 2 ms
# name -> (HF family, config kwargs, pooling); the packaged models' shapes, or tiny ones for --tiny.
FULL = {
    "minilm": ("bert", {"vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6,
                        "num_attention_heads": 12, "intermediate_size": 1536}, "mean"),
    "mpnet": ("mpnet", {"vocab_size": 30527, "hidden_size": 768, "num_hidden_layers": 12,
                        "num_attention_heads": 12, "intermediate_size": 3072}, "mean"),
    "smollm": ("llama", {"vocab_size": 49152, "hidden_size": 576, "num_hidden_layers": 30,
                         "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536,
                         "max_position_embeddings": 2048, "tie_word_embeddings": True}, "last"),
}
_TINY = {"vocab_size": 1000, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
         "intermediate_size": 64}
TINY = {"minilm": ("bert", {**_TINY, "max_position_embeddings": 128}, "mean"),
        "mpnet": ("mpnet", {**_TINY, "max_position_embeddings": 130}, "mean"),
        "smollm": ("llama", {**_TINY, "num_key_value_heads": 2, "max_position_embeddings": 128,
                             "tie_word_embeddings": True}, "last")}
# Special tokens per family, in id order: MPNet derives positions from pad_token_id = 1, BERT pads with id 0,
# and the decoder has no pad token (like SmolLM2; the encoder loader then pads with its eos).
SPECIALS = {"bert": {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]"},
            "mpnet": {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"},
            "llama": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}}
CATALOGUE = [f"item {i} {genre} movie about a {thing}" for i, (genre, thing) in
             enumerate([("action", "king"), ("drama", "queen"), ("comedy", "dog"), ("space", "star")] * 2)]


class BudgetExceeded(BaseException):
    """Raised by the hard-deadline alarm; a BaseException so torch's `except Exception` fallbacks let it pass."""


def log(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:6.1f}s] {message}", flush=True)


@dataclass
class BatchResult:
    batch: int
    median_ms: float | None = None
    min_ms: float | None = None
    first_call_s: float | None = None
    rel_err: float | None = None
    skipped: str | None = None


@dataclass
class ModeResult:
    mode: str  # "<compile mode>:<precision>", e.g. "cudagraphs:bf16"
    status: str = "pending"  # pending | ok | skipped | failed | stopped
    reason: str | None = None
    setup_s: float | None = None
    captured: int | None = None  # CUDA graphs the runner captured
    fallback_reason: str | None = None
    note: str | None = None  # what actually ran, where the runtime says (ONNX Runtime's providers)
    batches: list[BatchResult] = field(default_factory=list)

    @property
    def label(self) -> str:
        kind, precision = self.mode.split(":")
        return f"{kind} {precision}" if kind in RESERVE_S else f"torch.compile {kind} {precision}"


# --- the model, through the product's loaders ----------------------------------------------------------------


def write_hf_folder(folder: Path, family: str, config_kwargs: dict, seed: int) -> Path:
    """A random-weight HF folder (config, safetensors, tokenizer.json) that `TextEncoder` loads as it would
    a downloaded model; the tokenizer is a word-level one over the catalogue's words, built offline."""
    import transformers
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    specials = SPECIALS[family]
    words = sorted({w for text in CATALOGUE for w in text.lower().split()})
    vocab = {token: i for i, token in enumerate([*specials.values(), *words])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token=specials["unk_token"]))
    raw.normalizer = normalizers.Lowercase()
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    first = specials.get("cls_token", specials.get("bos_token"))
    last = None if family == "llama" else specials.get("sep_token", specials.get("eos_token"))
    raw.post_processor = processors.TemplateProcessing(
        single=f"{first} $A" + (f" {last}" if last else ""),
        special_tokens=[(t, vocab[t]) for t in (first, last) if t is not None])
    ids = {f"{role[:-6]}_token_id": vocab[specials[role]] for role in ("pad_token", "bos_token", "eos_token")
           if role in specials}
    config_class = {"bert": transformers.BertConfig, "mpnet": transformers.MPNetConfig,
                    "llama": transformers.LlamaConfig}[family]
    config = config_class(**config_kwargs, **ids)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=raw, model_max_length=min(512, config.max_position_embeddings - 2), **specials)
    torch.manual_seed(seed)
    model = transformers.AutoModel.from_config(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_model(shapes: dict, root: Path, seq: int):
    """The fused model a spec with these encoders describes, built as `fusionrec.model.saved.load_model` rebuilds one
    (`FusedRecommender.build` over a catalogue): attention fusion, frozen encoders, text user tower."""
    from fusionrec.model.fused import FusedRecommender
    from fusionrec.spec import FusionRecommenderSpec

    encoders = []
    for seed, (name, (family, kwargs, pooling)) in enumerate(shapes.items()):
        folder = write_hf_folder(root / name, family, kwargs, seed)
        encoders.append({"name": name, "source": str(folder), "pooling": pooling, "maxLength": seq, "freeze": True})
        log(f"wrote {name} ({family}, {sum(1 for _ in folder.iterdir())} files)")
    spec = FusionRecommenderSpec.model_validate({
        "version": "gpu-bench", "encoders": encoders, "fusion": {"method": "attention"},
        "task": {"type": "ranking", "userTower": "text", "useItemIds": True}})
    torch.manual_seed(0)
    return FusedRecommender.build(spec, CATALOGUE, n_users=1).eval()


def token_inputs(model, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random token ids of `seq` tokens per encoder; the first half of the rows padded to half length."""
    from fusionrec.compile.graphs import token_names

    rng = np.random.default_rng(seed)
    out = {}
    for encoder in model.items.encoders:
        mask = np.ones((batch, seq), dtype=np.int64)  # (B, T)
        mask[: batch // 2, seq // 2:] = 0
        ids = rng.integers(5, encoder.backbone.config.vocab_size, size=(batch, seq), dtype=np.int64)  # (B, T)
        ids[mask == 0] = encoder.tokenizer.pad_token_id
        out.update(zip(token_names(encoder.spec.name), (ids, mask)))
    return out


# --- runtimes and timing ---------------------------------------------------------------------------------


def make_runtime(model, mode: str, device: str, seq: int, ort_provider: str):
    """A fresh runtime of the user graph for `mode`, on its own copy of the model (TorchRuntime casts and
    moves the module it is given in place)."""
    from fusionrec.compile.graphs import build_graph

    kind, precision = mode.split(":")
    module, signature = build_graph(copy.deepcopy(model), "user")
    if kind == "onnxruntime":
        from fusionrec.compile.export import export_onnx
        from fusionrec.compile.onnxruntime_backend import OnnxRuntime

        with tempfile.TemporaryDirectory(prefix="gpu-bench-onnx-") as folder:  # the session keeps the graph
            path = export_onnx(module, signature, token_inputs(model, 2, seq), Path(folder) / "user.onnx", opset=17)
            runtime = OnnxRuntime(path, providers=[ort_provider])
        if ort_provider not in runtime.session.get_providers():
            raise RuntimeError(f"session runs on {runtime.session.get_providers()}, not {ort_provider}")
        return runtime
    from fusionrec.compile.torch_backend import TorchRuntime

    return TorchRuntime(module, signature, precision=precision, device=device, compile_mode=kind)


def unavailable(mode: str, device: str, requested: set[str], ort_provider: str) -> str | None:
    """Why `mode` cannot run here, or None."""
    kind, _ = mode.split(":")
    if kind == "cudagraphs" and device != "cuda":
        return f"CUDA graphs need a CUDA device (device is {device})"
    if kind == "onnxruntime":
        try:
            import onnxruntime as ort
        except ImportError:
            return "onnxruntime is not installed"
        providers = ort.get_available_providers()
        if ort_provider not in providers:
            return f"onnxruntime {ort.__version__} has no {ort_provider} (it has {', '.join(providers)})"
    if kind not in RESERVE_S and device == "cpu" and mode not in requested:
        return "torch.compile is not run on CPU unless named in --modes (inductor takes minutes per LM)"
    return None


def measure(runtime, inputs: dict[str, np.ndarray], warmup: int,
            repeats: int) -> tuple[float, list[float], np.ndarray]:
    """(first call s, per-call ms of `repeats` calls after `warmup` more, the last call's output: a replayed
    graph's, not the capture call's). `run` returns numpy, so each call ends with the device synchronised."""
    start = time.perf_counter()
    out = runtime.run(inputs)
    first = time.perf_counter() - start
    for _ in range(warmup):
        runtime.run(inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = runtime.run(inputs)
        times.append((time.perf_counter() - start) * 1000)
    return first, times, out


def describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


def run_mode(result: ModeResult, model, args, inputs: dict, refs: dict, ref_ms: dict, budget_end: float) -> None:
    kind = result.mode.split(":")[0]
    start = time.perf_counter()
    runtime = make_runtime(model, result.mode, args.device, args.seq, args.ort_provider)
    result.setup_s = time.perf_counter() - start
    if kind == "onnxruntime":
        result.note = f"providers {', '.join(runtime.session.get_providers())}"
    log(f"{result.label}: runtime ready in {result.setup_s:.1f} s")
    try:
        for batch, x in inputs.items():
            if result.mode != REFERENCE and batch in ref_ms:
                estimate = FIRST_CALL_S.get(kind, 60.0) + (args.warmup + args.repeats) * ref_ms[batch] / 1000
                left = budget_end - time.perf_counter()
                if left < estimate:
                    why = f"budget: {left:.0f} s left, needs ~{estimate:.0f}"
                    result.batches.append(BatchResult(batch, skipped=why))
                    log(f"{result.label} batch {batch}: skipped ({why})")
                    continue
            first, times, out = measure(runtime, x, args.warmup, args.repeats)
            row = BatchResult(batch, statistics.median(times), min(times), first)
            if result.mode == REFERENCE:
                refs[batch], ref_ms[batch] = out.astype(np.float64), row.median_ms
            row.rel_err = rel_err(out, refs[batch]) if batch in refs else None
            result.batches.append(row)
            log(f"{result.label} batch {batch}: median {row.median_ms:.3f} ms, first call {first:.2f} s, "
                f"rel err {row.rel_err if row.rel_err is not None else float('nan'):.2e}")
    finally:
        graphs = getattr(runtime, "cuda_graphs", None)
        if graphs is not None:
            result.captured = getattr(graphs, "captured", None)
            result.fallback_reason = getattr(graphs, "fallback_reason", None)
        del runtime
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# --- report ------------------------------------------------------------------------------------------------


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(meta: dict, results: list[ModeResult]) -> str:
    batches = meta["batches"]
    lines = [f"# fused user tower through fusionrec's serving path ({meta['shapes']})", "",
             (f"{meta['device_name']}; torch {meta['torch']}, transformers {meta['transformers']}, "
              f"fusion attention, pooling mean/mean/last, seq {meta['seq']} (half the rows padded to half), "
              f"random weights. ms per `TorchRuntime.run` call (numpy in and out; onnxruntime: its session's "
              f"run), median of {meta['repeats']} after {meta['warmup']} warm-ups; first call = capture/compile "
              f"included. fp32 matmul precision: {meta['float32_matmul_precision']}; attention kernels: "
              + ", ".join(f"{k} {v}" for k, v in meta.get("attention", {}).items()) + "."), "",
             "| mode | " + " | ".join(f"batch {b} ms" for b in batches)
             + " | first call s | max rel err vs eager fp32 | graphs captured | note |",
             "|---|" + "---:|" * len(batches) + "---|---:|---:|---|"]
    for r in results:
        by_batch = {b.batch: b for b in r.batches}
        cells = [fmt(by_batch[b].median_ms, ".3f") if b in by_batch else "-" for b in batches]
        firsts = " / ".join(fmt(by_batch[b].first_call_s, ".2f") if b in by_batch else "-" for b in batches)
        errs = [b.rel_err for b in r.batches if b.rel_err is not None]
        notes = [f"{r.status}: {r.reason}"] if r.reason else (["not run yet"] if r.status == "pending" else [])
        notes += [r.note] if r.note else []
        notes += [f"batch {b.batch} skipped ({b.skipped})" for b in r.batches if b.skipped]
        if r.fallback_reason:
            notes.append(f"CUDA graphs fell back to eager: {r.fallback_reason}")
        lines.append(f"| {r.label} | " + " | ".join(cells) + f" | {firsts if r.batches else '-'} | "
                     f"{fmt(max(errs) if errs else None, '.2e')} | {fmt(r.captured, 'd')} | "
                     f"{'; '.join(notes).replace('|', '/')} |")
    timed = [(b.median_ms, r.label) for r in results for b in r.batches if b.batch == 1 and b.median_ms]
    if timed and not meta["tiny"]:
        best_ms, best = min(timed)
        verdict = "met" if best_ms < TARGET_MS else "not met"
        lines += ["", f"Batch 1 target < {TARGET_MS} ms: {verdict} (best: {best}, {best_ms:.3f} ms)."]
    lines += ["", "Phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in meta["phases"].items()) + "."]
    return "\n".join(lines) + "\n"


def write_report(out: Path | None, meta: dict, results: list[ModeResult]) -> str:
    text = markdown(meta, results)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu-bench.md").write_text(text)
        document = {"meta": meta, "modes": [dict(asdict(r), label=r.label) for r in results]}
        (out / "gpu-bench.json").write_text(json.dumps(document, indent=1))
    return text


# --- driver ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="hidden 32, 2 layers (a smoke run of the code)")
    parser.add_argument("--batches", default=None, help="default 1,32,256 (1,4 with --tiny)")
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--modes", default=None,
                        help=f"<compile mode>:<precision> list (default {DEFAULT_MODES}); eager:fp32 (the "
                             "reference) always runs first; torch.compile modes run on CPU only when named here")
    parser.add_argument("--budget", type=float, default=360.0,
                        help="seconds from start; later modes/batches that would not fit are skipped, and "
                             f"the run stops at budget + {HARD_MARGIN_S:.0f} s")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--ort-provider", default="CUDAExecutionProvider")
    parser.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None,
                        help="folder for gpu-bench.md and gpu-bench.json (default: $OUT when set)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")
    args.batches = [int(b) for b in (args.batches or ("1,4" if args.tiny else "1,32,256")).split(",")]
    args.requested = set() if args.modes is None else {m.strip() for m in args.modes.split(",") if m.strip()}
    args.modes = [m.strip() for m in (args.modes or DEFAULT_MODES).split(",") if m.strip()]
    bad = [m for m in args.modes if m.count(":") != 1 or m.split(":")[1] not in ("fp32", "fp16", "bf16")]
    if bad:
        parser.error(f"--modes entries must be <compile mode>:<fp32|fp16|bf16>, got {bad}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device (use --device cpu --tiny for a smoke run)")
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    import fusionrec

    transformers.utils.logging.disable_progress_bar()  # weight loading bars would drown the progress lines
    modes = [REFERENCE] + [m for m in dict.fromkeys(args.modes) if m != REFERENCE]
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    meta = {"device": args.device, "tiny": args.tiny, "batches": args.batches, "seq": args.seq,
            "repeats": args.repeats, "warmup": args.warmup, "budget_s": args.budget, "device_name": name,
            "torch": torch.__version__, "transformers": transformers.__version__, "fusionrec": fusionrec.__file__,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "shapes": "tiny hidden-32 2-layer models" if args.tiny else
            "MiniLM-L6 + MPNet-base + SmolLM2-135M shapes", "phases": {"imports": time.perf_counter() - STARTED}}
    log(f"{meta['device_name']}, torch {meta['torch']}, transformers {meta['transformers']}, fusionrec from "
        f"{meta['fusionrec']}; modes {modes}")
    budget_end = STARTED + args.budget

    def deadline(signum, frame):
        raise BudgetExceeded(f"hard deadline: budget {args.budget:.0f} s + {HARD_MARGIN_S:.0f} s")

    signal.signal(signal.SIGALRM, deadline)
    signal.alarm(max(1, int(args.budget + HARD_MARGIN_S - (time.perf_counter() - STARTED))))
    results = [ModeResult(m) for m in modes]
    current: ModeResult | None = None
    interrupted = ""  # why the run stopped early, if it did
    try:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="gpu-bench-models-") as root:
            model = build_model(TINY if args.tiny else FULL, Path(root), args.seq)
        meta["phases"]["model build"] = time.perf_counter() - start
        meta["attention"] = {e.spec.name: getattr(e.backbone.config, "_attn_implementation", None)
                             for e in model.items.encoders}
        log(f"model built in {meta['phases']['model build']:.1f} s (attention {meta['attention']})")
        inputs = {b: token_inputs(model, b, args.seq, seed=b) for b in args.batches}
        refs: dict[int, np.ndarray] = {}
        ref_ms: dict[int, float] = {}
        for result in results:
            kind = result.mode.split(":")[0]
            reason = unavailable(result.mode, args.device, args.requested, args.ort_provider)
            left, reserve = budget_end - time.perf_counter(), RESERVE_S.get(kind, COMPILE_RESERVE_S)
            if reason is None and result.mode != REFERENCE and left < reserve:
                reason = f"budget: {left:.0f} s left, the mode needs ~{reserve:.0f}"
            if reason is not None:
                result.status, result.reason = "skipped", reason
                log(f"{result.label}: skipped ({reason})")
                continue
            start, current = time.perf_counter(), result
            try:
                run_mode(result, model, args, inputs, refs, ref_ms, budget_end)
                result.status = "ok"
            except Exception as exc:  # noqa: BLE001 - one mode failing must not lose the others' numbers
                result.status, result.reason = "failed", describe(exc)
                log(f"{result.label}: FAILED ({result.reason})")
            meta["phases"][result.label], current = time.perf_counter() - start, None
            write_report(args.out, meta, results)
    except (BudgetExceeded, KeyboardInterrupt) as exc:
        interrupted = describe(exc)
        log(f"stopped: {interrupted}")
    finally:
        signal.alarm(0)
    if current is not None:
        current.status, current.reason = "stopped", f"the run stopped during this mode ({interrupted})"
    for result in results:
        if result.status == "pending":
            result.status, result.reason = "skipped", "not reached before the run stopped"
    meta["phases"]["total"] = time.perf_counter() - STARTED
    print("\n" + write_report(args.out, meta, results), flush=True)
    if args.out is not None:
        log(f"wrote {args.out / 'gpu-bench.md'} and gpu-bench.json")
    code = 1 if results[0].status != "ok" or not results[0].batches else 0
    if interrupted:  # compile workers may still be alive: do not wait for them at exit
        sys.stdout.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
