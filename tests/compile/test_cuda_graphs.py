"""Bucketed CUDA graphs: the padding is exact, the capture check finds what breaks capture, and (on a GPU)
replayed graphs match eager."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from fusionrec.compile.capture_check import capture_blockers
from fusionrec.compile.cuda_graphs import (
    Buckets,
    CudaGraphRunner,
    _Captured,
    pad_to_buckets,
)
from fusionrec.compile.graphs import GraphSignature, build_graph
from fusionrec.compile.inputs import TowerInputs, select
from fusionrec.compile.torch_backend import TorchRuntime
from fusionrec.model.saved import load_model

TEXTS = ["star war king", "cat", "the dog and the queen went to war with a king", "queen"]


@pytest.fixture(scope="module")
def text_model(text_artifact):
    model, _ = load_model(text_artifact)
    return model


@pytest.fixture(scope="module")
def sequence_model(sequence_artifact):
    model, _ = load_model(sequence_artifact)
    return model


def _tensors(feed: dict[str, np.ndarray], signature: GraphSignature) -> list[torch.Tensor]:
    return [torch.from_numpy(feed[name]) for name in signature.inputs]


def _user_feed(model, rows: int) -> dict[str, np.ndarray]:
    inputs = TowerInputs.from_model(model)
    histories = [np.arange(1 + i % 5) + i for i in range(rows)]  # lengths 1..5: padded differently per row
    users = np.arange(rows) % max(model.n_users, 1)
    return inputs.user_inputs(histories, model.item_embeddings(), users)


def test_buckets_round_up_to_powers_of_two_within_limits():
    buckets = Buckets(max_batch=256, min_length=16)
    assert [buckets.batch(n) for n in (1, 2, 3, 5, 33, 256)] == [1, 2, 4, 8, 64, 256]
    assert buckets.length(3, 128) == 16 and buckets.length(17, 128) == 32 and buckets.length(40, 48) == 48
    assert buckets.length(90, 64) == 90  # already past the limit: never cut, never padded
    with pytest.raises(ValueError, match="max_batch must be a power of two"):
        Buckets(max_batch=48)


@pytest.mark.parametrize("kind", ["user", "item"])
def test_padding_to_buckets_leaves_text_tower_outputs_unchanged(text_model, kind):
    module, signature = build_graph(text_model, kind)
    inputs = TowerInputs.from_model(text_model)
    feed = inputs.tokens(TEXTS[:3]) if kind == "user" else inputs.item_inputs(np.array([0, 3, 5]))
    tensors = _tensors(select(feed, signature), signature)
    padded = pad_to_buckets(tensors, signature, Buckets(min_length=16))
    assert padded[0].shape[0] == 4 and padded[0].shape[1] == 16  # batch 3 -> 4, tokens -> 16
    runner = CudaGraphRunner(module, signature, capture=False)
    with torch.no_grad():
        expected = module(*tensors)
        got = runner(*tensors)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_padding_to_buckets_leaves_sequence_tower_outputs_unchanged(sequence_model):
    module, signature = build_graph(sequence_model, "user")
    tensors = _tensors(_user_feed(sequence_model, 5), signature)  # histories of 1..5 items
    runner = CudaGraphRunner(module, signature, Buckets(min_length=4), capture=False)
    padded = pad_to_buckets(tensors, signature, Buckets(min_length=4))
    assert signature.limits["history"] == 6 and padded[0].shape[:2] == (8, 6)  # 5 -> 8 rows; 5 -> 8, cut to 6
    with torch.no_grad():
        torch.testing.assert_close(runner(*tensors), module(*tensors), rtol=1e-5, atol=1e-6)


def test_batches_above_the_largest_bucket_run_in_chunks(text_model):
    module, signature = build_graph(text_model, "user")
    tensors = _tensors(TowerInputs.from_model(text_model).tokens(TEXTS + TEXTS[:1]), signature)  # 5 rows
    runner = CudaGraphRunner(module, signature, Buckets(max_batch=2), capture=False)
    with torch.no_grad():
        torch.testing.assert_close(runner(*tensors), module(*tensors), rtol=1e-5, atol=1e-6)


class _ReplayOnCpu:
    """Stands in for a captured CUDA graph on a CPU: a replay recomputes the static output from the static
    inputs, which is what a real replay does, so the runner's bookkeeping around it is what is tested."""

    def __init__(self, module: nn.Module, inputs: list[torch.Tensor], output: torch.Tensor) -> None:
        self.module, self.inputs, self.output = module, inputs, output

    def replay(self) -> None:
        self.output.copy_(self.module(*self.inputs))


