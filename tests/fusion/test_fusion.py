"""Every registered fusion method is tested here the moment it is registered (one parametrised suite)."""

from __future__ import annotations

import typing

import pytest
import torch

from fusionrec.model.fusion import FUSION_METHODS, FusionMethod, build_fusion
from fusionrec.spec import FusionSpec

NAMES = ["minilm", "mpnet", "smollm"]
D = 8
METHODS = sorted(FUSION_METHODS)
CONTEXT_METHODS = [m for m in METHODS if FUSION_METHODS[m].supports_context]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: thread hand-offs cost more than they save, and the machine's cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make(method: str, *, use_context: bool = False, names: list[str] = NAMES, dropout: float = 0.0,
         seed: int = 0) -> FusionMethod:
    torch.manual_seed(seed)
    return build_fusion(FusionSpec(method=method, dim=D, hidden=16, dropout=dropout), names,
                        use_context=use_context)


def stacked_batch(b: int = 5, m: int = len(NAMES), seed: int = 1) -> torch.Tensor:
    return torch.randn(b, m, D, generator=torch.Generator().manual_seed(seed))


def test_registry_covers_every_method_the_spec_accepts():
    spec_methods = set(typing.get_args(FusionSpec.model_fields["method"].annotation))
    assert set(FUSION_METHODS) == spec_methods
    for name, cls in FUSION_METHODS.items():
        assert cls.name == name
        assert cls.pretty_name and cls.paper and cls.reference_url.startswith("https://")


@pytest.mark.parametrize("method", METHODS)
def test_output_shape_and_description(method):
    fusion = make(method)
    out = fusion(stacked_batch(b=5))
    assert out.shape == (5, D)
    assert torch.isfinite(out).all()
    described = fusion.describe()
    assert described["method"] == method and described["models"] == NAMES


@pytest.mark.parametrize("method", METHODS)
def test_gradients_reach_every_model_and_every_parameter(method):
    fusion = make(method)
    stacked = stacked_batch().requires_grad_(True)
    fusion(stacked).pow(2).sum().backward()
    per_model = stacked.grad.abs().sum(dim=(0, 2))  # [M]
    assert (per_model > 0).all(), f"no gradient reached models {per_model.tolist()}"
    for pname, param in fusion.named_parameters():
        assert param.grad is not None, f"{pname} is not part of the graph"


@pytest.mark.parametrize("method", METHODS)
def test_weights_report(method):
    fusion = make(method)
    stacked = stacked_batch(b=6)
    report = fusion.weights(stacked)
    assert report["models"] == NAMES
    assert set(report["per_model"]) == set(NAMES)
    assert sum(report["per_model"].values()) == pytest.approx(1.0, abs=1e-5)
    assert all(w >= 0 for w in report["per_model"].values())
    if report["kind"] == "per_example":
        rows = report["per_example"]
        assert rows.shape == (6, len(NAMES))
        torch.testing.assert_close(rows.sum(dim=1), torch.ones(6))
        assert report["per_model"]["minilm"] == pytest.approx(float(rows[:, 0].mean()), abs=1e-6)
    expected_kind = {"weighted": "global", "concat_mlp": "attribution"}.get(method, "per_example")
    assert report["kind"] == expected_kind


@pytest.mark.parametrize("method", METHODS)
def test_weights_are_reported_without_dropout_and_keep_the_mode(method):
    fusion = make(method, dropout=0.5)
    fusion.train()
    stacked = stacked_batch()
    first, second = fusion.weights(stacked), fusion.weights(stacked)
    assert first["per_model"] == second["per_model"]
    assert fusion.training


@pytest.mark.parametrize("method", ["attention", "gating"])
def test_per_example_weights_need_the_inputs(method):
    with pytest.raises(ValueError, match="per example: pass stacked"):
        make(method).weights()


@pytest.mark.parametrize("method", METHODS)
def test_a_single_model_gets_all_the_weight(method):
    fusion = make(method, names=["only"])
    stacked = stacked_batch(m=1)
    assert fusion(stacked).shape == (5, D)
    assert fusion.weights(stacked)["per_model"] == {"only": pytest.approx(1.0)}


# --- bad shapes and bad construction ------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_bad_shapes_name_the_actual_shapes(method):
    fusion = make(method)
    with pytest.raises(ValueError, match=r"stacked has 2 models on axis 1 .* 3 \['minilm', 'mpnet', 'smollm'\]"):
        fusion(torch.randn(4, 2, D))
    with pytest.raises(ValueError, match=r"dim 5 on axis 2 but fusion.dim is 8: shape \[4, 3, 5\]"):
        fusion(torch.randn(4, 3, 5))
    with pytest.raises(ValueError, match=r"got shape \[4, 24\]"):
        fusion(torch.randn(4, 3 * D))
    with pytest.raises(ValueError, match="floating-point"):
        fusion(torch.ones(4, 3, D, dtype=torch.long))


