"""The FusionRecommender spec: one typed model shared by the CLI, the local runner, the Ray jobs and the CRD.

The YAML manifest a user runs locally (`fusionrec run m.yaml`) is the same document that is applied to a
cluster, so the spec is parsed once, at the edge, into these models and passed down typed. Unknown keys are
rejected (a misspelt key must not be silently ignored), field names are camelCase on the wire (Kubernetes
convention) and snake_case in Python. Validators raise ValueError so pydantic reports the field path, which
`fusionrec.errors.format_validation_error` turns into `spec.training.workers: ...` messages.
"""

from __future__ import annotations

import keyword
import re
import types
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel, to_snake

from fusionrec.choices import (
    BACKEND_PRECISIONS,
    MERGE_METHODS,
    MODEL_SOURCE_FIX,
    PRECISIONS,
    T_FILTERS_MAX,
    MergeMethodInfo,
    ParamDef,
    compile_t_filters,
    model_source_problem,
    precision_problem,
)
from fusionrec.choices import T_FILTER_KEY_MAX as T_FILTER_KEY_MAX  # re-exported with the other limits
from fusionrec.cron import CronSchedule
from fusionrec.errors import UserError, format_validation_error

API_GROUP = "fusionrec.io"
API_VERSION = "v1alpha1"
KIND: Literal["FusionRecommender"] = "FusionRecommender"

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# DNS-1035 label: what KubeRay requires of the RayService and RayCluster named after a FusionRecommender.
_DNS_1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# DNS-1123 subdomain shape: dot-separated DNS labels (no `..`, no dot or dash at either end of a label), so
# `<name>-<version>-manifest` and the other names derived from a version are valid object names.
_VERSION = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

# Length limits of every free string, shared by the CLI and the CRD (the API server's CEL cost estimates need
# them, and the operator ships the manifest in a ConfigMap, which must stay under 1 MiB).
NAME_MAX = 63  # a DNS label
METADATA_NAME_MAX = 47  # KubeRay: RayService/RayCluster names derived from metadata.name
VERSION_MAX = 40
URI_MAX = 2048  # local paths, pkg://, hf://, pvc://, s3:// URIs
COLUMN_MAX = 128  # a column name of the data files
TEMPLATE_MAX = 4096  # data.itemTextTemplate
SHORT_MAX = 64  # encodings, metric names, quantities, environment variable names
SECRET_NAME_MAX = 253  # a Secret name (DNS-1123 subdomain)
SCHEDULE_MAX = 128  # training.schedule


