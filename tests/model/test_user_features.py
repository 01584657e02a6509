"""User side features (task.userFeatures): encoded per vocabulary user, learned, added to the user vector, kept by
the artifact, included in the compiled user graph, and refused with a clear message where they cannot apply."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from fusionrec.compile.graphs import build_graph
from fusionrec.data import load_dataset
from fusionrec.errors import UserError
from fusionrec.model.saved import load_model
from fusionrec.model.user_features import encode_user_features
from fusionrec.protocol import evaluate_model, make_split
from fusionrec.spec import FusionRecommenderSpec, Manifest
from fusionrec.train.job import train_and_evaluate

from testkit import fused_spec, shop_files

torch.set_num_threads(1)
FEATURES = ["age", "gender", "occupation"]


def users_frame(n_users: int = 24) -> pd.DataFrame:
    return pd.DataFrame({"user_id": [f"u{u}" for u in range(n_users)],
                         "age": [str(20 + 5 * (u % 4)) for u in range(n_users)],
                         "gender": ["F" if u % 2 else "M" for u in range(n_users)],
                         "occupation": [None if u == 3 else ("writer" if u % 3 else "student")
                                        for u in range(n_users)]})


def test_each_field_gets_its_own_ids_and_missing_values_get_zero():
    users = users_frame()
    tokens, n_values = encode_user_features(users, np.array(["u1", "u3", "u0", "ghost"]), ["gender", "occupation"])
    # gender: F=1, M=2; occupation: student=3, writer=4; 0 = missing (u3's occupation, the unknown user)
    assert tokens.tolist() == [[1, 4], [1, 0], [2, 3], [0, 0]]
    assert n_values == 5
    shuffled, _ = encode_user_features(users.sample(frac=1.0, random_state=1), np.array(["u1", "u3", "u0", "ghost"]),
                                       ["gender", "occupation"])
    assert shuffled.tolist() == tokens.tolist()  # row order of the users table does not matter


def test_unknown_columns_and_a_missing_users_table_are_named():
    with pytest.raises(UserError, match=r"\['zip'\] are not in the users table.*'gender'") as caught:
        encode_user_features(users_frame(), np.array(["u1"]), ["gender", "zip"])
    assert caught.value.field == "task.userFeatures"
    with pytest.raises(UserError, match="no users table"):
        encode_user_features(None, np.array(["u1"]), ["gender"])


def test_the_spec_refuses_user_features_for_ranking_and_duplicates(tiny_models):
    document = fused_spec(tiny_models, task="ranking")
    document["task"]["userFeatures"] = ["gender"]
    with pytest.raises(ValidationError, match="userFeatures applies to type ctr or rating"):
        FusionRecommenderSpec.model_validate(document)
    document["task"].update(type="ctr", userFeatures=["gender", "gender"])
    with pytest.raises(ValidationError, match="lists a column twice"):
        FusionRecommenderSpec.model_validate(document)


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    return shop_files(tmp_path_factory.mktemp("shop-with-users"), users_frame())


@pytest.fixture(scope="module")
def ctr_artifact(tiny_models, data_files, tmp_path_factory):
    document = fused_spec(tiny_models, task="ctr", epochs=2, data=data_files)
    document["task"].update(userFeatures=FEATURES, useItemIds=False)  # features are the only per-user part
    root = tmp_path_factory.mktemp("runs")
    path = train_and_evaluate(Manifest.model_validate({"metadata": {"name": "shop"}, "spec": document}),
                              root / "runs", embeddings=root / "embeddings")
    return path, root / "embeddings"


def test_features_are_learned_and_survive_the_artifact(ctr_artifact):
    path, embeddings = ctr_artifact
    model, artifact = load_model(path, embeddings=embeddings)
    assert model.user_embedding is None and model.user_features is not None
    assert artifact.metrics["model"]["user_features"] == FEATURES
    split = make_split(load_dataset(artifact.spec.data), "ctr")
    # The token table came back from the weights file: the same ids the data encodes today.
    expected, _ = encode_user_features(users_frame(), split.vocab.user_ids, FEATURES)
    assert model.user_features.tokens.tolist() == expected.tolist()
    assert evaluate_model(model, split, "test") == pytest.approx(artifact.metrics["test"], abs=1e-9)
    # Training moved the used rows away from their N(0, 0.02) start; the missing id stays zero.
    weights = model.user_features.embedding.weight.detach()
    assert float(weights[1:].std()) > 0.04  # 0.02 at the start; ~0.065 after 2 epochs
    assert float(weights[0].abs().max()) == 0.0
    # Two users with the same history but different features get different user vectors.
    users = torch.tensor([0, 1])
    offsets = model.user_offset(users)
    assert offsets.shape == (2, 16) and not torch.allclose(offsets[0], offsets[1])


def test_the_compiled_user_graph_adds_the_features(ctr_artifact):
    path, embeddings = ctr_artifact
    model, _ = load_model(path, embeddings=embeddings)
    module, signature = build_graph(model, "user")
    assert signature.inputs[-1] == "user_index"
    histories = [np.array([0, 1, 2]), np.array([3])]
    history = model._pad_histories(histories)
    table, lookup = model._item_table(None)
    with torch.no_grad():
        vectors = table[lookup[history]]
        out = module(vectors, (history != model.pad).long(), torch.tensor([4, 5]))
        expected = model.user_vectors(histories) + model.user_offset(torch.tensor([4, 5]))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
