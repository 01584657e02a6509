"""The Serve application builder: `import_path: fusionrec.serving.app:build_app`.

One `ModelServer` deployment per version (`model-<version>`), each with the spec's autoscaling, batching and
resources; one `Router` ingress that splits traffic by weight; one `MetricsHub`. The weights go to the
ingress twice: as init args and as its `user_config`. A config that changes only the ingress's
`user_config.weights` (keeping `args` as they were) is applied by `reconfigure`, with no replica restarted;
a config that changes `args` (new weights or a new version, as the operator writes it) makes Serve rebuild the
application and replace replicas one by one, draining each, so requests keep being answered either way.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from fusionrec.serving.auth import require_token_source
from fusionrec.serving.config import (
    INGRESS_NAME,
    METRICS_HUB_NAME,
    AppArgs,
    autoscaling_config,
    batch_config,
    cpus_of,
    max_ongoing_requests,
    model_actor_options,
    model_deployment_name,
    parse_args,
)
from fusionrec.serving.deployments import Ingress, MetricsHub, ModelServer

INGRESS_MAX_ONGOING = 1024  # the ingress only awaits model replicas: a low cap would queue requests in the proxy
INGRESS_TARGET_ONGOING = 64
# Serve replaces replicas stop-first: while a rebuilt model replica loads, an old ingress replica that is
# draining still holds requests waiting for it. Its drain must outlast a model load, or they are cut off
# (and outlast config.DEPLOY_WAIT_S, how long the router waits for a version being deployed).
INGRESS_DRAIN_S = 180.0


def build_app(args: AppArgs | dict[str, Any]) -> Application:
    """Build the application from its args (see `fusionrec.serving.config.AppArgs`)."""
    parsed = parse_args(args)
    serving = parsed.serving
    require_token_source(serving.auth)  # refused here, before any replica starts, rather than in the ingress
    threads = max(1, int(cpus_of(serving.resources.cpu)))
    models = {
        v.version: ModelServer.options(  # type: ignore[attr-defined]  # ray types @serve.deployment as returning the class, not the Deployment it is
            name=model_deployment_name(v.version),
            autoscaling_config=autoscaling_config(serving, parsed.autoscaling),
            max_ongoing_requests=max_ongoing_requests(serving),
            ray_actor_options=model_actor_options(serving),
            user_config=batch_config(serving),
        ).bind(v.artifact, v.version, threads, serving.live.model_dump(by_alias=True, mode="json"))
        for v in parsed.versions
    }
    ingress_scaling = {"min_replicas": 1, "max_replicas": max(1, serving.max_replicas),
                       "target_ongoing_requests": INGRESS_TARGET_ONGOING,
                       **parsed.autoscaling.model_dump(exclude_none=True)}
    hub = MetricsHub.options(name=METRICS_HUB_NAME).bind()  # type: ignore[attr-defined]  # as above
    return Ingress.options(  # type: ignore[attr-defined]  # as above
        name=INGRESS_NAME,
        max_ongoing_requests=INGRESS_MAX_ONGOING,
        autoscaling_config=ingress_scaling,
        ray_actor_options={"num_cpus": 0},
        graceful_shutdown_timeout_s=INGRESS_DRAIN_S,
        user_config={"weights": parsed.weights},
    ).bind(parsed.name, models, parsed.weights, serving.model_dump(by_alias=True, mode="json"), hub)