def _nullable(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _nullable(get_args(annotation)[0])
    return origin in (Union, types.UnionType) and type(None) in get_args(annotation)


class SpecModel(BaseModel):
    """Base for every spec section: camelCase aliases, unknown keys refused, assignment validated.

    A null where the field is not nullable reads as the field left out, as the Kubernetes API server reads it
    (it replaces such a null by the field's default, or drops it when there is none): `fusion:` with no value in
    YAML means the default fusion on the CLI and on a cluster alike. Nullable fields (`X | None`) keep null.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
    )

    @model_validator(mode="before")
    @classmethod
    def _non_nullable_null_is_absent(cls, data: Any) -> Any:
        if not isinstance(data, dict) or None not in data.values():
            return data
        drop = set()
        for name, info in cls.model_fields.items():
            if not _nullable(info.annotation):
                drop.update({name, info.alias or name})
        return {k: v for k, v in data.items() if not (v is None and k in drop)}


# --- models -----------------------------------------------------------------------------------------------


class EncoderSpec(SpecModel):
    """One pretrained LM. Each keeps its own tokenizer; its pooled output is projected to `fusion.dim`."""

    name: str = Field(pattern=_DNS_LABEL, max_length=NAME_MAX, description="Short name, used in reports and weights.")
    source: str = Field(
        min_length=1,
        max_length=URI_MAX,
        description="Local HF folder, pkg://<package>[/subdir] (a Python package that ships a model), "
        "hf://org/name (needs a hub), pvc://<claim>/<path> on a cluster, or an HF folder in object storage "
        "(s3://<bucket>/<prefix>, gs://<bucket>/<prefix>; fetched once into the model cache).",
    )
    pooling: Literal["mean", "cls", "last"] = Field("mean", description="mean, cls, or last non-pad token.")
    max_length: int = Field(64, ge=4, le=8192, description="Tokens per text after truncation.")
    freeze_layers: int = Field(0, ge=0, le=512, description="Freeze the embeddings and the bottom k layers.")
    freeze: bool = Field(False, description="Freeze the whole encoder; its item embeddings are cached once.")

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        return _model_source(value)


def _model_source(value: str) -> str:
    """A model source whose scheme `fusionrec.model.sources` loads (fusionrec.choices.MODEL_SOURCE_SCHEMES)."""
    problem = model_source_problem(value)
    if problem:
        raise ValueError(f"{problem}; {MODEL_SOURCE_FIX}")
    return value


MergeMethod = Literal["linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp"]


class MergeModelRef(SpecModel):
    """A checkpoint taking part in a merge, by encoder name or by source, with its weight."""

    source: str = Field(min_length=1, max_length=URI_MAX,
                        description="An encoder name of this spec, a local HF folder, or a pkg://, hf://, pvc://, "
                                    "s3:// or gs:// source of a same-shape checkpoint.")
    weight: float = Field(1.0, ge=0.0, description="Relative weight (linear, task arithmetic, TIES, DARE).")

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        return _model_source(value)


class MergeSpec(SpecModel):
    """Parameter-space merge of same-architecture checkpoints into one encoder, before fine-tuning.

    The fields every method shares. Each method is its own subclass (`LinearMerge`, `TiesMerge`, ...), generated
    from its parameter definitions in `fusionrec.choices.MERGE_METHODS`, so a method accepts exactly its own
    parameters with their bounds; `spec.merge` is the union of them, told apart by `method`.
    `MergeSpec.model_validate(data)` returns the subclass `data["method"]` names.
    """

    info: ClassVar[MergeMethodInfo]
    method: MergeMethod
    name: str = Field("merged", pattern=_DNS_LABEL, max_length=NAME_MAX,
                      description="Encoder name of the merged model.")
    models: list[MergeModelRef] = Field(min_length=1, max_length=16)

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> MergeSpec:
        if cls is MergeSpec:
            return MERGE_SPEC.validate_python(obj, **kwargs)
        return super().model_validate(obj, **kwargs)

    @model_validator(mode="before")
    @classmethod
    def _non_nullable_null_is_absent(cls, data: Any) -> Any:
        """A null reads as absent, for every key: the CRD holds every method's parameters in one object, whose
        properties are not nullable, so the API server drops a null there (`density: null` on a linear merge)."""
        if isinstance(data, dict) and None in data.values():
            return {k: v for k, v in data.items() if v is not None}
        return data

    @property
    def base_source(self) -> str | None:
        """The base checkpoint (task-vector methods), else None."""
        return getattr(self, "base", None)

    def parameters(self) -> dict[str, Any]:
        """The method's parameters the user set, by their spec names (the method fills the defaults)."""
        values = {p.name: getattr(self, param_attribute(p.name)) for p in self.info.params}
        return {name: value for name, value in values.items() if value is not None}


def param_attribute(name: str) -> str:
    """The Python attribute of a method parameter (`lambda` -> `lambda_`, `tFilters` -> `t_filters`)."""
    attribute = to_snake(name)
    return f"{attribute}_" if keyword.iskeyword(attribute) else attribute


def _t_filters(cls: type[MergeSpec], value: dict[str, float] | None) -> dict[str, float] | None:
    if value is not None:
        try:
            compile_t_filters(value)  # the regex and range checks SLERP runs
        except ValueError as exc:
            raise ValueError(f"merge.tFilters: {exc}") from None
    return value


def _param_field(pdef: ParamDef) -> tuple[Any, Any]:
    """The pydantic (annotation, Field) of one method parameter, from its definition."""
    size: dict[str, Any] = {}
    if pdef.kind is dict:  # SLERP's tFilters, the one mapping parameter
        annotation: Any = dict[str, float]  # checked by _t_filters
        size = {"max_length": T_FILTERS_MAX}
    else:
        bounded = any(b is not None for b in (pdef.ge, pdef.gt, pdef.le))
        annotation = Annotated[pdef.kind, Field(ge=pdef.ge, gt=pdef.gt, le=pdef.le)] if bounded else pdef.kind
    if pdef.required:
        return annotation, Field(alias=pdef.name, description=pdef.description, **size)
    # Left out, the method applies its default (ParamDef.default): the field stays None, and is not nullable, so
    # the CRD fills no default the other methods would then refuse.
    default = "" if pdef.default is None else f" (default {str(pdef.default).lower()})"
    return annotation, Field(None, alias=pdef.name, description=f"{pdef.description}{default}", **size)


def _model_count(self: MergeSpec) -> MergeSpec:
    wanted = self.info.models
    if wanted is not None and len(self.models) != wanted:
        raise ValueError(f"merge.models: {self.method} takes exactly {wanted} models, got {len(self.models)}")
    return self


def _unweighted(self: MergeSpec) -> MergeSpec:
    for i, ref in enumerate(self.models):
        if ref.weight != 1.0:  # 1.0 is the default the CRD fills in
            raise ValueError(f"merge.models[{i}].weight: {self.method} does not use per-model weights (got "
                             f"{ref.weight}); leave weight out (or at 1.0)")
    return self


def _merge_class(info: MergeMethodInfo) -> type[MergeSpec]:
    fields: dict[str, Any] = {"method": (Literal[info.name], Field(description=info.description))}
    if info.needs_base:
        fields["base"] = (Annotated[str, AfterValidator(_model_source)], Field(
            min_length=1, max_length=URI_MAX,
            description="Base checkpoint the task vectors are taken against: an encoder name or a model source."))
    for pdef in info.params:
        fields[param_attribute(pdef.name)] = _param_field(pdef)
    validators: dict[str, Any] = {}
    if info.models is not None:
        validators["_model_count"] = model_validator(mode="after")(_model_count)
    if not info.uses_weights:
        validators["_unweighted"] = model_validator(mode="after")(_unweighted)
    if any(p.kind is dict for p in info.params):
        validators["_t_filters"] = field_validator("t_filters")(classmethod(_t_filters))
    title = "".join(part.title() for part in info.name.split("_"))
    cls = create_model(f"{title}Merge", __base__=MergeSpec, __module__=__name__, __validators__=validators,
                       __doc__=f"merge.method {info.name}: {info.description}.", **fields)
    cls.info = info
    return cls


MERGE_CLASSES: dict[str, type[MergeSpec]] = {name: _merge_class(info) for name, info in MERGE_METHODS.items()}


def _merge_tag(value: Any) -> str | None:
    method = value.get("method") if isinstance(value, dict) else getattr(value, "method", None)
    return f"method={method}" if isinstance(method, str) and method in MERGE_CLASSES else None


# The tag of each member is "method=<name>": pydantic puts it in error locations, and
# `fusionrec.errors.format_validation_error` leaves it out of the field path (spec.merge.density).
if TYPE_CHECKING:  # the members are generated, so a type checker sees their base
    AnyMerge = MergeSpec
else:
    AnyMerge = Annotated[
        Union[tuple(Annotated[cls, Tag(f"method={name}")] for name, cls in MERGE_CLASSES.items())],  # noqa: UP007
        Discriminator(_merge_tag, custom_error_type="merge_method",
                      custom_error_message=f"merge.method must be one of {', '.join(MERGE_CLASSES)}"),
    ]
MERGE_SPEC: TypeAdapter[MergeSpec] = TypeAdapter(AnyMerge)


class FusionSpec(SpecModel):
    """Representation-level fusion of the encoders' pooled outputs."""

    method: Literal["weighted", "attention", "gating", "concat_mlp"] = "attention"
    dim: int = Field(256, ge=8, le=8192, description="Common dimension every encoder is projected to.")
    hidden: int = Field(512, ge=8, le=16384, description="Hidden width of the concat+MLP and gating networks.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


SEQUENCE_DEFAULTS = (2, 1)  # task.sequenceLayers, task.sequenceHeads
HEAD_HIDDEN_DEFAULT = 128


class TaskSpec(SpecModel):
    """What the head predicts, and how the ranking model is built."""

    type: Literal["ranking", "ctr", "rating"] = "ranking"
    user_tower: Literal["auto", "sequence", "pooled", "text"] = Field(
        "auto", description="sequence: SASRec over fused item embeddings (reads the order); pooled: attention "
        "pooling over them, order-free; text: fused text of recent items; auto: sequence, or pooled when "
        "data.order is none.")
    use_item_ids: bool = Field(True, description="Add a learned item-ID embedding to the item tower (hybrid).")
    history_length: int = Field(50, ge=1, le=1024, description="Most recent items that describe a user.")
    sequence_layers: int = Field(
        SEQUENCE_DEFAULTS[0], ge=1, le=12, description="userTower sequence: transformer blocks of the SASRec tower "
        "(the benchmark's CTR rows use 1: each row carries a history).")
    sequence_heads: int = Field(
        SEQUENCE_DEFAULTS[1], ge=1, le=16,
        description="userTower sequence: attention heads per block; fusion.dim must be divisible by it.")
    head_hidden: int = Field(HEAD_HIDDEN_DEFAULT, ge=8, le=16384,
                             description="ctr/rating: hidden width of the head's MLP (a ranking head has none).")
    negatives: Literal["in_batch", "sampled", "full"] | None = Field(
        None, description="Softmax negatives of a ranking head: full (the whole catalogue), in_batch, or sampled "
        "(in-batch plus numNegatives uniform draws). Default: full, or sampled when an encoder is fine-tuned "
        "(a full softmax would run the whole catalogue through the LM every step).")
    num_negatives: int = Field(256, ge=1, le=100_000)
    user_features: list[Annotated[str, Field(min_length=1, max_length=COLUMN_MAX)]] = Field(
        default_factory=list, max_length=32,
        description="ctr/rating: users-table columns (e.g. age, gender, occupation, zip_code) embedded and added "
                    "to the user vector, each at most once; ranking user vectors depend on the history alone.",
    )
    cross_layers: int = Field(
        0, ge=0, le=6,
        description="ctr/rating: explicit cross layers (DCN-v2) over the user and item vectors in the head; "
                    "0 = none. Ranking scores stay a dot product so the catalogue can be searched.",
    )

    @model_validator(mode="after")
    def _pointwise_only_options(self) -> TaskSpec:
        if self.user_features and self.type == "ranking":
            raise ValueError("task.userFeatures applies to type ctr or rating: a ranking user vector depends on "
                             "the history alone (serving caches it per history); remove userFeatures or change type")
        if len(set(self.user_features)) != len(self.user_features):
            raise ValueError(f"task.userFeatures lists a column twice: {self.user_features}")
        if self.cross_layers and self.type == "ranking":
            raise ValueError(f"task.crossLayers={self.cross_layers} applies to type ctr or rating: a ranking score "
                             "is a dot product (the catalogue is searched by it); set crossLayers to 0 or change type")
        # A size the chosen model does not have is refused, not ignored (the CRD fills the defaults, so a value
        # other than the default is what the user set).
        if self.head_hidden != HEAD_HIDDEN_DEFAULT and self.type == "ranking":
            raise ValueError(f"task.headHidden={self.head_hidden} applies to type ctr or rating: a ranking head is a "
                             f"dot product with no hidden layer; leave headHidden at {HEAD_HIDDEN_DEFAULT}")
        if self.user_tower in ("text", "pooled") and (self.sequence_layers, self.sequence_heads) != SEQUENCE_DEFAULTS:
            raise ValueError("task.sequenceLayers and task.sequenceHeads apply to userTower sequence; with userTower "
                             f"{self.user_tower} leave them at {SEQUENCE_DEFAULTS[0]} and {SEQUENCE_DEFAULTS[1]}")
        return self

    def negatives_for(self, fine_tuned: bool) -> Literal["in_batch", "sampled", "full"]:
        """`negatives` with its default resolved, the same on the CLI, a Ray worker and a cluster (which see the
        field unset, dumped as null, and pruned or left null by the API server): the value given, else
        `sampled` for a ranking head when an encoder is fine-tuned, else `full`."""
        if self.negatives is not None:
            return self.negatives
        return "sampled" if fine_tuned and self.type == "ranking" else "full"


# --- data ---------------------------------------------------------------------------------------------------


class ColumnRename(SpecModel):
    """An item or user column read under another name, so raw headers (Book-Title) need no rewriting of the file."""

    name: str = Field(min_length=1, max_length=COLUMN_MAX, description="The name templates and features use.")
    column: str = Field(min_length=1, max_length=COLUMN_MAX, description="The column as the file spells it.")


class ColumnMapping(SpecModel):
    """Maps a shop's export columns onto the data contract (user_id, item_id, timestamp, rating, label)."""

    user_id: str = Field("user_id", min_length=1, max_length=COLUMN_MAX)
    item_id: str = Field("item_id", min_length=1, max_length=COLUMN_MAX)
    timestamp: str = Field("timestamp", min_length=1, max_length=COLUMN_MAX)
    rating: str | None = Field(
        None, min_length=1, max_length=COLUMN_MAX,
        description="The rating column; a column named here must exist. Default: the file's `rating` column "
                    "when it has one, else none.")
    label: str | None = Field(
        None, min_length=1, max_length=COLUMN_MAX,
        description="The 0/1 label column; a column named here must exist. Default: the file's `label` column "
                    "when it has one, else none.")
    rename: list[ColumnRename] = Field(
        default_factory=list, max_length=64,
        description="Any other item/user columns to rename, e.g. [{name: title, column: Book-Title}] "
                    "(CLI: --map title=Book-Title).")

    def optional_column(self, field: Literal["rating", "label"], present: Collection[str]) -> str | None:
        """The file's column for an optional contract field, the same however the spec travelled (unset, or
        dumped and validated again as null): the column named, which must then exist; else the contract's
        own name when the file has that column; else None."""
        named: str | None = getattr(self, field)
        if named is not None:
            return named
        return field if field in present else None


DATASET_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # a prepared dataset's folder name under the data home


class DataSpec(SpecModel):
    """Where interactions and item text come from. `dataset` names a prepared dataset; paths override it."""

    dataset: str | None = Field(
        "ml-100k", pattern=DATASET_NAME, max_length=64,
        description="A dataset prepared with `fusionrec data prepare NAME` (ml-100k and ml-1m are fetched and "
                    "prepared when missing).")
    order: Literal["time", "none"] = Field(
        "time", description="time: the interactions' timestamps order each user's history (chronological "
        "leave-one-out); none: they carry no usable order (a shop's baskets, missing or batch timestamps), so "
        "the hold-out is a seeded random item per user and the default user tower is order-free.")
    path: str | None = Field(None, max_length=URI_MAX,
                             description="Folder holding the dataset's files (else found or fetched).")
    interactions: str | None = Field(None, max_length=URI_MAX, description="CSV/Parquet/atomic file of interactions.")
    items: str | None = Field(None, max_length=URI_MAX,
                              description="CSV/Parquet/atomic file of items and their text fields.")
    users: str | None = Field(None, max_length=URI_MAX, description="CSV/Parquet/atomic file of users (side features).")
    format: Literal["auto", "csv", "parquet", "atomic", "movielens"] = "auto"
    delimiter: str = Field(",", min_length=1, max_length=4)
    encoding: str = Field("utf-8", min_length=1, max_length=SHORT_MAX)
    escapechar: str | None = Field(None, min_length=1, max_length=1,
                                   description="CSV escape character (default none), e.g. a backslash where quoted "
                                               "fields hold backslash-escaped quotes.")
    columns: ColumnMapping = Field(default_factory=ColumnMapping)
    item_text_template: str | None = Field(
        None, max_length=TEMPLATE_MAX,
        description="Python format template over item fields; a missing field drops its clause. Default: the "
                    "template the dataset was prepared with (`fusionrec data prepare --template`), else "
                    "'{title}. Genres: {genres}. Year: {year}'.")
    max_users: int | None = Field(None, ge=1, description="Use only the first N users (smoke tests, demos).")

    @model_validator(mode="after")
    def _some_source(self) -> DataSpec:
        if self.dataset is None and not self.interactions:
            raise ValueError("data: give either dataset (e.g. ml-100k) or an interactions file")
        return self


# --- training, compile, serving -----------------------------------------------------------------------------


# The validation metric that selects the checkpoint (and stops early) when earlyStopping.metric is not given.
SELECTION_METRIC_DEFAULTS: dict[str, str] = {"ranking": "ndcg@10", "ctr": "auc", "rating": "rmse"}


class EarlyStoppingSpec(SpecModel):
    metric: str | None = Field(
        None, max_length=SHORT_MAX, pattern=r"^(ndcg|hr|mrr|recall)@\d+$|^(auc|logloss|rmse|mae)$",
        description="Validation metric that selects the checkpoint and stops early: ndcg@K, hr@K, mrr@K or "
                    "recall@K (ranking), auc or logloss (ctr), rmse or mae (rating). Default: the task's own, "
                    "ndcg@10 (ranking), auc (ctr), rmse (rating).")
    patience: int = Field(3, ge=1, le=1000)

    def metric_for(self, task: str) -> str:
        """`metric` with its default resolved for a task type (ranking, ctr, rating), the same on the CLI, a Ray
        worker and a cluster: the metric given, else the task's own (SELECTION_METRIC_DEFAULTS). Whether the
        task can measure a given metric is the training loop's check (`fusionrec.train.loop.selection_metric`)."""
        if self.metric is not None:
            return self.metric
        if task not in SELECTION_METRIC_DEFAULTS:
            raise ValueError(f"unknown task type {task!r}; one of {', '.join(SELECTION_METRIC_DEFAULTS)}")
        return SELECTION_METRIC_DEFAULTS[task]


class TrainingSpec(SpecModel):
    workers: int = Field(1, ge=1, le=1024, description="Ray Train workers (DDP ranks).")
    gpus_per_worker: float = Field(0, ge=0, le=16)
    cpus_per_worker: float = Field(1, gt=0, le=256)
    epochs: int = Field(10, ge=1, le=10_000)
    batch_size: int = Field(256, ge=1, le=1_000_000)
    learning_rate: float = Field(1e-3, gt=0, le=10)
    encoder_learning_rate: float = Field(2e-5, gt=0, le=10, description="LR of unfrozen pretrained layers.")
    weight_decay: float = Field(0.01, ge=0, le=10)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    lr_schedule: Literal["linear", "cosine", "constant"] = "cosine"
    dropout: float = Field(0.2, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0, description="Max gradient norm; 0 disables clipping.")
    grad_accumulation: int = Field(1, ge=1, le=1024)
    ema_decay: float = Field(0.0, ge=0, lt=1, description="Validate, select and ship an exponential moving average "
                                                         "of the weights (e.g. 0.999); 0 = the live weights.")
    early_stopping: EarlyStoppingSpec = Field(default_factory=EarlyStoppingSpec)
    seed: int = Field(2020, ge=0)
    schedule: str | None = Field(None, max_length=SCHEDULE_MAX,
                                 description="Cron expression (minute hour day-of-month month day-of-week, UTC) for "
                                 "periodic retraining on a cluster, e.g. '0 3 * * *'.")
    max_failures: int = Field(2, ge=0, le=100, description="Worker failures tolerated; resumes from checkpoint.")
    storage_path: str | None = Field(None, max_length=URI_MAX,
                                     description="Checkpoint storage (local folder, s3:// or gs:// URI).")

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                CronSchedule.parse(value)
            except ValueError as exc:
                raise ValueError(f"training.schedule is not a cron expression: {exc}; e.g. '0 3 * * *' "
                                 "(minute hour day-of-month month day-of-week)") from None
        return value


Backend = Literal["onnxruntime", "tensorrt", "torch"]
Precision = Literal["fp32", "fp16", "bf16", "int8"]
assert set(get_args(Backend)) == set(BACKEND_PRECISIONS) and get_args(Precision) == PRECISIONS


IndexKind = Literal["auto", "exact", "hnsw", "ivf"]


class IndexSpec(SpecModel):
    """The item index /v1/recommend searches, built by `fusionrec compile` and stored with its measured recall@10."""

    # field -> the kinds that read it; any other kind refuses a value other than the default (KIND_FIELDS' rule)
    KIND_FIELDS: ClassVar[dict[str, tuple[str, ...]]] = {
        "min_items": ("auto",), "min_recall": ("auto", "hnsw", "ivf"), "hnsw_m": ("hnsw",),
        "ef_construction": ("hnsw",), "ef_search": ("hnsw",), "nlist": ("auto", "ivf"), "nprobe": ("auto", "ivf")}

    kind: IndexKind = Field("auto", description="auto: ivf for catalogues of at least minItems items, exact below; "
                            "exact: every item scored; hnsw or ivf: that approximate faiss index at any size.")
    min_items: int = Field(200_000, ge=1, le=2_000_000_000,
                           description="auto: the catalogue size from which an approximate index is built.")
    min_recall: float = Field(0.9, gt=0, le=1, description="Lowest recall@10 of an approximate index against exact "
                              "search (held-out users, seen items excluded) that compile ships.")
    hnsw_m: int = Field(32, ge=4, le=128, description="hnsw: graph links per item (costs 8*M bytes per item).")
    ef_construction: int = Field(100, ge=8, le=4096, description="hnsw: candidates kept while linking an item.")
    ef_search: int = Field(256, ge=1, le=65_536, description="hnsw: candidates kept while searching.")
    nlist: int = Field(0, ge=0, le=1_048_576, description="ivf: clusters; 0 = about 4*sqrt(items).")
    nprobe: int = Field(32, ge=1, le=1_048_576, description="ivf: clusters searched per query (at most nlist).")

    @classmethod
    def applies_to(cls, name: str) -> str:
        """'<alias> applies to kind a, b or c': the message of the KIND_FIELDS rule, here and in the CRD."""
        *others, last = cls.KIND_FIELDS[name]
        return f"{to_camel(name)} applies to kind {', '.join(others) + ' or ' if others else ''}{last}"

    @model_validator(mode="after")
    def _parameters_of_the_kind(self) -> IndexSpec:
        for name, kinds in self.KIND_FIELDS.items():
            if self.kind not in kinds and getattr(self, name) != type(self).model_fields[name].default:
                raise ValueError(f"compile.index.{self.applies_to(name)}; with kind {self.kind} leave it out")
        if self.nlist and self.nprobe > self.nlist:
            raise ValueError(f"compile.index.nprobe ({self.nprobe}) must be at most nlist ({self.nlist})")
        return self


class CompileSpec(SpecModel):
    backend: Backend = Field("onnxruntime", description="onnxruntime: fp32 or int8; tensorrt and torch: fp32, fp16 "
                             "or bf16 (fusionrec.choices.BACKEND_PRECISIONS).")
    precision: Precision = "fp32"
    threads: int = Field(0, ge=0, le=256, description="Intra-op threads per replica; 0 = all cores.")
    opset: int = Field(17, ge=13, le=23)
    index: IndexSpec = Field(default_factory=IndexSpec)

    @model_validator(mode="after")
    def _backend_compiles_precision(self) -> CompileSpec:
        problem = precision_problem(self.backend, self.precision)
        if problem:
            message, fix = problem
            raise ValueError(f"compile.precision: {message}; {fix}")
        return self


class ResourcesSpec(SpecModel):
    cpu: str = Field("1", max_length=SHORT_MAX, pattern=r"^\d+(\.\d+)?m?$")
    memory: str = Field("2Gi", max_length=SHORT_MAX, pattern=r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$")
    gpu: int = Field(0, ge=0, le=16)


class AuthSpec(SpecModel):
    secret_ref: str | None = Field(None, min_length=1, max_length=SECRET_NAME_MAX,
                                   description="Kubernetes Secret with a `tokens` key, one token a line.")
    token_file: str | None = Field(None, min_length=1, max_length=URI_MAX,
                                   description="Local file with one bearer token a line.")
    token_env: str | None = Field(None, min_length=1, max_length=SHORT_MAX,
                                  description="Environment variable holding comma-separated tokens.")
    write_token_file: str | None = Field(
        None, min_length=1, max_length=URI_MAX,
        description="Local file with the tokens allowed to write (PUT/DELETE /v1/items, POST /v1/events), one a "
                    "line. With no write token source, the read tokens may write. On a cluster: the secretRef "
                    "Secret's optional `write-tokens` key.")
    write_token_env: str | None = Field(
        None, min_length=1, max_length=SHORT_MAX,
        description="Environment variable holding comma-separated write tokens (see writeTokenFile).")
    disabled: bool = Field(
        False, description="Serve /v1/* without a bearer token (auth is on by default). Only with no secretRef, "
        "tokenFile or tokenEnv; a cluster needs secretRef unless this is true.")

    @model_validator(mode="after")
    def _disabled_without_tokens(self) -> AuthSpec:
        if self.disabled and (self.secret_ref or self.token_file or self.token_env or self.write_token_file
                              or self.write_token_env):
            raise ValueError("serving.auth.disabled: true cannot be combined with secretRef, tokenFile, tokenEnv, "
                             "writeTokenFile or writeTokenEnv; remove the token source or drop disabled")
        return self


LIVE_FOLDER = "_live"  # beside the versions (`<storage.uri>[/<name>]/_live`); no version name starts with "_"


class LiveSpec(SpecModel):
    """A living shop: items upserted and retired while serving, and feedback events recorded. Both are writes,
    authorised by the write tokens (serving.auth.writeTokenFile/writeTokenEnv, the Secret's `write-tokens`
    key) where some are configured."""

    items: bool = Field(
        False, description="Accept PUT/DELETE /v1/items: an item's fields are rendered with each served version's "
        "itemTextTemplate and embedded by its item tower, so a new item is recommendable without retraining; "
        "changes are stored under `uri` and replayed by every replica.")
    events: bool = Field(
        False, description="Accept POST /v1/events (impressions, clicks, purchases, ratings), stored durably and "
        "idempotently under `uri` for retraining (`fusionrec retrain`) and the canary's click-through gate.")
    uri: str | None = Field(
        None, max_length=URI_MAX,
        description="Where item changes and events live (local folder, pvc://, s3://, gs://). Default: the "
                    f"folder {LIVE_FOLDER} beside the versions in storage.uri.")
    poll_seconds: float = Field(
        1.0, gt=0, le=60, description="How often each model replica reads new item changes: a new item is "
        "recommendable within about this plus its embedding time.")


class ServingLimits(SpecModel):
    max_k: int = Field(100, ge=1, le=10_000)
    max_history: int = Field(200, ge=1, le=100_000)
    max_candidates: int = Field(10_000, ge=1, le=1_000_000)
    max_body_bytes: int = Field(1_048_576, ge=1024, le=1 << 30)


class ServingSpec(SpecModel):
    min_replicas: int = Field(1, ge=0, le=1000)
    max_replicas: int = Field(4, ge=1, le=1000)
    target_ongoing_requests: float = Field(2, gt=0, le=10_000)
    max_batch_size: int = Field(64, ge=1, le=4096)
    batch_wait_timeout_ms: float = Field(5, ge=0, le=10_000)
    upscale_delay_s: float = Field(10, ge=0)
    downscale_delay_s: float = Field(300, ge=0)
    port: int = Field(8000, ge=1, le=65535)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    auth: AuthSpec = Field(default_factory=AuthSpec)
    limits: ServingLimits = Field(default_factory=ServingLimits)
    live: LiveSpec = Field(default_factory=LiveSpec)

    @model_validator(mode="after")
    def _replica_range(self) -> ServingSpec:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"serving.maxReplicas ({self.max_replicas}) must be >= serving.minReplicas ({self.min_replicas})"
            )
        return self


class CtrGateSpec(SpecModel):
    """A business metric in the canary gate: the candidate's click-through (clicks / impressions, from POST
    /v1/events) must be no worse than the stable version's by more than a margin, judged by a one-sided
    two-proportion z-test once both versions have enough impressions."""

    enabled: bool = Field(
        False, description="Gate each canary step on click-through too (needs serving.live.events: true).")
    max_relative_drop: float = Field(
        0.05, ge=0, lt=1, description="The candidate fails when its CTR is significantly below (1 - this) x the "
        "stable version's CTR.")
    min_impressions: int = Field(
        1000, ge=1, le=1_000_000_000,
        description="Impressions each version needs in the window before the gate judges; until then the step "
                    "waits (at most maxWaitSeconds).")
    confidence: float = Field(0.95, ge=0.5, lt=1, description="Confidence of the one-sided test (0.95: p < 0.05).")
    max_wait_seconds: int = Field(
        3600, ge=0, le=604_800,
        description="A step still short of minImpressions after this long is rolled back (reason: "
                    "InsufficientImpressions) when autoRollback is true, else held.")


class AnalysisSpec(SpecModel):
    enabled: bool = Field(
        True, description="Gate each canary step on the SLO analysis (error rate, p99). false: steps advance on "
        "stepIntervalSeconds alone, with no check; the status says the rollout was not gated.")
    max_error_rate: float = Field(0.01, ge=0, le=1)
    max_p99_latency_ms: float = Field(50, gt=0)
    window_seconds: int = Field(60, ge=10, le=86_400)
    ctr: CtrGateSpec = Field(default_factory=CtrGateSpec)


class RolloutSpec(SpecModel):
    strategy: Literal["canary", "blueGreen"] = "canary"
    steps: list[Annotated[int, Field(ge=1, le=100)]] = Field(
        default_factory=lambda: [10, 50, 100], min_length=1, max_length=20,
        description="Canary weights in percent, each in 1..100, strictly increasing, ending at 100.")
    step_interval_seconds: int = Field(300, ge=0, le=86_400)
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec)
    auto_rollback: bool = True

    @field_validator("steps")
    @classmethod
    def _steps_rise_to_100(cls, steps: list[int]) -> list[int]:
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"rollout.steps must strictly increase, got {steps}")
        if steps[-1] != 100:
            raise ValueError(f"rollout.steps must end at 100 so the candidate takes all traffic, got {steps}")
        return steps

    @model_validator(mode="after")
    def _ctr_gate_needs_a_gated_canary(self) -> RolloutSpec:
        if self.analysis.ctr.enabled and self.strategy != "canary":
            raise ValueError("rollout.analysis.ctr.enabled needs strategy: canary: a blue-green candidate takes no "
                             "user traffic before the switch, so it has no click-through to compare")
        if self.analysis.ctr.enabled and not self.analysis.enabled:
            raise ValueError("rollout.analysis.ctr.enabled needs rollout.analysis.enabled: true (the click-through "
                             "gate is part of the analysis); enable the analysis or disable the CTR gate")
        return self


