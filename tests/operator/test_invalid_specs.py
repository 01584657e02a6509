"""The CLI and the API server refuse the same FusionRecommenders, naming the same field, and accept the same ones.

One table of invalid manifests (each a mutation of a valid base) goes through three admissions:

- the CLI's (`fusionrec.spec.manifest_from_dict`, pydantic): must raise UserError naming `field`;
- the simulated API server (`_operator_apiserver.admit`), where it agrees with the real one;
- a real kube-apiserver when FUSIONREC_E2E_KUBECONFIG names a kubeconfig (tests marked e2e, skipped otherwise):
  the chart's CRD is installed with server-side apply, each manifest is POSTed with strict field validation
  (as kubectl does) into a throw-away namespace, and must get 422 (400 for an unknown field) with `server_field`
  in the message.

`field` is the path both name; `server_field` (default: `field`) the more precise one the server gives where a
cross-field rule reports on the field it concerns (pydantic names the model). A second table of valid edge
cases (nulls, defaults only, the minimal spec, every string at its maximum length) must be accepted by all
three, and the server must store the spec pydantic reads (the defaults agree).

The simulated server's errors are compared with the real server's word for word (every cause of the 422).

Not here, because only the operator (or the CLI alone) can tell: a name and version whose derived child names
(RayJob `<name>-train-<version>`, ConfigMap `<name>-<version>-manifest`) hit a limit; `spec.storage.uri` (and
data paths) that are local paths, valid for the CLI but not shared by pods on a cluster; a Secret, PVC or
`pvc://` claim that the namespace lacks; a tFilters key that is not a valid Python regex (pydantic refuses it,
CEL cannot compile Python regexes: the API server accepts it and the operator reports SpecValid=False).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import ssl
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from fusionrec import spec as S
from fusionrec.choices import BACKEND_PRECISIONS
from fusionrec.errors import UserError
from fusionrec.operator import consts, crd
from fusionrec.spec import manifest_from_dict

from _operator_apiserver import Refused, admit

KUBECONFIG = os.environ.get("FUSIONREC_E2E_KUBECONFIG")
REPO = Path(__file__).resolve().parents[2]
CHART_CRD = REPO / crd.CHART_CRD_PATH
CRD = crd.build_crd()

BASE: dict[str, Any] = {
    "apiVersion": "fusionrec.io/v1alpha1",
    "kind": "FusionRecommender",
    "metadata": {"name": "shop-recs", "namespace": "recs"},
    "spec": {
        "version": "v3",
        "encoders": [
            {"name": "minilm", "source": "pvc://models/minilm", "pooling": "mean"},
            {"name": "mpnet", "source": "pkg://all_mpnet_base_v2", "pooling": "mean", "freeze": True},
        ],
        "fusion": {"method": "attention", "dim": 256},
        "task": {"type": "ranking"},
        "data": {"interactions": "s3://bucket/inter.parquet", "items": "s3://bucket/items.parquet"},
        "training": {"workers": 2, "epochs": 5, "learningRate": 2.0e-5, "schedule": "0 3 * * *"},
        "serving": {"minReplicas": 1, "maxReplicas": 4, "resources": {"cpu": "2", "memory": "4Gi"},
                    "auth": {"secretRef": "recs-tokens"}},
        "rollout": {"strategy": "canary", "steps": [10, 50, 100], "stepIntervalSeconds": 300,
                    "analysis": {"maxErrorRate": 0.01, "maxP99LatencyMs": 50}},
        "storage": {"uri": "s3://bucket/runs"},
    },
}


# --- mutations ------------------------------------------------------------------------------------------------

DELETE = object()


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set `path` (dot-separated, list indexes as numbers, from the document root) to `value` (DELETE removes)."""

    def mutate(doc: dict[str, Any]) -> None:
        keys = path.split(".")
        node: Any = doc
        for key in keys[:-1]:
            node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
        last = keys[-1]
        if value is DELETE:
            del node[int(last) if last.isdigit() else last]
        elif last.isdigit():
            node[int(last)] = copy.deepcopy(value)
        else:
            node[last] = copy.deepcopy(value)

    mutate.__doc__ = f"{path} = {'<deleted>' if value is DELETE else _short(value)}"
    return mutate


def _all(*mutations: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        for m in mutations:
            m(doc)

    mutate.__doc__ = "; ".join(m.__doc__ or "" for m in mutations)
    return mutate


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} chars)"


