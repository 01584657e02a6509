"""The fused recommender on tiny random bert/mpnet/llama models and a tiny synthetic catalogue: every head
trains, shapes hold, frozen encoders stay cached, unfrozen ones learn, and fusion weights are reported."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusionrec.data.schema import Dataset
from fusionrec.data.splits import leave_one_out, random_split
from fusionrec.data.text import with_item_text
from fusionrec.model.fused import FusedRecommender
from fusionrec.model.fused_data import item_texts_in_order
from fusionrec.model.fusion import FUSION_METHODS
from fusionrec.model.towers import UNKNOWN_FEEDBACK, PooledUserTower, SequenceUserTower, TextUserTower
from fusionrec.spec import FusionRecommenderSpec, TrainingSpec
from fusionrec.train.loop import fit

from testkit import synthetic_frames

torch.set_num_threads(1)  # tiny tensors: a thread pool on a 2-core machine only adds overhead

def synthetic(n_users: int = 24, n_items: int = 18, per_user: int = 9, seed: int = 0) -> Dataset:
    """Each user sticks to one genre (a text signal) and likes the even-numbered items of it (a CTR signal)."""
    interactions, items = synthetic_frames(n_users, n_items, per_user, seed)
    return with_item_text(Dataset("synthetic", interactions, items), "{title}. Genres: {genres}. Year: {year}")


def make_spec(tiny_models, *, task="ranking", tower="sequence", ids=False, method="attention",
              frozen=("bert", "mpnet", "llama"), negatives=None, epochs=3) -> FusionRecommenderSpec:
    encoders = []
    for family in ("bert", "mpnet", "llama"):
        encoder = {"name": family, "source": str(tiny_models[family]), "maxLength": 24,
                   "pooling": "last" if family == "llama" else "mean"}
        encoder.update({"freeze": True} if family in frozen else {"freezeLayers": 2})
        encoders.append(encoder)
    task_spec = {"type": task, "userTower": tower, "useItemIds": ids, "historyLength": 6, "numNegatives": 8}
    if negatives:
        task_spec["negatives"] = negatives
    return FusionRecommenderSpec.model_validate({
        "version": "v1", "encoders": encoders, "fusion": {"method": method, "dim": 16, "hidden": 16},
        "task": task_spec,
        "training": {"epochs": epochs, "batchSize": 8, "learningRate": 1e-2, "encoderLearningRate": 1e-3,
                     "warmupRatio": 0.0, "lrSchedule": "constant", "earlyStopping": {"patience": 50}}})


@pytest.fixture(scope="module")
def dataset():
    return synthetic()


@pytest.fixture(scope="module")
def ranking_split(dataset):
    return leave_one_out(dataset)


@pytest.fixture(scope="module")
def pointwise_split(dataset):
    return random_split(dataset, seed=2020)


def build(spec, dataset, split):
    torch.manual_seed(0)
    return FusedRecommender.from_spec(spec, dataset, split)


CASES = [("ranking", "sequence", False), ("ranking", "text", False), ("ranking", "sequence", True),
         ("ctr", "sequence", True), ("rating", "sequence", False), ("ctr", "text", False),
         ("ranking", "pooled", True), ("ctr", "pooled", True)]


@pytest.mark.parametrize("task, tower, ids", CASES, ids=[f"{t}-{w}-{'ids' if i else 'text'}" for t, w, i in CASES])
def test_each_head_trains_and_its_loss_falls(tiny_models, dataset, ranking_split, pointwise_split, task, tower, ids):
    split = ranking_split if task == "ranking" else pointwise_split
    spec = make_spec(tiny_models, task=task, tower=tower, ids=ids, epochs=6)
    model = build(spec, dataset, split)
    result = fit(model, split, spec.training, device="cpu")
    losses = [record["loss"] for record in result.history]
    assert losses[-1] < 0.9 * losses[0], losses
    assert result.best_epoch >= 1 and result.best_valid


def test_full_sort_and_pointwise_shapes(tiny_models, dataset, ranking_split, pointwise_split):
    model = build(make_spec(tiny_models), dataset, ranking_split).eval()
    histories = ranking_split.history("test")[:5]
    scores = model.full_sort_predict(torch.arange(5), histories)
    assert scores.shape == (5, ranking_split.n_items) and torch.isfinite(scores).all()
    assert model.item_embeddings().shape == (ranking_split.n_items, 16)
    ctr = build(make_spec(tiny_models, task="ctr", ids=True), dataset, pointwise_split).eval()
    rows = ctr.encode_rows(pointwise_split, "test")
    assert rows["history"].shape == (len(pointwise_split.test), 6)
    probabilities = ctr.predict({k: v[:7] for k, v in rows.items()})
    assert probabilities.shape == (7,) and ((probabilities >= 0) & (probabilities <= 1)).all()
    assert ctr.full_sort_predict(torch.arange(3), histories[:3]).shape == (3, pointwise_split.vocab.n_items)


def test_pointwise_histories_hold_only_earlier_training_items(tiny_models, dataset, pointwise_split):
    model = build(make_spec(tiny_models, task="rating"), dataset, pointwise_split)
    rows = model.encode_rows(pointwise_split, "train")
    train = pointwise_split.train
    time_of = {(u, i): t for u, i, t in zip(train["user_idx"], train["item_idx"], train["timestamp"])}
    label_of = {(u, i): y for u, i, y in zip(train["user_idx"], train["item_idx"], train["label"])}
    for r in range(0, len(train), 7):
        user, item, when = int(rows["user"][r]), int(rows["item"][r]), int(train["timestamp"].iloc[r])
        real = rows["history"][r] != model.pad
        history = rows["history"][r][real].tolist()
        assert item not in history
        assert all(time_of[(user, i)] < when for i in history)
        assert rows["history_feedback"][r][real].tolist() == [label_of[(user, i)] for i in history]
        assert (rows["history_feedback"][r][~real] == UNKNOWN_FEEDBACK).all()
    # the rating head is centred on the training mean
    assert model.head.offset.item() == pytest.approx(float(train["rating"].mean()))


def test_frozen_encoders_never_run_during_training(tiny_models, dataset, ranking_split):
    spec = make_spec(tiny_models, epochs=2)
    model = build(spec, dataset, ranking_split)
    calls = []
    hooks = [e.backbone.register_forward_hook(lambda *_: calls.append(1)) for e in model.items.encoders]
    try:
        fit(model, ranking_split, spec.training, device="cpu")
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == []
    assert model.items.frozen
    assert all(e.cache_stats["computed"] == 1 for e in model.items.encoders)  # the catalogue, once each


def test_an_unfrozen_encoder_gets_gradients_only_above_its_frozen_layers(tiny_models, dataset, ranking_split):
    spec = make_spec(tiny_models, frozen=("bert", "mpnet"))
    model = build(spec, dataset, ranking_split)
    assert model.head.negatives == "sampled"  # fine-tuning switches the default away from a full softmax
    batch = next(model.training_batches(ranking_split, 16, np.random.default_rng(0)))
    model.train()
    model.calculate_loss(batch).backward()
    llama = model.items.encoders[2].backbone
    top = [p for n, p in llama.named_parameters() if n.startswith("layers.2.")]
    bottom = [p for n, p in llama.named_parameters() if n.startswith(("layers.0.", "embed_tokens"))]
    assert top and all(p.grad is not None and p.grad.abs().sum() > 0 for p in top)
    assert bottom and all(p.grad is None for p in bottom)
    assert all(p.grad is None for e in model.items.encoders[:2] for p in e.backbone.parameters())
    pretrained = {id(p) for p in model.pretrained_parameters()}
    assert {id(p) for p in top} <= pretrained and not {id(p) for p in bottom} & pretrained


@pytest.mark.parametrize("method", sorted(FUSION_METHODS))
def test_every_fusion_method_trains_inside_the_model(tiny_models, dataset, ranking_split, method):
    model = build(make_spec(tiny_models, method=method), dataset, ranking_split)
    model.train()
    batch = next(model.training_batches(ranking_split, 16, np.random.default_rng(0)))
    loss = model.calculate_loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.items.fusion.parameters()]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("tower", ["sequence", "text", "pooled"])
def test_fusion_weights_global_and_per_user(tiny_models, dataset, ranking_split, tower):
    model = build(make_spec(tiny_models, tower=tower), dataset, ranking_split)
    histories = ranking_split.history("test")[:4]
    report = model.fusion_weights(histories)
    assert report["models"] == ["bert", "mpnet", "llama"] and report["kind"] == "per_example"
    assert sum(report["global"].values()) == pytest.approx(1.0, abs=1e-5)
    assert report["per_user"].shape == (4, 3)
    torch.testing.assert_close(report["per_user"].sum(dim=1), torch.ones(4))
    kinds = {"sequence": SequenceUserTower, "text": TextUserTower, "pooled": PooledUserTower}
    assert isinstance(model.user_tower, kinds[tower])
    weighted = build(make_spec(tiny_models, method="weighted"), dataset, ranking_split)
    flat = weighted.fusion_weights(histories)
    assert flat["kind"] == "global" and torch.allclose(flat["per_user"], flat["per_user"][0].expand(4, 3))


def test_scores_are_the_same_in_and_out_of_the_catalogue_cache(tiny_models, dataset, ranking_split):
    model = build(make_spec(tiny_models, ids=True), dataset, ranking_split).eval()
    histories = ranking_split.history("valid")[:3]
    with torch.no_grad():
        cached = model.full_sort_predict(torch.arange(3), histories)
        again = model.full_sort_predict(torch.arange(3), histories)
    with torch.enable_grad():
        fresh = model.full_sort_predict(torch.arange(3), histories).detach()
    torch.testing.assert_close(cached, again)
    torch.testing.assert_close(cached, fresh)


def test_bad_inputs_are_named(tiny_models, dataset, ranking_split, pointwise_split):
    model = build(make_spec(tiny_models), dataset, ranking_split)
    with pytest.raises(ValueError, match="one history per user"):
        model.full_sort_predict(torch.arange(3), ranking_split.history("test")[:2])
    with pytest.raises(ValueError, match="item indices must be in"):
        model.items(torch.tensor([ranking_split.n_items]))
    with pytest.raises(ValueError, match="CTR/rating contract"):
        model.encode_rows(pointwise_split, "train")
    with pytest.raises(TypeError):  # no back door: the architecture is the spec's
        FusedRecommender.from_spec(make_spec(tiny_models), dataset, ranking_split, n_layers=3)
    with pytest.raises(ValueError, match="ranking contract"):
        next(build(make_spec(tiny_models, task="ctr"), dataset, pointwise_split).training_batches(
            ranking_split, 8, np.random.default_rng(0)))


def test_items_without_text_fall_back_to_their_id(dataset):
    ids = np.asarray(["i0", "i1", "unknown"], dtype=object)
    texts = item_texts_in_order(dataset, ids)
    assert texts[:2] == dataset.items["text"].tolist()[:2] and texts[2] == "unknown"


def test_training_spec_dropout_reaches_the_sequence_tower(tiny_models, dataset, ranking_split):
    spec = make_spec(tiny_models)
    spec.training = TrainingSpec(dropout=0.35)
    model = build(spec, dataset, ranking_split)
    assert model.user_tower.encoder.cfg.dropout == 0.35


def test_the_sequence_tower_starts_with_small_weights():
    """A default N(0, 1) position table drowns item vectors of norm ~0.5 (it cost 20% NDCG on ml-100k)."""
    tower = SequenceUserTower(dim=32, history_length=20, dropout=0.1)
    assert float(tower.encoder.position.weight.detach().std()) < 0.03
    vectors = torch.randn(2, 5, 32) * 0.05
    assert tower(vectors, torch.ones(2, 5, dtype=torch.bool)).shape == (2, 32)


def test_compiled_user_graph_of_a_ctr_model_reads_histories_like_serving(tiny_models, dataset, pointwise_split):
    """The user graph that compile exports must compute what serving's torch path computes, past-label
    embedding ("unknown" at serving time) included."""
    from fusionrec.compile.graphs import build_graph

    model = build(make_spec(tiny_models, task="ctr", ids=True), dataset, pointwise_split).eval()
    assert model.feedback is not None
    with torch.no_grad():
        model.feedback.weight.normal_()  # make the label embedding matter, so leaving it out would show
        histories = [np.array([4, 1, 7]), np.array([2, 5])]
        expected = model.user_vectors(histories) + model.user_embedding(torch.tensor([0, 1]))
        module, signature = build_graph(model, "user")
        table = model.catalogue()
        vectors = torch.stack([torch.cat([torch.zeros(3 - len(h), 16), table[torch.tensor(h)]]) for h in histories])
        mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
        got = module(vectors, mask, torch.tensor([0, 1]))
    assert signature.inputs == ("history_vectors", "history_mask", "user_index")
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_the_model_sizes_come_from_the_spec(tiny_models, dataset, pointwise_split):
    """task.sequenceLayers, sequenceHeads and headHidden shape the model; the defaults are the former
    FusedConfig defaults, so artifacts written before they were spec fields load unchanged."""
    spec = make_spec(tiny_models, task="ctr", ids=True)
    default = build(spec, dataset, pointwise_split)
    assert (default.config.n_layers, default.config.n_heads, default.config.head_hidden) == (2, 1, 128)
    assert len(default.user_tower.encoder.blocks) == 2
    sized = spec.model_copy(update={"task": spec.task.model_copy(update={
        "sequence_layers": 1, "sequence_heads": 2, "head_hidden": 32})})
    model = build(sized, dataset, pointwise_split)
    assert (model.config.n_layers, model.config.n_heads, model.config.head_hidden) == (1, 2, 32)
    assert len(model.user_tower.encoder.blocks) == 1
    assert model.head.mlp[0].out_features == 32


def test_the_pooled_tower_ignores_the_order_of_the_history():
    torch.manual_seed(0)
    tower = PooledUserTower(dim=8, history_length=5, dropout=0.0).eval()
    with torch.no_grad():
        tower.query.normal_()  # not the initial plain mean: the weights must differ per item
    vectors = torch.randn(2, 5, 8)
    mask = torch.tensor([[False, True, True, True, True], [True] * 5])
    shuffled = vectors[:, [0, 3, 1, 4, 2]]
    torch.testing.assert_close(tower(vectors, mask), tower(shuffled, mask[:, [0, 3, 1, 4, 2]]))
    # The prefix states: the last one is the whole history; a padded prefix pools nothing.
    states = tower.states(vectors, mask)
    torch.testing.assert_close(states[:, -1], tower(vectors, mask))
    torch.testing.assert_close(states[0, 0], tower.out.bias)
    torch.testing.assert_close(states[1, 1], tower(vectors[1:, :2], mask[1:, :2])[0])


def test_auto_tower_is_pooled_without_order(tiny_models, dataset):
    spec = make_spec(tiny_models, tower="auto")
    assert spec.user_tower == "sequence"
    spec = spec.model_copy(update={"data": spec.data.model_copy(update={"order": "none"})})
    assert spec.user_tower == "pooled"
    split = leave_one_out(dataset, order="none")
    assert isinstance(build(spec, dataset, split).user_tower, PooledUserTower)