class MonitoringSpec(SpecModel):
    service_monitor: bool = False


BaselineName = Literal["pop", "bpr", "sasrec", "lr", "fm"]


class EvaluationSpec(SpecModel):
    """Baselines and single-encoder models measured beside the fused one, on the same split and seed, and which
    of the candidates is shipped."""

    select: Literal["fused", "best"] = Field(
        "fused", description="fused: ship the fused model (the report says when one encoder alone validated "
        "better); best: also train each encoder alone and ship whichever validates best, reporting all of them.")
    baseline_epochs: int | None = Field(
        None, ge=1, le=10_000,
        description="Epoch budget of every trained baseline (early stopping still applies). Default by size: each "
        "baseline's own budget (RecBole's) up to 200k interactions, scaled down in proportion above that, to at "
        "least 20.")

    baselines: list[BaselineName] | None = Field(
        None, max_length=5,
        description="Baselines fitted beside the fused model. Default by task: pop, bpr, sasrec (ranking); "
        "lr, fm (ctr); none (rating).")
    compare_singles: bool = Field(
        True, description="Also train one model per encoder (same fusion dim and training) to show what the "
        "fusion adds over its best member.")


class StorageSpec(SpecModel):
    """Where versioned artifacts live. No credential is ever in the spec (it is shown, logged and stored)."""

    uri: str = Field("./runs", min_length=1, max_length=URI_MAX,
                     description="Where versioned artifacts live (local folder, pvc://, s3://, gs://).")
    credentials_secret: str | None = Field(
        None, min_length=1, max_length=SECRET_NAME_MAX, pattern=_VERSION,  # _VERSION: a DNS-1123 subdomain
        description="Cluster only: a Secret in this namespace holding the object-storage credentials of the "
        "training and serving pods. s3://: its keys become their environment (AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY; optionally AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL_S3); gs://: key "
        "gcloud-application-credentials.json, a service-account key file. Leave it out for s3:// through the "
        "pods' own identity (IRSA, EKS Pod Identity). `fusionrec` on a workstation reads its environment instead.")


