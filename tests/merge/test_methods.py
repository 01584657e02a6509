"""Merge methods on plain tensors: the properties each paper's method must have, plus hand-computed cases."""

from __future__ import annotations

import json
import math
from typing import get_args

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusionrec.errors import UserError
from fusionrec.model.merge import REGISTRY
from fusionrec.model.merge.slerp import slerp
from fusionrec.spec import MergeMethod

# A valid value for every required parameter any registered method declares.
SAMPLE_VALUES = {"density": 0.5, "t": 0.3}
METHODS = sorted(REGISTRY)
PROPERTY = settings(max_examples=40, deadline=None)

shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6)
floats = st.floats(-10, 10, width=32, allow_nan=False)


def arrays(shape=shapes, elements=floats):
    return hnp.arrays(np.float32, shape, elements=elements).map(torch.from_numpy)


def params_for(name: str, **given) -> dict:
    method = REGISTRY[name]
    given = {k: v for k, v in given.items() if v is not None}
    raw = {p.name: SAMPLE_VALUES[p.name] for p in method.parameters() if p.required}
    return method.resolve_params({**raw, **given})


def merge(name: str, tensors, base=None, weights=None, tensor_name="layer.weight", **given):
    method = REGISTRY[name]
    weights = weights if weights is not None else [1.0] * len(tensors)
    return method.merge_tensor(tensor_name, tensors, base if method.needs_base() else None, weights,
                               params_for(name, **given))


# --- the registry -------------------------------------------------------------------------------------------


def test_registry_has_exactly_the_spec_methods():
    assert sorted(REGISTRY) == sorted(get_args(MergeMethod))


@pytest.mark.parametrize("name", METHODS)
def test_method_describes_itself(name):
    method = REGISTRY[name]
    assert method.name() == name
    assert method.pretty_name()
    assert method.reference_url().startswith("https://")
    assert json.loads(json.dumps(method.describe()))["name"] == name
    for param in method.parameters():
        assert param.kind in (float, int, bool, dict) and param.description
        if param.required:
            assert param.name in SAMPLE_VALUES, f"add a sample value for {name}.{param.name} to SAMPLE_VALUES"


def test_task_vector_methods_share_one_class():
    classes = {type(REGISTRY[n]) for n in ("task_arithmetic", "ties", "dare_linear", "dare_ties")}
    assert len(classes) == 1


# --- properties every method has ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", METHODS)
@PROPERTY
@given(x=arrays(), n=st.integers(2, 3), weights=st.lists(st.floats(0.1, 5), min_size=3, max_size=3))
def test_identical_models_merge_to_themselves(name, x, n, weights):
    count = 2 if name == "slerp" else n
    out = merge(name, [x.clone() for _ in range(count)], base=x.clone(), weights=weights[:count])
    torch.testing.assert_close(out.tensor, x, rtol=1e-5, atol=1e-5)
    assert out.stats.mean_abs_delta < 1e-4


@pytest.mark.parametrize("name", METHODS)
def test_non_float_tensors_are_copied_from_the_reference(name):
    base = torch.arange(6, dtype=torch.int64).view(2, 3)
    models = [base + 10, base + 20]
    out = merge(name, models, base=base, tensor_name="embeddings.position_ids")
    reference = base if REGISTRY[name].needs_base() else models[0]
    assert out.tensor.dtype == torch.int64
    assert torch.equal(out.tensor, reference)
    assert out.stats.copied


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_merged_in_float32_and_cast_back(name, dtype):
    # 60000 + 60000 overflows float16 (max 65504); bfloat16 shares float32's range, so it only checks the cast.
    big = torch.full((4, 4), 60000.0 if dtype == torch.float16 else 3.0, dtype=dtype)
    out = merge(name, [big, big.clone()], base=big.clone(), density=1.0 if "density" in params_for(name) else None)
    assert out.tensor.dtype == dtype
    assert torch.isfinite(out.tensor).all(), "a half-precision sum overflowed: merge did not run in float32"
    torch.testing.assert_close(out.tensor.float(), big.float(), rtol=1e-2, atol=0)


@pytest.mark.parametrize("name", METHODS)
def test_shape_mismatch_names_the_tensor(name):
    with pytest.raises(ValueError, match=r"attn\.q.*\(3, 2\).*\(2, 3\)"):
        merge(name, [torch.ones(2, 3), torch.ones(3, 2)], base=torch.ones(2, 3), tensor_name="attn.q")


# --- linear -------------------------------------------------------------------------------------------------


@PROPERTY
@given(a=arrays(shape=(3, 4)), b=arrays(shape=(3, 4)))
def test_linear_with_weights_one_zero_returns_the_first(a, b):
    torch.testing.assert_close(merge("linear", [a, b], weights=[1.0, 0.0]).tensor, a)


