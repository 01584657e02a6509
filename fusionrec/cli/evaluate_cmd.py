"""`fusionrec evaluate`: the protocol's table (design.md section 4), fitted by `fusionrec.train.evaluate`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fusionrec.errors import UserError

if TYPE_CHECKING:
    from fusionrec.spec import DataSpec


def _names(text: str | None, option: str) -> list[str]:
    names = [part.strip() for part in (text or "").split(",") if part.strip()]
    if text is not None and not names:
        raise UserError(f"{option} is empty; give comma-separated values", field=option)
    return names


def _seeds(text: str) -> list[int]:
    try:
        return [int(part) for part in _names(text, "--seeds")]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got {text!r}", field="--seeds",
                        fix="e.g. --seeds 2020,2021,2022") from None


@dataclass(frozen=True)
class Plan:
    """What to evaluate on and with: the data spec, the baselines and their epoch budget (None: by size)."""

    data: DataSpec
    names: list[str]
    epochs: int | None


def plan(manifest: str | None, *, dataset: str | None, data_path: str | None, order: str | None,
         max_users: int | None, only: str | None, epochs: int | None) -> Plan:
    """The manifest's data and evaluation sections (or the defaults), with every option given on the command line
    laid over them. `--dataset` names another source, so it drops the manifest's path and files; the result is
    validated again as a whole, so an override that contradicts the rest fails like a bad manifest would."""
    from pydantic import ValidationError

    from fusionrec.baselines.registry import BASELINES, get_baseline
    from fusionrec.errors import format_validation_error
    from fusionrec.runner.inputs import baselines_of
    from fusionrec.spec import DataSpec, load_manifest

    spec = load_manifest(manifest).spec if manifest else None
    names = _names(only, "--only") or (baselines_of(spec) if spec is not None else list(BASELINES))
    for name in names:
        get_baseline(name)  # an unknown name fails before the data is read
    data: dict[str, Any] = spec.data.model_dump(exclude_unset=True) if spec is not None else {}
    if dataset is not None:
        for source in ("path", "interactions", "items", "users"):
            data.pop(source, None)
        data["dataset"] = dataset
    overrides = {"path": data_path, "order": order, "max_users": max_users}
    data.update({key: value for key, value in overrides.items() if value is not None})
    try:
        data_spec = DataSpec.model_validate(data)
    except ValidationError as exc:
        field, message = format_validation_error(exc, "data")[0]
        raise UserError(f"{field}: {message}", field=f"--{field.rsplit('.', 1)[-1]}") from None
    budget = epochs if epochs is not None else (spec.evaluation.baseline_epochs if spec is not None else None)
    return Plan(data_spec, names, budget)


@click.command()
@click.option("--baselines", "baselines", is_flag=True, help="Evaluate the reference baselines.")
@click.option("-f", "--manifest", type=click.Path(dir_okay=False),
              help="A FusionRecommender manifest: its data (dataset, path, files, order, maxUsers) and evaluation "
                   "(baselines, baselineEpochs) sections; the options below override it.")
@click.option("--only", metavar="NAMES",
              help="Comma-separated baselines to run, e.g. pop,bpr (default: the manifest's, else all).")
@click.option("--seeds", default="2020", show_default=True, metavar="SEEDS", help="Comma-separated model seeds.")
@click.option("--dataset", metavar="NAME",
              help="A prepared dataset (`fusionrec data prepare NAME`), or a built-in: ml-100k (default), ml-1m.")
@click.option("--data-path", type=click.Path(file_okay=False),
              help="A prepared dataset's folder, or a built-in's raw files.")
@click.option("--order", type=click.Choice(["time", "none"]),
              help="time: chronological split (default); none: timestamps carry no order (random per-user order).")
@click.option("--max-users", type=click.IntRange(min=1), help="Use only the first N users (smoke tests).")
@click.option("--baseline-epochs", type=click.IntRange(min=1, max=10_000),
              help="Epoch budget of every trained baseline (default: the manifest's, else by the data's size).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the results here (JSON).")
@click.option("--quick", is_flag=True, help="A few epochs per model: checks the pipeline, not the numbers.")
def evaluate(baselines: bool, manifest: str | None, only: str | None, seeds: str, dataset: str | None,
             data_path: str | None, order: str | None, max_users: int | None, baseline_epochs: int | None,
             json_path: str | None, quick: bool) -> None:
    """Evaluate models on the fixed protocol: leave-one-out full ranking (HR/NDCG/MRR@10) and CTR (AUC, LogLoss).

    \b
    Examples:
      fusionrec evaluate --baselines
      fusionrec evaluate --baselines --only pop,bpr --seeds 2020,2021,2022 --json results.json
      fusionrec evaluate --baselines --dataset ml-1m
      fusionrec evaluate --baselines --dataset shop --order none
      fusionrec evaluate --baselines -f shop.yaml --seeds 2020,2021
    """
    from fusionrec import data as data_module
    from fusionrec.files import atomic_write_json
    from fusionrec.train.evaluate import evaluate_baselines

    if not baselines:
        raise UserError("nothing to evaluate: pass --baselines", field="--baselines",
                        fix="fusionrec evaluate --baselines [--only pop,bpr]")
    chosen = plan(manifest, dataset=dataset, data_path=data_path, order=order, max_users=max_users, only=only,
                  epochs=baseline_epochs)
    seed_list = _seeds(seeds)
    loaded = data_module.load_dataset(chosen.data)
    results = evaluate_baselines(loaded, chosen.names, seed_list, quick=quick, order=chosen.data.order,
                                 epochs=chosen.epochs)
    click.echo(results.render())
    if json_path:
        atomic_write_json(Path(json_path), results.to_json())
        click.echo(f"wrote {json_path}")