# --- the whole spec and the manifest around it --------------------------------------------------------------


class FusionRecommenderSpec(SpecModel):
    """Everything needed to train, compile, serve and roll out one recommender."""

    version: str = Field(
        pattern=_VERSION, max_length=VERSION_MAX,
        description="Version of the model; a new one is trained and rolled out. Lowercase letters, digits, '-' and "
        "'.', dot-separated parts each starting and ending with a letter or digit (e.g. v3, 2024.06.1).")
    encoders: list[EncoderSpec] = Field(min_length=1, max_length=16)
    merge: AnyMerge | None = None
    fusion: FusionSpec = Field(default_factory=FusionSpec)
    task: TaskSpec = Field(default_factory=TaskSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    compile: CompileSpec = Field(default_factory=CompileSpec)
    serving: ServingSpec = Field(default_factory=ServingSpec)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)

    @field_validator("encoders")
    @classmethod
    def _unique_names(cls, encoders: list[EncoderSpec]) -> list[EncoderSpec]:
        names = [e.name for e in encoders]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"encoder names must be unique; repeated: {', '.join(duplicates)}")
        return encoders

    @property
    def user_tower(self) -> Literal["sequence", "pooled", "text"]:
        """task.userTower with `auto` resolved: sequence when data.order is time, pooled when it is none."""
        tower = self.task.user_tower
        if tower == "auto":
            return "pooled" if self.data.order == "none" else "sequence"
        return tower

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> FusionRecommenderSpec:
        heads = self.task.sequence_heads
        if self.task.user_tower == "auto" and self.data.order == "none" and \
                (self.task.sequence_layers, heads) != SEQUENCE_DEFAULTS:
            raise ValueError("task.sequenceLayers and task.sequenceHeads apply to userTower sequence; userTower auto "
                             "is pooled when data.order is none: set userTower sequence, or leave them at "
                             f"{SEQUENCE_DEFAULTS[0]} and {SEQUENCE_DEFAULTS[1]}")
        if self.evaluation.select == "best" and len(self.encoders) >= 2 and self.training.workers > 1:
            raise ValueError(f"evaluation.select: best fits each encoder alone in one process, so it compares like "
                             f"with like only when the fused model trains in one too; with training.workers="
                             f"{self.training.workers} set workers to 1, or select: fused")
        if self.rollout.analysis.ctr.enabled and not self.serving.live.events:
            raise ValueError("rollout.analysis.ctr.enabled needs the click-through events: set "
                             "serving.live.events: true (POST /v1/events), or disable the CTR gate")
        if self.user_tower == "sequence" and self.fusion.dim % heads:
            raise ValueError(f"task.sequenceHeads={heads} must divide fusion.dim={self.fusion.dim} (each head "
                             "reads dim/heads of the vector); change either")
        return self