def _document(mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    mutate(doc)
    return doc


def _encoder(i: int, **extra: Any) -> dict[str, Any]:
    return {"name": f"enc{i}", "source": f"pkg://model_{i}", **extra}


# --- the invalid table ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    id: str
    mutate: Callable[[dict[str, Any]], None]
    field: str  # what the CLI's and the server's messages both name
    server_field: str | None = None  # the more precise path the server names (default: field)
    status: int = 422  # 400: refused by strict field validation, before the schema
    simulated: bool = True  # the simulated API server agrees with the real one on this case

    @property
    def on_server(self) -> str:
        return self.server_field or self.field


TIES = {"method": "ties", "models": [{"source": "pkg://a"}, {"source": "pkg://b"}]}
SLERP = {"method": "slerp", "t": 0.5, "models": [{"source": "pkg://a"}, {"source": "pkg://b"}]}

INVALID: list[Bad] = [
    # version: the operator derives object names from it (`<name>-<version>-manifest`)
    Bad("version-double-dot", _set("spec.version", "v1..2"), "spec.version"),
    Bad("version-leading-dot", _set("spec.version", ".v1"), "spec.version"),
    Bad("version-dash-before-dot", _set("spec.version", "v1-.2"), "spec.version"),
    Bad("version-trailing-dash", _set("spec.version", "v1-"), "spec.version"),
    Bad("version-upper-case", _set("spec.version", "V3"), "spec.version"),
    Bad("version-too-long", _set("spec.version", "v" * (S.VERSION_MAX + 1)), "spec.version"),
    Bad("version-missing", _set("spec.version", DELETE), "spec.version"),
    # metadata.name: KubeRay derives RayService/RayCluster names from it
    Bad("name-starts-with-digit", _set("metadata.name", "9shop"), "metadata.name"),
    Bad("name-too-long-for-kuberay", _set("metadata.name", "a" * (S.METADATA_NAME_MAX + 1)), "metadata.name"),
    # encoders
    Bad("encoders-missing", _set("spec.encoders", DELETE), "spec.encoders"),
    Bad("encoders-empty", _set("spec.encoders", []), "spec.encoders"),
    Bad("encoders-too-many", _set("spec.encoders", [_encoder(i) for i in range(17)]), "spec.encoders"),
    Bad("encoder-names-repeat", _set("spec.encoders", [_encoder(1), {**_encoder(2), "name": "enc1"}]),
        "spec.encoders", server_field="spec.encoders[1]"),
    Bad("encoder-name-upper-case", _set("spec.encoders.0.name", "MiniLM"), "spec.encoders[0].name"),
    Bad("encoder-source-too-long", _set("spec.encoders.0.source", "pkg://" + "m" * S.URI_MAX),
        "spec.encoders[0].source"),
    Bad("encoder-source-unknown-scheme", _set("spec.encoders.0.source", "ftp://host/model"),
        "spec.encoders[0].source"),
    Bad("encoder-source-in-hdfs", _set("spec.encoders.0.source", "hdfs://nn/minilm"), "spec.encoders[0].source"),
    Bad("encoder-pooling-unknown", _set("spec.encoders.0.pooling", "max"), "spec.encoders[0].pooling"),
    # data
    Bad("dataset-name-with-a-slash", _set("spec.data.dataset", "../ml-1m"), "spec.data.dataset"),
    Bad("data-order-unknown", _set("spec.data.order", "random"), "spec.data.order"),
    Bad("evaluation-select-unknown", _set("spec.evaluation.select", "worst"), "spec.evaluation.select"),
    Bad("select-best-with-several-workers", _all(_set("spec.evaluation.select", "best"),
                                                  _set("spec.training.workers", 2)),
        "spec", server_field="spec.evaluation.select"),
    Bad("baseline-epochs-zero", _set("spec.evaluation.baselineEpochs", 0), "spec.evaluation.baselineEpochs"),
    Bad("data-without-any-source", _set("spec.data", {"dataset": None}), "spec.data",
        server_field="spec.data.interactions"),
    Bad("item-text-template-too-long", _set("spec.data.itemTextTemplate", "{title} " * (S.TEMPLATE_MAX // 8 + 1)),
        "spec.data.itemTextTemplate"),
    Bad("column-name-too-long", _set("spec.data.columns", {"userId": "u" * (S.COLUMN_MAX + 1)}),
        "spec.data.columns.userId"),
    Bad("delimiter-empty", _set("spec.data.delimiter", ""), "spec.data.delimiter"),
    Bad("escapechar-empty", _set("spec.data.escapechar", ""), "spec.data.escapechar"),
    Bad("column-rename-without-column", _set("spec.data.columns", {"rename": [{"name": "title"}]}),
        "spec.data.columns.rename[0].column"),
    # task
    Bad("task-type-unknown", _set("spec.task.type", "regression"), "spec.task.type"),
    Bad("task-negatives-unknown", _set("spec.task.negatives", "all"), "spec.task.negatives"),
    Bad("user-features-for-ranking", _set("spec.task", {"type": "ranking", "userFeatures": ["age"]}), "spec.task",
        server_field="spec.task.userFeatures"),
    Bad("user-features-repeat", _set("spec.task", {"type": "ctr", "userFeatures": ["age", "gender", "age"]}),
        "spec.task", server_field="spec.task.userFeatures[2]"),
    Bad("user-feature-too-long", _set("spec.task", {"type": "ctr", "userFeatures": ["c" * (S.COLUMN_MAX + 1)]}),
        "spec.task.userFeatures[0]"),
    Bad("cross-layers-for-ranking", _set("spec.task.crossLayers", 2), "spec.task",
        server_field="spec.task.crossLayers"),
    Bad("head-hidden-for-ranking", _set("spec.task.headHidden", 64), "spec.task", server_field="spec.task.headHidden"),
    Bad("sequence-sizes-with-pooled-tower", _set("spec.task", {"userTower": "pooled", "sequenceLayers": 1}),
        "spec.task", server_field="spec.task.sequenceLayers"),
    Bad("sequence-sizes-with-auto-tower-and-no-order", _all(_set("spec.task.sequenceLayers", 1),
                                                            _set("spec.data.order", "none")),
        "spec", server_field="spec.task.sequenceLayers"),
    Bad("sequence-sizes-with-text-tower", _set("spec.task", {"userTower": "text", "sequenceHeads": 3}), "spec.task",
        server_field="spec.task.sequenceLayers"),
    # merge: one member of a union per method, generated from the methods' parameter definitions
    Bad("ties-without-base", _set("spec.merge", {**TIES, "density": 0.2}), "spec.merge.base"),
    Bad("ties-without-density", _set("spec.merge", {**TIES, "base": "pkg://base"}), "spec.merge.density"),
    Bad("ties-density-zero", _set("spec.merge", {**TIES, "base": "pkg://base", "density": 0}), "spec.merge.density"),
    Bad("task-arithmetic-lambda-zero", _set("spec.merge", {**TIES, "method": "task_arithmetic", "base": "pkg://b",
                                                          "lambda": 0}), "spec.merge.lambda"),
    Bad("dare-seed-negative", _set("spec.merge", {**TIES, "method": "dare_ties", "base": "pkg://b", "density": 0.3,
                                                 "seed": -1}), "spec.merge.seed"),
    Bad("linear-with-base", _set("spec.merge", {"method": "linear", "base": "pkg://b", "models": TIES["models"]}),
        "spec.merge.base"),
    Bad("linear-with-density", _set("spec.merge", {"method": "linear", "density": 0.2, "models": TIES["models"]}),
        "spec.merge.density"),
    Bad("ties-with-seed", _set("spec.merge", {**TIES, "base": "pkg://b", "density": 0.2, "seed": 1}),
        "spec.merge.seed"),
    Bad("slerp-with-lambda", _set("spec.merge", {**SLERP, "lambda": 1.0}), "spec.merge.lambda"),
    Bad("slerp-with-weights", _set("spec.merge", {**SLERP, "models": [{"source": "pkg://a", "weight": 0.5},
                                                                     {"source": "pkg://b"}]}),
        "spec.merge", server_field="spec.merge.models"),
    Bad("merge-method-unknown", _set("spec.merge", {**TIES, "method": "soup"}), "spec.merge",
        server_field="spec.merge.method"),
    Bad("slerp-three-models", _set("spec.merge", {**SLERP, "models": [{"source": f"pkg://m{i}"} for i in range(3)]}),
        "spec.merge", server_field="spec.merge.models"),
    Bad("slerp-without-t", _set("spec.merge", {k: v for k, v in SLERP.items() if k != "t"}), "spec.merge.t"),
    Bad("t-filter-out-of-range", _set("spec.merge", {**SLERP, "tFilters": {"attn": 1.5}}), "spec.merge.tFilters"),
    Bad("t-filters-without-slerp", _set("spec.merge", {**TIES, "base": "pkg://b", "density": 0.2,
                                                      "tFilters": {"attn": 0.5}}), "spec.merge.tFilters"),
    Bad("t-filter-key-too-long", _set("spec.merge", {**SLERP, "tFilters": {"k" * (S.T_FILTER_KEY_MAX + 1): 0.5}}),
        "spec.merge.tFilters"),
    Bad("merge-base-in-ftp", _set("spec.merge", {**TIES, "base": "ftp://host/base", "density": 0.2}),
        "spec.merge.base"),
    Bad("merge-model-in-hdfs", _set("spec.merge", {"method": "linear", "models": [{"source": "hdfs://nn/m"}]}),
        "spec.merge.models[0].source"),
    # training
    Bad("training-workers-zero", _set("spec.training.workers", 0), "spec.training.workers"),
    # no conversions on either side: the API server takes "4" for no integer, so the CLI must not either
    Bad("training-workers-a-string", _set("spec.training.workers", "4"), "spec.training.workers"),
    Bad("training-dropout-a-string", _set("spec.training.dropout", "0.1"), "spec.training.dropout"),
    Bad("training-schedule-not-cron", _set("spec.training.schedule", "0 3 * *"), "spec.training.schedule"),
    Bad("training-schedule-minute-60", _set("spec.training.schedule", "60 3 * * *"), "spec.training.schedule"),
    Bad("training-schedule-hour-24", _set("spec.training.schedule", "0 24 * * *"), "spec.training.schedule"),
    Bad("training-schedule-weekday-8", _set("spec.training.schedule", "0 3 * * 8"), "spec.training.schedule"),
    Bad("training-schedule-month-name", _set("spec.training.schedule", "0 3 * janu *"), "spec.training.schedule"),
    Bad("training-schedule-step-zero", _set("spec.training.schedule", "*/0 3 * * *"), "spec.training.schedule"),
    Bad("training-schedule-six-fields", _set("spec.training.schedule", "0 0 3 * * *"), "spec.training.schedule"),
    Bad("training-field-misspelt", _set("spec.training.batchsize", 64), "spec.training.batchsize", status=400),
    Bad("early-stopping-metric-unknown", _set("spec.training.earlyStopping", {"metric": "ndcg10"}),
        "spec.training.earlyStopping.metric"),
    # task: the model's sizes
    Bad("task-sequence-layers-zero", _set("spec.task.sequenceLayers", 0), "spec.task.sequenceLayers"),
    Bad("task-sequence-layers-too-many", _set("spec.task.sequenceLayers", 13), "spec.task.sequenceLayers"),
    Bad("task-head-hidden-too-small", _set("spec.task.headHidden", 4), "spec.task.headHidden"),
    Bad("task-sequence-heads-not-dividing-dim", _set("spec.task.sequenceHeads", 3), "spec",
        server_field="spec.task.sequenceHeads"),
    # compile: backend x precision, from the compiler's own table
    Bad("compile-onnxruntime-fp16", _set("spec.compile", {"backend": "onnxruntime", "precision": "fp16"}),
        "spec.compile", server_field="spec.compile.precision"),
    Bad("compile-tensorrt-int8", _set("spec.compile", {"backend": "tensorrt", "precision": "int8"}),
        "spec.compile", server_field="spec.compile.precision"),
    Bad("compile-default-backend-bf16", _set("spec.compile", {"precision": "bf16"}), "spec.compile",
        server_field="spec.compile.precision"),
    # compile.index: a parameter only for the kinds that read it; nprobe within nlist; bounds
    Bad("index-kind-unknown", _set("spec.compile.index.kind", "annoy"), "spec.compile.index.kind"),
    Bad("index-hnsw-m-with-ivf", _set("spec.compile.index", {"kind": "ivf", "hnswM": 16}), "spec.compile.index",
        server_field="spec.compile.index.hnswM"),
    Bad("index-ef-search-with-auto", _set("spec.compile.index", {"efSearch": 64}), "spec.compile.index",
        server_field="spec.compile.index.efSearch"),
    Bad("index-nprobe-with-hnsw", _set("spec.compile.index", {"kind": "hnsw", "nprobe": 8}), "spec.compile.index",
        server_field="spec.compile.index.nprobe"),
    Bad("index-min-items-with-exact", _set("spec.compile.index", {"kind": "exact", "minItems": 10}),
        "spec.compile.index", server_field="spec.compile.index.minItems"),
    Bad("index-min-recall-with-exact", _set("spec.compile.index", {"kind": "exact", "minRecall": 0.5}),
        "spec.compile.index", server_field="spec.compile.index.minRecall"),
    Bad("index-nprobe-above-nlist", _set("spec.compile.index", {"kind": "ivf", "nlist": 16, "nprobe": 32}),
        "spec.compile.index", server_field="spec.compile.index.nprobe"),
    Bad("index-min-recall-zero", _set("spec.compile.index.minRecall", 0), "spec.compile.index.minRecall"),
    Bad("index-min-recall-above-one", _set("spec.compile.index.minRecall", 1.5), "spec.compile.index.minRecall"),
    Bad("index-hnsw-m-too-small", _set("spec.compile.index", {"kind": "hnsw", "hnswM": 2}),
        "spec.compile.index.hnswM"),
    # serving
    Bad("serving-min-replicas-negative", _set("spec.serving.minReplicas", -1), "spec.serving.minReplicas"),
    Bad("serving-max-below-min", _set("spec.serving", {"minReplicas": 3, "maxReplicas": 2}), "spec.serving",
        server_field="spec.serving.maxReplicas"),
    Bad("serving-cpu-not-a-quantity", _set("spec.serving.resources.cpu", "two"), "spec.serving.resources.cpu"),
    Bad("serving-secret-name-too-long", _set("spec.serving.auth.secretRef", "s" * (S.SECRET_NAME_MAX + 1)),
        "spec.serving.auth.secretRef"),
    Bad("serving-auth-disabled-with-secret", _set("spec.serving.auth", {"secretRef": "recs-tokens", "disabled": True}),
        "spec.serving.auth", server_field="spec.serving.auth.disabled"),
    Bad("serving-auth-disabled-with-token-env", _set("spec.serving.auth", {"tokenEnv": "TOKENS", "disabled": True}),
        "spec.serving.auth", server_field="spec.serving.auth.disabled"),
    # rollout
    Bad("rollout-steps-not-ending-at-100", _set("spec.rollout.steps", [10, 50]), "spec.rollout.steps"),
    Bad("rollout-steps-decreasing", _set("spec.rollout.steps", [50, 10, 100]), "spec.rollout.steps"),
    Bad("rollout-steps-repeat", _set("spec.rollout.steps", [10, 10, 100]), "spec.rollout.steps",
        server_field="spec.rollout.steps[1]"),
    Bad("rollout-step-zero", _set("spec.rollout.steps", [0, 100]), "spec.rollout.steps[0]"),
    Bad("rollout-steps-empty", _set("spec.rollout.steps", []), "spec.rollout.steps"),
    Bad("rollout-latency-limit-zero", _set("spec.rollout.analysis.maxP99LatencyMs", 0),
        "spec.rollout.analysis.maxP99LatencyMs"),
    Bad("rollout-analysis-enabled-not-bool", _set("spec.rollout.analysis.enabled", "sometimes"),
        "spec.rollout.analysis.enabled"),
    Bad("rollout-analysis-enabled-a-string", _set("spec.rollout.analysis.enabled", "true"),
        "spec.rollout.analysis.enabled"),
    # rollout.analysis.ctr: the click-through gate
    Bad("ctr-gate-without-events", _set("spec.rollout.analysis.ctr", {"enabled": True}), "spec",
        server_field="spec.rollout.analysis.ctr.enabled"),
    Bad("ctr-gate-with-blue-green", _all(_set("spec.serving.live", {"events": True}),
                                         _set("spec.rollout", {"strategy": "blueGreen", "analysis": {
                                             "ctr": {"enabled": True}}})),
        "spec.rollout", server_field="spec.rollout.analysis.ctr.enabled"),
    Bad("ctr-gate-with-analysis-disabled", _all(_set("spec.serving.live", {"events": True}),
                                                _set("spec.rollout.analysis", {"enabled": False,
                                                                               "ctr": {"enabled": True}})),
        "spec.rollout", server_field="spec.rollout.analysis.ctr.enabled"),
    Bad("ctr-confidence-one", _set("spec.rollout.analysis.ctr.confidence", 1.0),
        "spec.rollout.analysis.ctr.confidence"),
    Bad("ctr-confidence-below-half", _set("spec.rollout.analysis.ctr.confidence", 0.4),
        "spec.rollout.analysis.ctr.confidence"),
    Bad("ctr-max-relative-drop-one", _set("spec.rollout.analysis.ctr.maxRelativeDrop", 1),
        "spec.rollout.analysis.ctr.maxRelativeDrop"),
    Bad("ctr-max-relative-drop-negative", _set("spec.rollout.analysis.ctr.maxRelativeDrop", -0.1),
        "spec.rollout.analysis.ctr.maxRelativeDrop"),
    Bad("ctr-min-impressions-zero", _set("spec.rollout.analysis.ctr.minImpressions", 0),
        "spec.rollout.analysis.ctr.minImpressions"),
    Bad("ctr-max-wait-negative", _set("spec.rollout.analysis.ctr.maxWaitSeconds", -1),
        "spec.rollout.analysis.ctr.maxWaitSeconds"),
    Bad("ctr-field-misspelt", _set("spec.rollout.analysis.ctr.minImpression", 10),
        "spec.rollout.analysis.ctr.minImpression", status=400),
    # storage
    Bad("storage-uri-too-long", _set("spec.storage.uri", "s3://" + "b" * S.URI_MAX), "spec.storage.uri"),
    Bad("storage-uri-empty", _set("spec.storage.uri", ""), "spec.storage.uri"),
    *(Bad(f"storage-credentials-secret-{why}", _set("spec.storage.credentialsSecret", name),
          "spec.storage.credentialsSecret")
      for why, name in [("uppercase", "S3-Creds"), ("underscore", "s3_creds"), ("leading-dash", "-creds"),
                        ("trailing-dot", "creds."), ("empty", ""), ("too-long", "s" * (S.SECRET_NAME_MAX + 1)),
                        ("not-a-string", 3)]),
]


# --- the valid table ------------------------------------------------------------------------------------------


def _max_strings(doc: dict[str, Any]) -> None:
    """Every free string at its maximum length (and the lists at their maximum size)."""
    s = doc["spec"]
    doc["metadata"]["name"] = "n" * S.METADATA_NAME_MAX
    s["version"] = ("v" * 19 + "." + "1" * 20)[: S.VERSION_MAX]
    s["encoders"] = [{"name": f"e{i:02d}" + "x" * (S.NAME_MAX - 3), "source": f"pkg://{i:02d}" + "m" * (S.URI_MAX - 8)}
                     for i in range(16)]
    s["task"] = {"type": "ctr", "userFeatures": [f"{i:02d}" + "c" * (S.COLUMN_MAX - 2) for i in range(32)],
                 "crossLayers": 6}
    s["data"] = {"dataset": None, "path": "p" * S.URI_MAX, "interactions": "i" * S.URI_MAX, "items": "t" * S.URI_MAX,
                 "users": "u" * S.URI_MAX, "delimiter": "||||", "encoding": "e" * S.SHORT_MAX,
                 "columns": {k: k[0] * S.COLUMN_MAX for k in ("userId", "itemId", "timestamp", "rating", "label")},
                 "itemTextTemplate": ("{title} " * S.TEMPLATE_MAX)[: S.TEMPLATE_MAX]}
    s["training"] = {"schedule": ("0," * 64)[: S.SCHEDULE_MAX - 9] + "0 3 * * *",
                     "storagePath": "s3://" + "c" * (S.URI_MAX - 5)}
    s["serving"] = {"auth": {"secretRef": "s" * S.SECRET_NAME_MAX, "tokenFile": "/" + "f" * (S.URI_MAX - 1),
                             "tokenEnv": "E" * S.SHORT_MAX}}
    s["merge"] = {"method": "slerp", "t": 0.5, "name": "m" * S.NAME_MAX, "models": [
        {"source": "a" * S.URI_MAX}, {"source": "b" * S.URI_MAX}],
        "tFilters": {f"{i:02d}" + "k" * (S.T_FILTER_KEY_MAX - 2): i / 64 for i in range(64)}}
    s["rollout"] = {"steps": list(range(5, 101, 5))}
    s["storage"] = {"uri": "s3://" + "r" * (S.URI_MAX - 5), "credentialsSecret": "c" * S.SECRET_NAME_MAX}


VALID: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("base", _all()),
    ("minimal", _set("spec", {"version": "v1", "encoders": [{"name": "minilm", "source": "./minilm"}]})),
    # an HF folder in object storage is fetched into the model cache (fusionrec.model.sources)
    ("model-sources-in-object-storage", _all(
        _set("spec.encoders.0.source", "s3://bucket/models/minilm"), _set("spec.encoders.1.source", "gs://b/mpnet"),
        _set("spec.merge", {"method": "linear", "models": [{"source": "s3://bucket/m"}, {"source": "gs://b/n"}]}))),
    ("every-section-empty", _all(*(_set(f"spec.{k}", {}) for k in (
        "fusion", "task", "data", "training", "compile", "serving", "rollout", "monitoring", "evaluation",
        "storage")))),
    ("every-section-null", _all(*(_set(f"spec.{k}", None) for k in (
        "merge", "fusion", "task", "data", "training", "compile", "serving", "rollout", "monitoring", "evaluation",
        "storage")))),
    ("defaulted-scalars-null", _all(_set("spec.training.workers", None), _set("spec.fusion.method", None),
                                    _set("spec.rollout.steps", None), _set("spec.encoders.0.pooling", None))),
    ("nullable-fields-null", _all(
        _set("spec.data", {"dataset": None, "interactions": "s3://b/i.csv", "path": None, "items": None,
                           "users": None, "columns": {"rating": None, "label": None}, "maxUsers": None}),
        _set("spec.training.schedule", None), _set("spec.training.storagePath", None),
        _set("spec.serving.auth", {"secretRef": None, "tokenFile": None, "tokenEnv": None}),
        _set("spec.evaluation", {"baselines": None}))),
    ("dataset-and-interactions", _set("spec.data", {"dataset": "ml-100k", "interactions": "s3://b/i.csv"})),
    ("dataset-only", _set("spec.data", {"dataset": "ml-100k"})),
    # null = the task's / model's / file's default, the same as left out (never filled by the server)
    ("task-dependent-defaults-null", _all(_set("spec.task.negatives", None),
                                          _set("spec.training.earlyStopping", {"metric": None}),
                                          _set("spec.data.columns", {"rating": None, "label": None}))),
    ("task-dependent-defaults-given", _all(_set("spec.task.negatives", "in_batch"),
                                           _set("spec.training.earlyStopping", {"metric": "recall@20"}),
                                           _set("spec.data.columns", {"rating": "stars"}))),
    ("max-length-strings-and-lists", _max_strings),
    ("version-dotted", _set("spec.version", "2024.06.1-rc1")),
    ("version-one-char", _set("spec.version", "7")),
    ("name-one-letter", _set("metadata.name", "r")),
    ("analysis-disabled", _set("spec.rollout.analysis", {"enabled": False})),
    ("ctr-gate", _all(_set("spec.serving.live", {"events": True}),
                      _set("spec.rollout.analysis.ctr", {"enabled": True, "maxRelativeDrop": 0, "minImpressions": 1,
                                                         "confidence": 0.5, "maxWaitSeconds": 0}))),
    ("ctr-gate-at-upper-bounds", _all(_set("spec.serving.live", {"events": True}),
                                      _set("spec.rollout.analysis.ctr", {
                                          "enabled": True, "maxRelativeDrop": 0.99, "minImpressions": 1_000_000_000,
                                          "confidence": 0.999, "maxWaitSeconds": 604_800}))),
    ("ctr-gate-off-with-blue-green", _all(_set("spec.rollout.strategy", "blueGreen"),
                                          _set("spec.rollout.analysis.ctr", {"enabled": False, "confidence": 0.9}))),
    ("single-step", _set("spec.rollout.steps", [100])),
    ("scale-to-zero-min", _set("spec.serving", {"minReplicas": 0, "maxReplicas": 1})),
    ("auth-disabled", _set("spec.serving.auth", {"disabled": True})),
    ("auth-disabled-with-null-sources", _set("spec.serving.auth", {"disabled": True, "secretRef": None,
                                                                   "tokenFile": None, "tokenEnv": None})),
    ("ctr-with-features", _set("spec.task", {"type": "ctr", "userFeatures": ["age", "gender"], "crossLayers": 2})),
    ("ranking-with-empty-features", _set("spec.task", {"type": "ranking", "userFeatures": []})),
    ("ties-merge", _set("spec.merge", {**TIES, "base": "pkg://base", "density": 0.2, "lambda": 1.5})),
    ("dare-merge-every-parameter", _set("spec.merge", {**TIES, "method": "dare_ties", "base": "./base", "density": 1,
                                                       "lambda": 0.5, "rescale": False, "seed": 0})),
    ("task-arithmetic-defaults", _set("spec.merge", {**TIES, "method": "task_arithmetic", "base": "hf://org/base"})),
    ("merge-parameters-null", _set("spec.merge", {**TIES, "method": "dare_linear", "base": "pkg://b", "density": 0.1,
                                                  "lambda": None, "rescale": None, "seed": None})),
    ("linear-merge-other-methods-parameters-null", _set("spec.merge", {
        "method": "linear", "models": TIES["models"], "base": None, "density": None, "lambda": None, "t": None,
        "tFilters": None, "rescale": None, "seed": None})),
    ("linear-merge-by-encoder-name", _set("spec.merge", {"method": "linear", "models": [
        {"source": "minilm"}, {"source": "file:///models/m"}]})),
    ("slerp-with-filters-at-bounds", _set("spec.merge", {**SLERP, "tFilters": {"attn": 0, "mlp": 1}})),
    ("linear-merge-16-models", _set("spec.merge", {"method": "linear", "models": [
        {"source": f"pkg://m{i}", "weight": 0.5} for i in range(16)]})),
    ("schedule-full-cron", _set("spec.training.schedule", "*/15 0-6,22-23 1,15 JAN-jun mon-FRI")),
    ("schedule-sunday-as-7-and-steps", _set("spec.training.schedule", "00 0/6 */2 * 7")),
    ("model-sizes", _set("spec.task", {"type": "ctr", "sequenceLayers": 1, "sequenceHeads": 4, "headHidden": 64,
                                       "historyLength": 10})),
    ("model-sizes-at-bounds", _all(_set("spec.task", {"type": "rating", "sequenceLayers": 12, "sequenceHeads": 16,
                                                      "headHidden": 8}),
                                   _set("spec.fusion.dim", 8192))),
    ("text-tower-with-default-sizes", _set("spec.task", {"userTower": "text", "sequenceLayers": 2,
                                                         "sequenceHeads": 1})),
    ("slerp-with-weights-at-one", _set("spec.merge", {**SLERP, "models": [{"source": "pkg://a", "weight": 1.0},
                                                                          {"source": "pkg://b", "weight": 1}]})),
    *((f"compile-{b}-{p}", _set("spec.compile", {"backend": b, "precision": p}))
      for b, ps in BACKEND_PRECISIONS.items() for p in ps),
    ("index-hnsw-tuned", _set("spec.compile.index", {"kind": "hnsw", "hnswM": 16, "efConstruction": 200,
                                                     "efSearch": 64, "minRecall": 0.95})),
    ("index-ivf-tuned", _set("spec.compile.index", {"kind": "ivf", "nlist": 1024, "nprobe": 1024, "minRecall": 1})),
    ("index-auto-threshold", _set("spec.compile.index", {"minItems": 1000, "nprobe": 8})),
    ("index-exact-defaults-spelt-out", _set("spec.compile.index", {"kind": "exact", "minItems": 200_000,
                                                                   "minRecall": 0.9, "nlist": 0})),
    ("custom-dataset-named", _set("spec.data.dataset", "shop_2026-12.v1")),
    ("order-free-with-pooled-tower", _all(_set("spec.data.order", "none"), _set("spec.task.userTower", "pooled"))),
    ("order-free-with-sequence-tower-sized", _all(_set("spec.data.order", "none"), _set("spec.task", {
        "userTower": "sequence", "sequenceLayers": 1, "sequenceHeads": 2}))),
    ("order-free-auto-tower-heads-need-not-divide", _all(_set("spec.data.order", "none"),
                                                         _set("spec.fusion.dim", 100))),
    ("select-best-with-baseline-budget", _all(_set("spec.evaluation", {"select": "best", "baselineEpochs": 50}),
                                              _set("spec.training.workers", 1))),
    ("baselines-listed", _set("spec.evaluation", {"baselines": ["pop", "bpr"], "compareSingles": False})),
    ("storage-credentials-secret", _set("spec.storage.credentialsSecret", "s3-creds.prod-1")),
    ("storage-credentials-secret-null", _set("spec.storage.credentialsSecret", None)),
]


# --- the CLI and the simulated API server ---------------------------------------------------------------------


def test_tables_are_well_formed():
    ids = [b.id for b in INVALID] + [v[0] for v in VALID]
    assert len(ids) == len(set(ids))
    assert len(INVALID) >= 24
    for case in INVALID:
        assert case.on_server.startswith(case.field) or case.field.startswith(case.on_server), case.id
    manifest_from_dict(copy.deepcopy(BASE))


@pytest.mark.parametrize("case", INVALID, ids=[b.id for b in INVALID])
def test_cli_refuses_naming_the_field(case: Bad):
    with pytest.raises(UserError) as refused:
        manifest_from_dict(_document(case.mutate))
    assert f"{case.field}:" in str(refused.value) or f"{case.field}[" in str(refused.value), str(refused.value)


@pytest.mark.parametrize("case", [b for b in INVALID if b.simulated], ids=[b.id for b in INVALID if b.simulated])
def test_simulated_api_server_refuses_naming_the_field(case: Bad):
    with pytest.raises(Refused) as refused:
        admit(CRD, _document(case.mutate))
    assert refused.value.status == case.status
    assert any(case.on_server in p for p in refused.value.problems), refused.value.problems


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _pydantic_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return manifest_from_dict(doc).spec.model_dump(by_alias=True, mode="json", exclude_none=True)


@pytest.mark.parametrize("mutate", [v[1] for v in VALID], ids=[v[0] for v in VALID])
def test_cli_and_simulated_api_server_accept_valid_edge_cases(mutate):
    doc = _document(mutate)
    parsed = _pydantic_spec(doc)
    stored = admit(CRD, doc)
    assert _without_nulls(stored["spec"]) == parsed


def test_max_length_manifest_fits_a_configmap():
    """The manifest at every limit stays far below a ConfigMap's 1 MiB (the operator ships it in one)."""
    manifest = manifest_from_dict(_document(_max_strings))
    assert len(yaml.safe_dump(manifest.model_dump(by_alias=True, mode="json"))) < 512 * 1024


# --- a real API server ----------------------------------------------------------------------------------------

def _e2e(test: Callable[..., None]) -> Callable[..., None]:
    reason = "set FUSIONREC_E2E_KUBECONFIG to a kubeconfig to run the e2e tests"
    return pytest.mark.e2e(pytest.mark.skipif(not KUBECONFIG, reason=reason)(test))


class Api:
    """Just enough HTTP for these tests, with the credentials of one kubeconfig (its current context)."""

    def __init__(self, kubeconfig: str, workdir: Path) -> None:
        config = yaml.safe_load(Path(kubeconfig).read_text(encoding="utf-8"))
        context_name = config.get("current-context") or config["contexts"][0]["name"]
        context = next(c["context"] for c in config["contexts"] if c["name"] == context_name)
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
        base_dir = Path(kubeconfig).resolve().parent

        def material(key: str, name: str, source: dict[str, Any]) -> str | None:
            if source.get(f"{key}-data"):
                path = workdir / name
                path.write_bytes(base64.b64decode(source[f"{key}-data"]))
                path.chmod(0o600)
                return str(path)
            if source.get(key):
                return str(base_dir / source[key])
            return None

        tls = ssl.create_default_context(cafile=material("certificate-authority", "ca.crt", cluster))
        cert, key = material("client-certificate", "client.crt", user), material("client-key", "client.key", user)
        if cert and key:
            tls.load_cert_chain(cert, key)
        headers = {"Authorization": f"Bearer {user['token']}"} if user.get("token") else {}
        self.client = httpx.Client(base_url=cluster["server"], verify=tls, headers=headers, timeout=60,
                                   trust_env=False)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.request(method, path, **kwargs)

    def close(self) -> None:
        self.client.close()


CRD_PATH = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{consts.CRD_NAME}"


def _crd_established(api: Api) -> bool:
    response = api.request("GET", CRD_PATH)
    conditions = (response.json().get("status") or {}).get("conditions") or [] if response.status_code == 200 else []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> Iterator[tuple[Api, str]]:
    """The chart's CRD applied server-side (as `kubectl apply --server-side` does), and a throw-away namespace."""
    import time

    api = Api(KUBECONFIG, tmp_path_factory.mktemp("kubeconfig"))
    response = api.request("PATCH", CRD_PATH, content=CHART_CRD.read_bytes(),
                           headers={"Content-Type": "application/apply-patch+yaml"},
                           params={"fieldManager": "fusionrec-e2e", "force": "true"})
    assert response.status_code in (200, 201), f"the chart's CRD was refused: {response.text}"
    deadline = time.monotonic() + 60
    while not _crd_established(api):
        assert time.monotonic() < deadline, "the CRD did not become Established within 60 s"
        time.sleep(0.5)
    namespace = f"fusionrec-specs-{uuid.uuid4().hex[:6]}"
    created = api.request("POST", "/api/v1/namespaces",
                          json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    assert created.status_code == 201, created.text
    try:
        yield api, namespace
    finally:
        api.request("DELETE", f"/api/v1/namespaces/{namespace}")
        api.close()


def _post(api: Api, namespace: str, doc: dict[str, Any]) -> httpx.Response:
    doc = copy.deepcopy(doc)
    doc["metadata"]["namespace"] = namespace
    return api.request("POST", consts.FUSIONRECOMMENDERS.path(namespace), json=doc,
                       params={"fieldValidation": "Strict", "fieldManager": "fusionrec-invalid-specs"})


@_e2e
def test_the_chart_crd_is_applied_server_side_and_served_as_generated(api):
    """The fixture applied charts/.../fusionrecommenders.yaml server-side (defaults validated as written, CEL
    rules compiled and costed within budget); the server keeps the schema as generated."""
    server, _ = api
    stored = server.request("GET", CRD_PATH).json()
    assert stored["spec"]["versions"][0]["schema"] == CRD["spec"]["versions"][0]["schema"]
    assert stored["spec"]["names"] == CRD["spec"]["names"]


@pytest.mark.parametrize("case", INVALID, ids=[b.id for b in INVALID])
@_e2e
def test_api_server_refuses_naming_the_field(api, case: Bad):
    server, namespace = api
    doc = _document(case.mutate)
    doc["metadata"]["name"] = doc["metadata"]["name"] if case.field == "metadata.name" else f"bad-{INVALID.index(case)}"
    response = _post(server, namespace, doc)
    body = response.json()
    assert response.status_code == case.status, f"{case.id}: HTTP {response.status_code}: {body.get('message')}"
    assert case.on_server in body.get("message", ""), body.get("message")
    if case.simulated:  # the simulation gives the server's errors, word for word
        with pytest.raises(Refused) as simulated:
            admit(CRD, doc)
        causes = [f"{c.get('field', '<nil>')}: {c['message']}" for c in (body.get("details") or {}).get("causes") or []]
        if response.status_code == 400:
            causes = [body["message"][body["message"].index("strict decoding error"):]]
        assert sorted(causes) == sorted(simulated.value.problems)


@pytest.mark.parametrize("mutate", [v[1] for v in VALID], ids=[v[0] for v in VALID])
@_e2e
def test_api_server_accepts_valid_edge_cases_and_defaults_as_pydantic(api, mutate):
    server, namespace = api
    doc = _document(mutate)
    if doc["metadata"]["name"] == BASE["metadata"]["name"]:
        doc["metadata"]["name"] = f"ok-{[v[1] for v in VALID].index(mutate)}"
    response = _post(server, namespace, doc)
    assert response.status_code == 201, f"HTTP {response.status_code}: {response.json().get('message')}"
    stored = response.json()["spec"]
    assert _without_nulls(stored) == _pydantic_spec(doc)
    assert stored == admit(CRD, doc)["spec"]  # the simulation stores what the server stores, nulls included
