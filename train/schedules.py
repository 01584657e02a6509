"""Learning-rate schedules: a linear warm-up, then linear or cosine decay to zero, or a constant rate.

A schedule is a picklable callable (step -> multiplier of each group's base rate) for `LambdaLR`, so the
scheduler's state in a checkpoint is just its step count and a resumed run follows the same curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

ScheduleKind = Literal["linear", "cosine", "constant"]


@dataclass(frozen=True)
class WarmupDecay:
    """Multiplier at optimizer step `step` (0-based).

    kind: "linear" or "cosine" decay to 0 at `total_steps`, or "constant" after the warm-up.
    total_steps: optimizer steps of the whole run (epochs x steps per epoch).
    warmup_steps: steps of the linear ramp from ~0 to 1; 0 starts at the full rate.
    """

    kind: ScheduleKind
    total_steps: int
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "cosine", "constant"):
            raise ValueError(f"lr_schedule must be linear, cosine or constant, got {self.kind!r}")
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps={self.total_steps}], got {self.warmup_steps}")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)  # never exactly 0: the first step still moves
        if self.kind == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        if self.kind == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps(total_steps: int, ratio: float) -> int:
    """Warm-up length for `training.warmupRatio` of a run of `total_steps` optimizer steps."""
    if not 0 <= ratio < 1:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {ratio}")
    return int(round(total_steps * ratio))
