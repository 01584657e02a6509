"""What a run tells its user: the steps and their status, the quality table (with what shipped and why, or a
warning when one encoder alone validated better than the shipped fused model), the rollout, the endpoint and a
sample recommendation, as text for people and as one JSON document for machines (`fusionrec run --json`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fusionrec.protocol import quality_table, selection_note
from fusionrec.runner.local_rollout import RolloutResult
from fusionrec.runner.steps import StepResult


@dataclass
class RunReport:
    """Filled in as the run goes, so a failed run still reports the steps it got through."""

    name: str
    version: str
    artifact: str | None = None
    steps: list[StepResult] = field(default_factory=list)
    comparison: dict[str, Any] | None = None
    endpoint: str | None = None
    serving: str | None = None  # "running" | "stopped" | None (not served)
    served_version: str | None = None
    sample: dict[str, Any] | None = None
    latency: dict[str, Any] | None = None
    rollout: RolloutResult | None = None
    error: str | None = None
    storage: str | None = None  # spec.storage.uri when it is object storage (the run builds in a local folder)
    published: str | None = None  # the version's URI there, once published (or found published)

    @property
    def rolled_back(self) -> bool:
        return self.rollout is not None and not self.rollout.promoted

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "version": self.version, "artifact": self.artifact, "published": self.published,
            "steps": [step.to_json() for step in self.steps],
            "quality": self.comparison,
            "rollout": self.rollout.to_json() if self.rollout else None,
            "endpoint": self.endpoint, "serving": self.serving, "served_version": self.served_version,
            "latency": _latency_summary(self.latency),
            "sample": self.sample, "error": self.error,
        }

    def render(self) -> str:
        lines = [f"{self.name} {self.version}" + (f" -> {self.artifact}" if self.artifact else "")]
        width = max((len(s.name) for s in self.steps), default=4)
        for step in self.steps:
            lines.append(f"  {step.status:<6}  {step.name:<{width}}  {step.seconds:7.1f}s")
        if self.comparison:
            lines += ["", quality_table(self.comparison)]
            note = selection_note(self.comparison)  # what shipped and why, or that a single validated better
            if note:
                lines.append(note)
        if self.rollout is not None:
            walked = ", ".join(f"{s['weights'][self.rollout.candidate]}% {s['verdict']}" for s in self.rollout.steps)
            lines += ["", f"rollout {self.rollout.stable} -> {self.rollout.candidate}: {self.rollout.outcome}"
                          + (f" ({walked})" if walked else "")]
            if self.rolled_back and self.rollout.steps:
                last = self.rollout.steps[-1]
                cause = f"{last['reason']}: " if last.get("reason") else ""
                lines.append(f"  why: {cause}{last['message']}")
        summary = _latency_summary(self.latency)
        if summary:
            lines += ["", f"latency: {summary['requests']} sequential requests, p50 {summary['p50_ms']:.1f} ms, "
                          f"p99 {summary['p99_ms']:.1f} ms ({summary['failed']} failed)"]
        if self.endpoint:
            note = "serving; Ctrl-C stops it" if self.serving == "running" else \
                "stopped at the end of the run; pass --keep-serving to keep it up"
            lines += ["", f"endpoint: {self.endpoint}/v1/recommend  ({note})"]
        if self.sample:
            lines.append(f"sample: user {self.sample['user_id']}, top {len(self.sample['items'])} "
                         f"(model {self.sample['model_version']}):")
            for rank, item in enumerate(self.sample["items"], 1):
                lines.append(f"  {rank}. {item.get('title') or item['item_id']}  (item {item['item_id']}, "
                             f"score {item['score']:.3f})")
        if self.error:
            lines += ["", f"error: {self.error}"]
        return "\n".join(lines)


def _latency_summary(latency: dict[str, Any] | None) -> dict[str, Any] | None:
    if not latency or not latency.get("latencies_ms"):
        return None
    values = np.asarray(latency["latencies_ms"], dtype=np.float64)
    return {"requests": latency["requests"], "failed": latency.get("failed", 0),
            "p50_ms": round(float(np.percentile(values, 50)), 2), "p99_ms": round(float(np.percentile(values, 99)), 2),
            "endpoint": latency["endpoint"], "when": latency["when"]}