@pytest.mark.parametrize("method", CONTEXT_METHODS)
def test_context_shape_and_presence_are_checked(method):
    with_context = make(method, use_context=True)
    stacked = stacked_batch(b=4)
    with pytest.raises(ValueError, match=r"context must be \[B=4, D=8\] .* got shape \[3, 8\]"):
        with_context(stacked, torch.randn(3, D))
    with pytest.raises(ValueError, match="use_context=True: pass context"):
        with_context(stacked)
    with pytest.raises(ValueError, match=r"use_context=False but got a context of shape \[4, 8\]"):
        make(method)(stacked, torch.randn(4, D))


def test_weighted_refuses_context_at_build_time():
    with pytest.raises(ValueError, match="'weighted' .* cannot condition on a context"):
        make("weighted", use_context=True)


@pytest.mark.parametrize("names, message", [([], "model_names is empty"),
                                            (["a", "b", "a"], r"repeated: \['a'\]")])
def test_bad_model_names(names, message):
    with pytest.raises(ValueError, match=message):
        make("attention", names=names)


def test_unknown_method_lists_the_known_ones():
    spec = FusionSpec.model_construct(method="bogus", dim=D, hidden=16, dropout=0.0)
    with pytest.raises(ValueError, match=r"'bogus' is not registered; known methods: \['attention'"):
        build_fusion(spec, NAMES)


# --- learning: the weights find the model that carries the signal ---------------------------------------------


def _planted(n: int = 256, signal_model: int = 1, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Only `signal_model`'s embedding predicts the target; the other models are independent noise."""
    g = torch.Generator().manual_seed(seed)
    stacked = torch.randn(n, len(NAMES), D, generator=g)
    target = stacked[:, signal_model] @ torch.randn(D, generator=g)  # [N]
    return stacked, target


def _fit(fusion: FusionMethod, stacked: torch.Tensor, target: torch.Tensor,
         context: torch.Tensor | None = None, steps: int = 300) -> float:
    torch.manual_seed(0)
    head = torch.nn.Linear(D, 1)
    optimiser = torch.optim.Adam([*fusion.parameters(), *head.parameters()], lr=0.03)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = (head(fusion(stacked, context)).squeeze(-1) - target).pow(2).mean()
        loss.backward()
        optimiser.step()
    return loss.item()


@pytest.mark.parametrize("method", ["weighted", "attention"])
def test_learned_weight_concentrates_on_the_model_with_the_signal(method):
    stacked, target = _planted(signal_model=1)
    fusion = make(method)
    before = fusion.weights(stacked)["per_model"]["mpnet"]
    loss = _fit(fusion, stacked, target)
    after = fusion.weights(stacked)["per_model"]
    assert before == pytest.approx(1 / 3, abs=0.05)
    assert after["mpnet"] > 0.9, f"weights after training: {after}, loss {loss:.4f}"
    assert loss < 0.1 * float(target.var())


def test_context_changes_attention_weights():
    fusion = make("attention", use_context=True)
    stacked = stacked_batch(b=4)
    a = fusion.weights(stacked, torch.randn(4, D, generator=torch.Generator().manual_seed(5)))["per_example"]
    b = fusion.weights(stacked, torch.randn(4, D, generator=torch.Generator().manual_seed(6)))["per_example"]
    assert not torch.allclose(a, b)


def test_attention_learns_to_follow_the_context():
    """Half the examples take their target from model 0, half from model 2; the context says which."""
    g = torch.Generator().manual_seed(7)
    n = 256
    stacked = torch.randn(n, len(NAMES), D, generator=g)
    which = torch.arange(n) % 2  # 0 -> model 0 carries the signal, 1 -> model 2
    context = torch.zeros(n, D)
    context[:, 0] = 1.0 - 2.0 * which  # +1 or -1
    w_true = torch.randn(D, generator=g)
    target = torch.where(which == 0, stacked[:, 0] @ w_true, stacked[:, 2] @ w_true)
    fusion = make("attention", use_context=True)
    _fit(fusion, stacked, target, context, steps=400)
    rows = fusion.weights(stacked, context)["per_example"]
    assert rows[which == 0, 0].mean() > 0.8, rows[which == 0].mean(dim=0)
    assert rows[which == 1, 2].mean() > 0.8, rows[which == 1].mean(dim=0)
