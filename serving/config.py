"""The typed arguments of the Serve application, and the Serve options derived from them.

`AppArgs` is the one contract between whoever deploys the application and the application itself: the
operator (`fusionrec.operator.builders.serving.serving_args`), `fusionrec serve` (`cli.serve_cmd.local_args`)
and `fusionrec run` (`runner.local_serve.app_args`) each build an `AppArgs`, and `AppArgs.document()` is the
one way it is written into serveConfigV2's `args: {name, versions: [{version, artifact, weight}], serving}`.
The application parses that document back here (`parse_args`), at the edge, so a bad document fails the Serve
build with a message naming the field instead of a replica crashing later.

This module imports neither Ray nor torch (pydantic and the spec only): the operator, which runs in a small
image, imports it and nothing else of fusionrec.serving (pyproject's import-linter contracts say so).
"""

from __future__ import annotations

import math
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from fusionrec.errors import UserError, format_validation_error
from fusionrec.serving.routing import check_weights as check_weights  # the one weight check, re-exported
from fusionrec.spec import ServingSpec

INGRESS_NAME = "Router"
METRICS_HUB_NAME = "MetricsHub"
USER_CACHE_ENTRIES = 20_000  # user vectors kept per model replica: 20k x D=256 float32 = 20 MiB
RESPONSE_CACHE_ENTRIES = 10_000  # answers kept per ingress replica: 10k x k=10 items ~ 10-20 MiB of dicts
# Where the operator mounts the serving.auth.secretRef Secret's optional `write-tokens` key (its consts.AUTH_DIR +
# "/write-tokens"). The one writeTokenFile allowed to be missing: an absent optional key has no file. Any other
# missing writeTokenFile is a mistake (a typo would otherwise let the read tokens write).
MOUNTED_WRITE_TOKENS_FILE = "/etc/fusionrec/auth/write-tokens"
# An ingress keeps an item it retired out of the popular lists it fetches for this long: a replica answers with
# its catalogue as of its last item-log poll (serving.live.pollSeconds, at most 60 s, plus the embedding time).
RETIRED_MEMORY_S = 300.0
# A model call (retries across replica deaths included) that takes longer is answered 503 (or the popularity
# fallback): a version whose only replica died queues requests until a new one has loaded (a minute or more).
# Not while the version is being deployed (DEPLOY_WAIT_S).
# Far above a healthy call (milliseconds; the rollout's p99 gate is 50 ms by default).
MODEL_CALL_DEADLINE_S = 5.0
# After a version failed to answer, calls to it fail fast for this long (the 503's Retry-After, in seconds).
RETRY_AFTER_S = 1
# While Serve deploys a version (its deployment is UPDATING: a new config replaces its replicas, stop-first, or
# it starts for the first time), calls wait for the new replicas this long instead of the deadline above: a
# deploy is planned, a dead replica is not. app.INGRESS_DRAIN_S must outlast it.
DEPLOY_WAIT_S = 170.0


class _Args(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class VersionArgs(_Args):
    """One served model version: its artifact folder (as the replicas see it) and its share of traffic."""

    version: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=40)
    artifact: str = Field(min_length=1)
    weight: int = Field(ge=0, le=100, description="Percent of traffic; the weights of all versions sum to 100.")


class AutoscalingTuning(_Args):
    """How fast the autoscaler looks; Ray's defaults react in ~15 s, tests use 0.5 s / 2 s (~4-5 s)."""

    metrics_interval_s: float | None = Field(None, gt=0, le=600)
    look_back_period_s: float | None = Field(None, gt=0, le=3600)