def _capture_on_cpu(runner: CudaGraphRunner, example: list[torch.Tensor]) -> _Captured:
    static = [t.clone() for t in example]
    output = runner.module(*static)
    return _Captured(_ReplayOnCpu(runner.module, static, output), static, output)


def test_each_bucket_is_captured_once_and_replays_see_the_new_request(text_model, monkeypatch):
    monkeypatch.setattr(CudaGraphRunner, "_capture", _capture_on_cpu)
    module, signature = build_graph(text_model, "user")
    inputs = TowerInputs.from_model(text_model)
    runner = CudaGraphRunner(module, signature)
    calls = [TEXTS[:3], TEXTS[:1], TEXTS[1:4], TEXTS[3:4]]  # buckets 4, 1, 4 again, 1 again: new texts each time
    with torch.inference_mode():
        for texts in calls:
            tensors = _tensors(inputs.tokens(texts), signature)
            torch.testing.assert_close(runner(*tensors), module(*tensors), rtol=1e-5, atol=1e-6)
    assert runner.captured == 2 and runner.fallback_reason is None


def test_a_failed_capture_falls_back_to_eager_once_and_says_why(text_model, monkeypatch):
    attempts = []

    def fail(runner, example):
        attempts.append(len(example))
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setattr(CudaGraphRunner, "_capture", fail)
    module, signature = build_graph(text_model, "user")
    runner = CudaGraphRunner(module, signature)
    with torch.inference_mode():
        for texts in (TEXTS[:2], TEXTS):
            tensors = _tensors(TowerInputs.from_model(text_model).tokens(texts), signature)
            torch.testing.assert_close(runner(*tensors), module(*tensors), rtol=1e-5, atol=1e-6)
    assert runner.fallback_reason == "RuntimeError: operation not permitted when stream is capturing"
    assert len(attempts) == 1 and runner.captured == 0


def test_product_graphs_can_be_captured(text_model, sequence_model):
    for model, kinds in ((text_model, ("user", "item")), (sequence_model, ("user",))):
        for kind in kinds:
            module, signature = build_graph(model, kind)
            feed = _user_feed(model, 2) if kind == "user" else TowerInputs.from_model(model).item_inputs(
                np.array([0, 1]))
            assert capture_blockers(module, _tensors(select(feed, signature), signature)) == [], (model, kind)


class _HostArange(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[1]).to(x.device)  # built on the host, copied in: breaks capture
        return x + positions


class _HostRead(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # a host read of a device value: a sync
            return x * 2
        return x


class _PlainAttribute(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.ones(4)  # not a buffer: .to("cuda") leaves it on the host

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.to(x.device)


@pytest.mark.parametrize("module, expected", [
    (_HostArange(), r"copies a host tensor \(4,\) to the device at .*test_cuda_graphs.py:\d+ \(positions = "),
    (_HostRead(), r"reads a tensor value on the host .*test_cuda_graphs.py:\d+ \(if x.sum\(\) > 0"),
    (_PlainAttribute(), r"copies a host tensor \(4,\) to the device .*self.scale.to"),
])
def test_capture_check_names_what_breaks_capture(module, expected):
    blockers = capture_blockers(module, [torch.zeros(2, 4)])
    assert len(blockers) == 1
    assert re.search(expected, blockers[0]), blockers


def test_capture_check_leaves_the_module_as_it_was(text_model):
    module, signature = build_graph(text_model, "user")
    before = {k: v.clone() for k, v in module.state_dict().items()}
    capture_blockers(module, _tensors(TowerInputs.from_model(text_model).tokens(TEXTS[:2]), signature))
    after = module.state_dict()
    assert all(after[k].device.type == "cpu" and torch.equal(after[k], v) for k, v in before.items())


def test_cuda_graphs_mode_needs_a_gpu(text_model):
    module, signature = build_graph(text_model, "user")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        TorchRuntime(module, signature, "fp32", device="cpu", compile_mode="cudagraphs")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_replayed_graphs_match_eager_on_a_gpu(text_model):
    module, signature = build_graph(text_model, "user")
    inputs = TowerInputs.from_model(text_model)
    eager = TorchRuntime(module, signature, "fp32", device="cuda", compile_mode="eager")
    graphs = TorchRuntime(module, signature, "fp32", device="cuda", compile_mode="cudagraphs")
    for texts in (TEXTS[:1], TEXTS, TEXTS[:3], TEXTS[:1]):  # new buckets, then a replay of the first one
        feed = inputs.tokens(texts)
        np.testing.assert_allclose(graphs.run(feed), eager.run(feed), rtol=1e-4, atol=1e-5)
    assert graphs.cuda_graphs.fallback_reason is None and graphs.cuda_graphs.captured == 3
