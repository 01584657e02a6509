"""What a RayService serves, read back from its serveConfigV2: the tests' view of the cluster (the operator
itself keeps the split in its status and never reads it back)."""

from __future__ import annotations

from typing import Any

import yaml

from fusionrec.operator import consts
from fusionrec.operator.builders.serving import ServedVersion


def served_versions(rayservice: dict[str, Any]) -> list[ServedVersion]:
    """The versions and live weights a RayService serves (empty when it has no fusionrec app): the router's
    `user_config` weights, else the args' starting weights."""
    text = rayservice.get("spec", {}).get("serveConfigV2") or ""
    document = yaml.safe_load(text) or {}
    for app in document.get("applications", []):
        if app.get("name") == consts.SERVE_APP_NAME:
            live: dict[str, Any] = {}
            for deployment in app.get("deployments") or []:
                if deployment.get("name") == consts.SERVE_INGRESS_DEPLOYMENT:
                    live = (deployment.get("user_config") or {}).get("weights") or {}
            return [ServedVersion(v["version"], int(live.get(v["version"], v["weight"])))
                    for v in app.get("args", {}).get("versions", [])]
    return []
