"""Training checkpoints: weights as safetensors, the rest (optimizer, scheduler, RNG states, progress) as a
tensors-and-plain-values file read back with `torch.load(weights_only=True)`, so loading a checkpoint never
runs pickled code.

Only what training can change is stored: a frozen LM's weights come back from its source when the model is
rebuilt, which keeps a checkpoint of a fused model with two frozen 100M-parameter encoders a few megabytes.
A checkpoint folder is written beside its final place and renamed in, so a crash mid-write leaves the
previous checkpoint whole.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from fusionrec.artifact import save_tensors
from fusionrec.errors import UserError

WEIGHTS = "model.safetensors"
BEST = "best.safetensors"
STATE = "trainer_state.pt"
LATEST = "latest"


def mutable_state(model: nn.Module) -> dict[str, Tensor]:
    """The model's state_dict without frozen parameters (detached, cloned: it must not follow training)."""
    frozen = {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    return {key: value.detach().clone() for key, value in model.state_dict().items() if key not in frozen}


def load_mutable_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load a `mutable_state`; every trainable parameter and persistent buffer must be in it."""
    expected = set(mutable_state_keys(model))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - set(model.state_dict()))
    if missing or unexpected:
        raise UserError(f"checkpoint does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}",
                        fix="resume with the same spec that wrote the checkpoint, or start without resume")
    model.load_state_dict(state, strict=False)


def mutable_state_keys(model: nn.Module) -> list[str]:
    frozen = {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    return [key for key in model.state_dict() if key not in frozen]


@dataclass
class Checkpoint:
    folder: Path
    model: dict[str, Tensor]
    best: dict[str, Tensor]
    state: dict[str, Any]


def save_checkpoint(root: Path, model_state: dict[str, Tensor], best_state: dict[str, Tensor],
                    trainer_state: dict[str, Any]) -> Path:
    """Write `<root>/latest/` atomically (built in a temp folder, then swapped in); returns its path."""
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-checkpoint-", dir=root))
    try:
        save_tensors(model_state, staging / WEIGHTS)
        save_tensors(best_state, staging / BEST)
        torch.save(trainer_state, staging / STATE)
        target = root / LATEST
        aside = None
        if target.exists():
            aside = Path(tempfile.mkdtemp(prefix=".old-checkpoint-", dir=root))
            os.rename(target, aside / LATEST)
        os.rename(staging, target)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def load_checkpoint(root: Path, device: torch.device | str = "cpu") -> Checkpoint | None:
    """The latest checkpoint under `root`, or None when there is none."""
    folder = Path(root) / LATEST
    if not (folder / STATE).is_file():
        return None
    for name in (WEIGHTS, BEST):
        if not (folder / name).is_file():
            raise UserError(f"checkpoint {folder} is incomplete: {name} is missing",
                            fix="delete the folder to start over")
    state = torch.load(folder / STATE, map_location=device, weights_only=True)
    return Checkpoint(folder=folder, model=load_file(folder / WEIGHTS, device=str(device)),
                      best=load_file(folder / BEST, device=str(device)), state=state)
