"""Read the children's status (KubeRay RayJob and RayService) into small typed observations; pure."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fusionrec.operator import consts


class JobState(StrEnum):
    RUNNING = "Running"  # anything not finished: New, Initializing, Running, Retrying, Waiting...
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class JobObservation:
    state: JobState
    message: str


# KubeRay v1: jobStatus is Ray's (PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED); jobDeploymentStatus is
# KubeRay's own lifecycle (New, Initializing, Running, Complete, Failed, ValidationFailed, ...).
_FAILED_JOB = {"FAILED", "STOPPED"}
_FAILED_DEPLOYMENT = {"Failed", "ValidationFailed"}


def observe_rayjob(rayjob: dict[str, Any]) -> JobObservation:
    status = rayjob.get("status") or {}
    job = status.get("jobStatus") or "PENDING"
    deployment = status.get("jobDeploymentStatus") or "New"
    detail = ": ".join(x for x in (status.get("reason"), status.get("message")) if x)
    summary = f"jobDeploymentStatus {deployment}, jobStatus {job}" + (f" ({detail})" if detail else "")
    if job == "SUCCEEDED":
        return JobObservation(JobState.SUCCEEDED, summary)
    if job in _FAILED_JOB or deployment in _FAILED_DEPLOYMENT:
        return JobObservation(JobState.FAILED, summary)
    return JobObservation(JobState.RUNNING, summary)


@dataclass(frozen=True)
class ServiceObservation:
    ready: bool
    starting: bool  # not ready yet because it has not come up, rather than because it broke
    message: str


def observe_rayservice(rayservice: dict[str, Any]) -> ServiceObservation:
    """KubeRay >= 1.3 reports a `Ready` condition; older ones only the deprecated `serviceStatus`."""
    status = rayservice.get("status") or {}
    apps = (status.get("activeServiceStatus") or {}).get("applicationStatuses") or {}
    app = apps.get(consts.SERVE_APP_NAME) or {}
    app_text = f"; application {consts.SERVE_APP_NAME} is {app['status']}" if app.get("status") else ""
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready is not None:
        why = f"{ready.get('reason', '')}: {ready.get('message', '')}"
        text = f"RayService Ready={ready.get('status')} ({why}){app_text}"
        if ready.get("status") == "True":
            return ServiceObservation(True, False, text)
        return ServiceObservation(False, ready.get("reason") in (None, "", "Initializing"), text)
    if status.get("serviceStatus") == "Running":
        return ServiceObservation(True, False, f"RayService serviceStatus Running{app_text}")
    return ServiceObservation(False, True, f"RayService has not reported readiness yet{app_text}")
