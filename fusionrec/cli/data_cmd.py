"""`fusionrec data ...`: prepare datasets."""

from __future__ import annotations

import json

import click


def _parse_mapping(pairs: tuple[str, ...]):
    """`--map user_id=customer --map rating=` -> ColumnMapping (an empty right side means "no such column")."""
    from fusionrec.errors import UserError
    from fusionrec.spec import ColumnMapping

    fields = list(ColumnMapping.model_fields)
    values: dict[str, str | None] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            raise UserError(f"--map {pair!r}: expected FIELD=COLUMN with FIELD one of {', '.join(fields)}",
                            field="--map")
        if not value.strip() and key in ("user_id", "item_id", "timestamp"):
            raise UserError(f"--map {pair!r}: {key} is required and needs a column name", field="--map")
        values[key] = value.strip() or None
    return ColumnMapping(**values)


@click.group()
def data() -> None:
    """Prepare datasets: find, read, validate, write Parquet, print a data card.

    \b
    Examples:
      fusionrec data prepare ml-100k
      fusionrec data prepare --interactions events.csv --items items.csv --map user_id=uid --json
    """


@data.command()
@click.argument("name", required=False)
@click.option("--path", type=click.Path(), help="ml-100k: folder with atomic files or u.data, or a recbole wheel.")
@click.option("--out", type=click.Path(), help="Output folder (default: $FUSIONREC_DATA_HOME/<name>).")
@click.option("--interactions", type=click.Path(), help="A shop's interactions file (CSV, Parquet, atomic).")
@click.option("--items", type=click.Path(), help="Items file with text fields, keyed by item id.")
@click.option("--users", type=click.Path(), help="Optional users file with features, keyed by user id.")
@click.option("--format", "fmt", type=click.Choice(["auto", "csv", "parquet", "atomic", "movielens"]),
              default="auto", show_default=True)
@click.option("--delimiter", default=",", show_default=True, help="CSV field delimiter (e.g. ';' or '\\t').")
@click.option("--encoding", default="utf-8", show_default=True, help="Text encoding of CSV files.")
@click.option("--map", "mappings", multiple=True, metavar="FIELD=COLUMN",
              help="Map a contract field to your column, e.g. --map user_id=customer (repeatable).")
@click.option("--template", default=None, help="Item text template, e.g. '{title}. Genres: {genres}'.")
@click.option("--no-download", is_flag=True, help="ml-100k: fail instead of fetching the recbole wheel.")
@click.option("--json", "as_json", is_flag=True, help="Print the data card as JSON.")
def prepare(name: str | None, path: str | None, out: str | None, interactions: str | None, items: str | None,
            users: str | None, fmt: str, delimiter: str, encoding: str, mappings: tuple[str, ...],
            template: str | None, no_download: bool, as_json: bool) -> None:
    """Validate a dataset, write it as Parquet and print its data card.

    \b
    Examples:
      fusionrec data prepare ml-100k
      fusionrec data prepare ml-100k --path ./recbole-1.2.1-py3-none-any.whl
      fusionrec data prepare shop --interactions orders.csv --items products.csv \\
          --delimiter ';' --encoding latin-1 --map user_id=customer --map rating=
    """
    from fusionrec.data import prepare as prep
    from fusionrec.data.text import DEFAULT_TEMPLATE
    from fusionrec.errors import UserError

    template = template or DEFAULT_TEMPLATE
    delimiter = "\t" if delimiter in ("\\t", "tab") else delimiter
    if interactions:
        if name == "ml-100k":
            raise UserError("ml-100k is the built-in dataset's name; give your export another name",
                            field="name", fix="e.g. `fusionrec data prepare shop --interactions ...`")
        _, card = prep.prepare_files(interactions, items, users, name=name or "custom", out=out, format=fmt,
                                     delimiter=delimiter, encoding=encoding, columns=_parse_mapping(mappings),
                                     template=template)
    elif name == "ml-100k":
        if items or users or mappings:
            raise UserError("--items/--users/--map describe a shop's files; ml-100k takes only --path",
                            field="--items")
        _, card = prep.prepare_ml100k(path, out, template=template, download=not no_download)
    else:
        raise UserError(f"unknown dataset {name!r}" if name else "nothing to prepare", field="name",
                        fix="use `fusionrec data prepare ml-100k` or pass --interactions FILE [--items FILE]")
    click.echo(json.dumps(card.to_dict(), indent=2) if as_json else card.render())