@PROPERTY
@given(a=arrays(shape=(5,)), b=arrays(shape=(5,)), w=st.floats(0.1, 10), scale=st.floats(0.1, 10))
def test_linear_weights_are_normalised(a, b, w, scale):
    once = merge("linear", [a, b], weights=[w, 1.0]).tensor
    scaled = merge("linear", [a, b], weights=[w * scale, scale]).tensor
    torch.testing.assert_close(once, scaled, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(once, (w * a + b) / (w + 1), rtol=1e-5, atol=1e-5)


def test_linear_refuses_all_zero_weights():
    with pytest.raises(UserError, match=r"positive weight.*\[0.0, 0.0\]"):
        REGISTRY["linear"].check_weights([0.0, 0.0])


# --- task arithmetic and TIES ----------------------------------------------------------------------------------


def test_task_arithmetic_adds_weighted_task_vectors_times_lambda():
    base = torch.tensor([1.0, 2.0, 3.0])
    a, b = base + torch.tensor([1.0, 0.0, -1.0]), base + torch.tensor([0.5, 2.0, 1.0])
    out = merge("task_arithmetic", [a, b], base=base, weights=[1.0, 0.5], **{"lambda": 2.0})
    expected = base + 2.0 * (torch.tensor([1.0, 0.0, -1.0]) + 0.5 * torch.tensor([0.5, 2.0, 1.0]))
    torch.testing.assert_close(out.tensor, expected)


TAU = torch.tensor([[1.0, -2.0, 0.5, 0.1], [3.0, 1.0, -0.4, 0.2], [-1.0, 1.5, -0.3, 0.3]])


@pytest.mark.parametrize(
    "density,weights,expected,conflicts",
    [
        # elected signs +,+,-,+ from the column sums 3, 0.5, -0.2, 0.6; the mean over agreeing entries only
        (1.0, [1, 1, 1], [2.0, 1.25, -0.35, 0.2], 3),
        # trimming keeps the top 2 of 4 per task vector: columns 2 and 3 are dropped everywhere
        (0.5, [1, 1, 1], [2.0, 1.25, 0.0, 0.0], 2),
        # weights count in the election (2 * -2 outvotes 1 + 1.5; 2 * 0.5 outvotes -0.4 - 0.3) and in the
        # mean: (2 * 1 + 3) / (2 + 1)
        (1.0, [2, 1, 1], [5 / 3, -2.0, 0.5, (0.2 + 0.2 + 0.3) / 4], 3),
    ],
)
def test_ties_by_hand(density, weights, expected, conflicts):
    base = torch.full((4,), 10.0)
    out = merge("ties", list(base + TAU), base=base, weights=weights, density=density)
    torch.testing.assert_close(out.tensor, base + torch.tensor(expected))
    assert out.stats.sign_conflicts == conflicts


@PROPERTY
@given(
    base=arrays(shape=(4, 5)),
    # Non-zero: a zero entry casts no vote in TIES' disjoint mean, while task arithmetic averages it in.
    magnitudes=hnp.arrays(np.float32, (3, 4, 5), elements=st.floats(0.0625, 5, width=32)).map(torch.from_numpy),
    signs=hnp.arrays(np.float32, (4, 5), elements=st.sampled_from([-1.0, 1.0])).map(torch.from_numpy),
    weights=st.lists(st.floats(0.1, 5), min_size=3, max_size=3),
    lam=st.floats(0.1, 3),
)
def test_ties_at_full_density_without_conflicts_is_task_arithmetic(base, magnitudes, signs, weights, lam):
    models = list(base + magnitudes * signs)  # every task vector has the same sign pattern
    ties = merge("ties", models, base=base, weights=weights, density=1.0, **{"lambda": lam})
    normalised = [w / sum(weights) for w in weights]
    task_arithmetic = merge("task_arithmetic", models, base=base, weights=normalised, **{"lambda": lam})
    torch.testing.assert_close(ties.tensor, task_arithmetic.tensor, rtol=1e-5, atol=1e-4)
    assert ties.stats.sign_conflicts == 0


@PROPERTY
@given(x=arrays(shape=(7, 9)), density=st.floats(0.05, 1.0))
def test_ties_trim_keeps_the_top_density_fraction_by_magnitude(x, density):
    base = torch.zeros_like(x)
    out = merge("ties", [x], base=base, density=density)
    kept = round(density * x.numel()) or 1
    assert out.stats.kept_fraction == pytest.approx(kept / x.numel())
    survivors = out.tensor[out.tensor != 0].abs()
    if survivors.numel():
        dropped = x.abs()[out.tensor == 0]
        assert dropped.numel() == 0 or dropped.max() <= survivors.min()


# --- DARE ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dare_linear", "dare_ties"])
@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
def test_dare_rescale_preserves_the_expected_delta(name, density):
    delta = torch.linspace(0.5, 1.5, 200_000)  # positive: no sign election effects for dare_ties
    out = merge(name, [delta], base=torch.zeros_like(delta), density=density)
    # Each entry is Bernoulli(density) * delta / density: the mean ratio has sd sqrt((1-d)/d / n) <= 0.007.
    assert float((out.tensor / delta).mean()) == pytest.approx(1.0, abs=0.03)
    assert out.stats.kept_fraction == pytest.approx(density, abs=0.01)
    unscaled = merge(name, [delta], base=torch.zeros_like(delta), density=density, rescale=False)
    assert float((unscaled.tensor / delta).mean()) == pytest.approx(density, abs=0.01)


def test_dare_expectation_over_seeds_matches_task_arithmetic():
    generator = torch.Generator().manual_seed(0)
    base, a, b = (torch.randn(64, generator=generator) for _ in range(3))
    expected = merge("task_arithmetic", [a, b], base=base, weights=[0.7, 0.3]).tensor
    runs = torch.stack([merge("dare_linear", [a, b], base=base, weights=[0.7, 0.3], density=0.5, seed=s).tensor
                        for s in range(400)])
    # A kept entry is delta / 0.5, a dropped one 0: per element the variance is sum_i (w_i tau_i)^2 per run.
    sd = torch.sqrt((0.7 * (a - base)) ** 2 + (0.3 * (b - base)) ** 2) / math.sqrt(len(runs))
    z = (runs.mean(dim=0) - expected).abs() / sd
    assert float(z.max()) < 5 and float(z.mean()) < 1.5


def test_dare_is_seeded_per_tensor():
    base, x = torch.zeros(1000), torch.ones(1000)
    first = merge("dare_linear", [x], base=base, density=0.3, seed=7).tensor
    assert torch.equal(first, merge("dare_linear", [x], base=base, density=0.3, seed=7).tensor)
    assert not torch.equal(first, merge("dare_linear", [x], base=base, density=0.3, seed=8).tensor)
    other_name = merge("dare_linear", [x], base=base, density=0.3, seed=7, tensor_name="other.weight").tensor
    assert not torch.equal(first, other_name)


# --- SLERP --------------------------------------------------------------------------------------------------


@PROPERTY
@given(a=arrays(shape=(3, 5)), b=arrays(shape=(3, 5)))
def test_slerp_endpoints(a, b):
    torch.testing.assert_close(merge("slerp", [a, b], t=0.0).tensor, a, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(merge("slerp", [a, b], t=1.0).tensor, b, rtol=1e-4, atol=1e-4)


@PROPERTY
@given(t=st.floats(0, 1), norm=st.floats(0.1, 100))
def test_slerp_keeps_the_norm_of_equal_norm_vectors(t, norm):
    a = torch.zeros(16)
    b = torch.zeros(16)
    a[0], b[1] = norm, norm  # orthogonal: a linear blend would shrink to norm / sqrt(2) at t = 0.5
    out = slerp(t, a, b)
    assert float(out.norm()) == pytest.approx(norm, rel=1e-4)
    assert float(out[1]) == pytest.approx(norm * math.sin(t * math.pi / 2), rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("factor", [2.0, -3.0, 0.0])
def test_slerp_falls_back_to_lerp_for_colinear_or_zero_vectors(factor):
    a = torch.tensor([1.0, -2.0, 3.0])
    b = a * factor
    out = slerp(0.25, a, b)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, 0.75 * a + 0.25 * b)


def test_slerp_t_filters_pick_t_per_tensor():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    filters = {"attention": 0.0, r"mlp\.(up|down)": 1.0}
    attention = merge("slerp", [a, b], t=0.5, tFilters=filters, tensor_name="layers.0.attention.q.weight")
    mlp = merge("slerp", [a, b], t=0.5, tFilters=filters, tensor_name="layers.0.mlp.up.weight")
    other = merge("slerp", [a, b], t=0.5, tFilters=filters, tensor_name="layers.0.mlp.gate.weight")
    torch.testing.assert_close(attention.tensor, a)
    torch.testing.assert_close(mlp.tensor, b)
    torch.testing.assert_close(other.tensor, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]))


# --- parameter checking -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,raw,match",
    [
        ("ties", {}, r"merge\.density: .*needs density"),
        ("ties", {"density": 0.0}, r"merge\.density: must be in \(0, 1\], got 0.0"),
        ("dare_ties", {"density": float("nan")}, r"merge\.density: must be a finite number"),
        ("dare_linear", {"density": 0.5, "seed": -1}, r"merge\.seed: must be in \[0, inf\], got -1"),
        ("linear", {"t": 0.5}, r"merge\.t: method 'linear' does not take t"),
        ("slerp", {"t": 1.5}, r"merge\.t: must be in \[0, 1\], got 1.5"),
        ("slerp", {"t": 0.5, "tFilters": {"mlp(": 0.2}}, r"merge\.tFilters: 'mlp\(' is not a valid regular"),
        ("slerp", {"t": 0.5, "tFilters": {"mlp": 2}}, r"merge\.tFilters: the t of 'mlp' must be in"),
        ("task_arithmetic", {"lambda": "big"}, r"merge\.lambda: must be a number, got 'big'"),
    ],
)
def test_bad_parameters_name_the_field_and_value(name, raw, match):
    with pytest.raises(UserError, match=match):
        REGISTRY[name].resolve_params(raw)