class AppArgs(_Args):
    """The application's arguments (see the module docstring)."""

    name: str = Field(min_length=1, max_length=63)
    versions: list[VersionArgs] = Field(min_length=1, max_length=16)
    serving: ServingSpec = Field(default_factory=ServingSpec)
    autoscaling: AutoscalingTuning = Field(default_factory=AutoscalingTuning)

    @field_validator("versions")
    @classmethod
    def _weights(cls, versions: list[VersionArgs]) -> list[VersionArgs]:
        check_weights((v.version, v.weight) for v in versions)
        return versions

    @property
    def weights(self) -> dict[str, int]:
        return {v.version: v.weight for v in self.versions}

    def document(self) -> dict[str, Any]:
        """The JSON document serveConfigV2's `args` holds (camelCase, as `parse_args` reads it back); the
        autoscaling tuning only when one is set, so a config without it stays as short as it always was."""
        out = self.model_dump(by_alias=True, mode="json")
        if not self.autoscaling.model_dump(exclude_none=True):
            del out["autoscaling"]
        return out


def parse_args(args: AppArgs | dict[str, Any]) -> AppArgs:
    """Validate the application arguments; raises UserError listing every bad field (`args.versions[0].weight`)."""
    if isinstance(args, AppArgs):
        return args
    if not isinstance(args, dict):
        raise UserError(f"application args must be a mapping, got {type(args).__name__}", field="args")
    try:
        return AppArgs.model_validate(args)
    except ValidationError as exc:
        problems = format_validation_error(exc, prefix="args")
        lines = "\n".join(f"  {field}: {msg}" for field, msg in problems)
        raise UserError(f"invalid fusionrec serving args:\n{lines}", field=problems[0][0]) from None


def with_live_uri(serving: ServingSpec, default: str) -> ServingSpec:
    """spec.serving with `live.uri` resolved to where the replicas read and write it: the spec's own, else
    `default` (the `_live` folder beside the versions). Each deployer resolves it at its edge (the runner, `fusionrec
    serve`, the operator for the pods' paths), as the operator turns auth.secretRef into a tokenFile, so the
    replicas never guess where the versions are stored. Unchanged when neither live items nor events are on."""
    live = serving.live
    if not (live.items or live.events) or live.uri:
        return serving
    resolved = serving.model_copy(deep=True)
    resolved.live.uri = default
    return resolved


def model_deployment_name(version: str) -> str:
    """`model-v3`: one Serve deployment per version, so a version's replicas live and scale on their own."""
    return "model-" + re.sub(r"[^a-z0-9-]", "-", version)


def max_ongoing_requests(serving: ServingSpec) -> int:
    """Per model replica: at least the batch size (the default of 5 starves `@serve.batch`: a replica can never
    hold a full batch), and room for the autoscaler's target."""
    return max(serving.max_batch_size, math.ceil(2 * serving.target_ongoing_requests), 8)


def autoscaling_config(serving: ServingSpec, tuning: AutoscalingTuning | None = None) -> dict[str, Any]:
    """Serve's `autoscaling_config` for a model deployment, from the spec."""
    config: dict[str, Any] = {
        "min_replicas": serving.min_replicas,
        "max_replicas": serving.max_replicas,
        "initial_replicas": max(serving.min_replicas, 1),
        "target_ongoing_requests": serving.target_ongoing_requests,
        "upscale_delay_s": serving.upscale_delay_s,
        "downscale_delay_s": serving.downscale_delay_s,
    }
    if tuning is not None:
        config.update(tuning.model_dump(exclude_none=True))
    return config


def batch_config(serving: ServingSpec) -> dict[str, Any]:
    """The model replicas' `user_config`: changing it calls `reconfigure` and keeps the replicas running."""
    return {"max_batch_size": serving.max_batch_size,
            "batch_wait_timeout_s": serving.batch_wait_timeout_ms / 1000.0}


def cpus_of(quantity: str) -> float:
    """A Kubernetes CPU quantity ("2", "500m", "1.5") -> Ray CPUs."""
    return float(quantity[:-1]) / 1000.0 if quantity.endswith("m") else float(quantity)


def model_actor_options(serving: ServingSpec) -> dict[str, Any]:
    """Ray resources a model replica reserves: the spec's CPUs and GPUs (the ingress and the metrics hub
    reserve none, so they fit beside it on the same pod)."""
    options: dict[str, Any] = {"num_cpus": cpus_of(serving.resources.cpu)}
    if serving.resources.gpu:
        options["num_gpus"] = serving.resources.gpu
    return options
