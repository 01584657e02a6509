"""`fusionrec evaluate`: the protocol's table (design.md section 4), fitted by `fusionrec.train.evaluate`."""

from __future__ import annotations

from pathlib import Path

import click

from fusionrec.errors import UserError


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


@click.command()
@click.option("--baselines", "baselines", is_flag=True, help="Evaluate the reference baselines.")
@click.option("--only", metavar="NAMES", help="Comma-separated baselines to run (default: all), e.g. pop,bpr.")
@click.option("--seeds", default="2020", show_default=True, metavar="SEEDS", help="Comma-separated model seeds.")
@click.option("--dataset", default="ml-100k", show_default=True, type=click.Choice(["ml-100k"]),
              help="Built-in dataset.")
@click.option("--data-path", type=click.Path(file_okay=False), help="Folder holding the dataset's files.")
@click.option("--max-users", type=click.IntRange(min=1), help="Use only the first N users (smoke tests).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the results here (JSON).")
@click.option("--quick", is_flag=True, help="A few epochs per model: checks the pipeline, not the numbers.")
def evaluate(baselines: bool, only: str | None, seeds: str, dataset: str, data_path: str | None,
             max_users: int | None, json_path: str | None, quick: bool) -> None:
    """Evaluate models on the fixed protocol: leave-one-out full ranking (HR/NDCG/MRR@10) and CTR (AUC, LogLoss).

    \b
    Examples:
      fusionrec evaluate --baselines
      fusionrec evaluate --baselines --only pop,bpr --seeds 2020,2021,2022 --json results.json
    """
    from fusionrec.baselines.registry import BASELINES, get_baseline
    from fusionrec.data import load_dataset
    from fusionrec.files import atomic_write_json
    from fusionrec.spec import DataSpec
    from fusionrec.train.evaluate import evaluate_baselines

    if not baselines:
        raise UserError("nothing to evaluate: pass --baselines", field="--baselines",
                        fix="fusionrec evaluate --baselines [--only pop,bpr]")
    names = _names(only, "--only") or list(BASELINES)
    for name in names:
        get_baseline(name)  # an unknown name fails before the data is read
    seed_list = _seeds(seeds)
    data = load_dataset(DataSpec(dataset=dataset, path=data_path, max_users=max_users))
    results = evaluate_baselines(data, names, seed_list, quick=quick)
    click.echo(results.render())
    if json_path:
        atomic_write_json(Path(json_path), results.to_json())
        click.echo(f"wrote {json_path}")