class ObjectMeta(SpecModel):
    name: str = Field(pattern=_DNS_1035_LABEL, max_length=METADATA_NAME_MAX,
                      description="A DNS-1035 label (a lowercase letter first) of at most 47 characters: KubeRay "
                      "requires that of the RayService and RayCluster named after it.")
    namespace: str | None = Field(None, pattern=_DNS_LABEL, max_length=NAME_MAX)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Manifest(SpecModel):
    """The `apiVersion/kind/metadata/spec` document, as applied to a cluster or run locally."""

    api_version: Literal["fusionrec.io/v1alpha1"] = Field("fusionrec.io/v1alpha1", alias="apiVersion")
    kind: Literal["FusionRecommender"] = KIND
    metadata: ObjectMeta
    spec: FusionRecommenderSpec
    # A manifest read back from a cluster carries status; it is not configuration, so it is accepted and ignored.
    status: dict[str, Any] | None = Field(None, exclude=True)


class ManifestLoader(yaml.SafeLoader):
    """PyYAML's safe loader, with YAML 1.2's floats: `1e-3` (no dot) is a number, as kubectl and the API server
    read it, not the string PyYAML 1.1 makes of it (which strict validation would then refuse)."""


ManifestLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                  |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def manifest_from_dict(document: Any, source: str = "manifest") -> Manifest:
    """Validate a parsed manifest document, raising one UserError that lists every bad field."""
    if not isinstance(document, dict):
        raise UserError(f"{source} must be a mapping with apiVersion, kind, metadata and spec")
    try:
        # Strict: no "4" for 4 or "true" for true. The API server converts nothing, and whatever one of the two
        # accepts the other must accept too.
        return Manifest.model_validate(document, strict=True)
    except ValidationError as exc:
        problems = format_validation_error(exc)
        lines = "\n".join(f"  {field}: {msg}" for field, msg in problems)
        raise UserError(f"{source} is invalid:\n{lines}", field=problems[0][0] if problems else None) from None


def upgrade_artifact_spec(document: Any) -> Any:
    """An artifact's spec.yaml as this version reads it. Specs written before `spec.merge` was one model per
    method dumped every method's parameter in it (`density: null`, `rescale: true`, `seed: 0` on a linear merge):
    those the method does not take are dropped. (A manifest gets no such leniency.)"""
    merge = document.get("merge") if isinstance(document, dict) else None
    if not isinstance(merge, dict) or merge.get("method") not in MERGE_CLASSES:
        return document
    cls = MERGE_CLASSES[merge["method"]]
    own = {f.alias or n for n, f in cls.model_fields.items()}
    legacy = {"base": None, "density": None, "lambda": None, "t": None, "tFilters": None, "rescale": True, "seed": 0}
    kept = {k: v for k, v in merge.items() if k in own or k not in legacy or v != legacy[k]}
    return {**document, "merge": kept}


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest; raises UserError (exit 2) naming the file and the field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"manifest {path} does not exist",
                        fix="pass the path of a FusionRecommender YAML file") from None
    try:
        document = yaml.load(text, Loader=ManifestLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        raise UserError(f"manifest {path} is not valid YAML: {exc}") from None
    return manifest_from_dict(document, source=str(path))
