"""Re-fusion on new data: the spec's base dataset + the feedback events + the live catalogue, as a new prepared
dataset that `fusionrec retrain` (and the operator's scheduled RayJob, `python -m fusionrec.train --refresh`)
trains on through the usual data path.

What goes in:

- every base interaction, in its file order;
- one interaction per (user, item) pair that clicks, purchases and ratings add (`EVENT_INTERACTIONS`), at the
  time of its first event. Impressions are not interactions: being shown an item says nothing of wanting it.
  A pair the base data already holds is skipped (counted as a repeat): the protocol's full ranking excludes
  items the user has seen, so a repeat could be held out for testing while it sits in the user's history;
- the catalogue: base items, then the live upserts (`PUT /v1/items`). An upsert replaces the item's fields
  as a whole, as serving renders it; a new item is appended. Retired items stay (their history is training data)
  and are listed in the card's `refresh.retired`: the live log already retires them in every served version.

How the label columns are filled, so each task reads the events as it reads the base data:

- `rating` (when the base has the column): a rating event's value; a click or purchase gets `IMPLICIT_RATING`
  (4.0): the ctr task labels `rating >= 4` positive (`fusionrec.data.splits.random_split`), so an implicit
  positive is a positive there; the ranking task reads every interaction as a positive whatever its rating.
- `label` (when the base has one): 1 for a click or purchase, `rating >= 4` for a rating.
- task `rating` regresses the rating value, which a click does not have: only rating events are added there
  (the others are counted as `implicit_skipped`).

Events naming an item that neither the base catalogue nor the live catalogue holds cannot be trained on (the
item has no text and no id in the vocabulary): they are dropped and counted. New users are fine.

The result is published (`fusionrec.storage.publish_folder`: verified, PUBLISHED marker last) to
`<live>/datasets/<base name>-live-<content hash>`, where every Ray worker of the training reads it (local folder,
pvc mount, s3://, gs://). The hash covers everything that went in, so a re-run with no new events or item
changes finds it published and reuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fusionrec.data.prepare import (
    CARD_FILE,
    is_prepared_folder,
    prepared_dir,
    read_card,
    write_prepared,
)
from fusionrec.data.schema import ITEM, LABEL, RATING, TIME, USER, Dataset
from fusionrec.data.text import DEFAULT_TEMPLATE, TEXT
from fusionrec.errors import UserError
from fusionrec.spec import DataSpec, Manifest, manifest_from_dict

log = logging.getLogger(__name__)

DATASETS_FOLDER = "datasets"  # under the live URI, beside items/ and events/
EVENT_INTERACTIONS = ("click", "purchase", "rating")
IMPLICIT = ("click", "purchase")
IMPLICIT_RATING = 4.0  # the ctr task's positive threshold (random_split's positive_threshold): a click is a positive
REFRESH_FORMAT = 1  # bump when what a refresh writes changes, so an old folder is not reused for new rules
_NAME_BASE_MAX = 40  # + "-live-" + 16 hex = 62, within a dataset name's 64 characters
EVENT_COLUMNS = ("event_id", "user_id", "item_id", "type", "value", "timestamp")


@dataclass(frozen=True)
class LiveData:
    """What serving recorded: the feedback events and the live catalogue's changes."""

    events: pd.DataFrame
    upserted: pd.DataFrame  # item_id + field columns
    retired: frozenset[str]


def read_live(uri: str) -> LiveData:
    """The events and item changes under a live URI (`fusionrec.data.feedback`, which needs no serving extra)."""
    from fusionrec.data.feedback import read_events, read_live_items

    events = read_events(uri)
    upserted, retired = read_live_items(uri)
    return LiveData(events, upserted, frozenset(str(r) for r in retired))


@dataclass
class RefreshSummary:
    """What a refresh read and what it added, for the log and the card."""

    events: dict[str, int] = field(default_factory=dict)  # read, by type (impressions included)
    interactions_added: int = 0
    new_users: int = 0
    new_items: int = 0
    updated_items: int = 0
    retired_items: int = 0
    dropped_unknown_items: int = 0  # events naming an item no catalogue holds
    repeats_skipped: int = 0  # (user, item) pairs the base data already holds
    implicit_skipped: int = 0  # clicks and purchases under task rating

    @property
    def events_read(self) -> int:
        return sum(self.events.values())

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def render(self) -> str:
        by_type = ", ".join(f"{n} {t}" for t, n in sorted(self.events.items())) or "none"
        lines = [f"events read      {self.events_read} ({by_type})",
                 f"interactions     +{self.interactions_added} ({self.new_users} new users)",
                 f"catalogue        +{self.new_items} new items, {self.updated_items} updated, "
                 f"{self.retired_items} retired (kept for history, retired in serving)"]
        skipped = []
        if self.dropped_unknown_items:
            skipped.append(f"{self.dropped_unknown_items} events on unknown items dropped")
        if self.repeats_skipped:
            skipped.append(f"{self.repeats_skipped} pairs already in the base data")
        if self.implicit_skipped:
            skipped.append(f"{self.implicit_skipped} clicks/purchases (task rating reads ratings only)")
        if skipped:
            lines.append("skipped          " + "; ".join(skipped))
        return "\n".join(lines)


@dataclass(frozen=True)
class Refreshed:
    """The refreshed dataset: its name, where it is published, and whether an earlier refresh already made it."""

    name: str
    uri: str
    digest: str
    summary: RefreshSummary
    reused: bool

    def data_spec(self, base: DataSpec) -> DataSpec:
        """`base` pointing at the refreshed dataset; its order, template and max_users are kept (the template is
        also the card's, so leaving it unset reads the same text)."""
        return DataSpec(dataset=self.name, path=self.uri, order=base.order,
                        item_text_template=base.item_text_template, max_users=base.max_users)


def refresh(data: DataSpec, task: str, live_uri: str, live: LiveData | None = None) -> Refreshed:
    """Build (or find already published) the dataset `data` + the live URI's events and catalogue.

    Raises:
        UserError: the base data cannot be read, or nothing would be left to train on.
        StorageError: reading the live URI or publishing failed (a retry may succeed).
    """
    from fusionrec.data import load_dataset

    live = read_live(live_uri) if live is None else live
    base = load_dataset(data.model_copy(update={"max_users": None}))
    template, timestamps = _base_card(data)
    merged, summary = merge_live(base, live, task, timestamps=timestamps)
    digest = content_digest(base, live, task, template, timestamps)
    name = refreshed_name(base.name, digest)
    root = f"{live_uri.rstrip('/')}/{DATASETS_FOLDER}"
    target = f"{root}/{name}"
    reused = _published(target)
    if not reused:
        reused = _write(Dataset(name, merged.interactions, merged.items, merged.users), root, target, template,
                        timestamps, {"base": base.name, "live": live_uri, "digest": digest,
                                     "summary": summary.to_json(), "retired": sorted(live.retired)})
    log.info("%s %s", "reused" if reused else "published", target)
    return Refreshed(name, target, digest, summary, reused)


def refreshed_manifest(manifest: Manifest, refreshed: Refreshed, *, version: str | None = None,
                       live_uri: str | None = None) -> Manifest:
    """`manifest` training on the refreshed dataset (and, when given, as `version` and serving with `live_uri`),
    validated again as any manifest is."""
    raw = manifest.model_dump(by_alias=True, mode="json")
    spec = raw["spec"]
    spec["data"] = refreshed.data_spec(manifest.spec.data).model_dump(by_alias=True, mode="json")
    if version is not None:
        spec["version"] = version
    if live_uri is not None:
        spec["serving"]["live"]["uri"] = live_uri
    return manifest_from_dict(raw, source=f"{manifest.metadata.name} on {refreshed.name}")


def merge_live(base: Dataset, live: LiveData, task: str, *, timestamps: bool = True) -> tuple[Dataset, RefreshSummary]:
    """The base dataset with the live catalogue and the events' interactions (see the module's rules)."""
    summary = RefreshSummary()
    items, summary.new_items, summary.updated_items = _catalogue(base.items, live.upserted)
    catalogue = set(items[ITEM])
    summary.retired_items = len(live.retired & catalogue)
    events = _events(live.events)
    summary.events = {str(k): int(v) for k, v in Counter(events["type"]).items()}
    events = events[events["type"].isin(EVENT_INTERACTIONS)]
    if task == "rating":
        implicit = events["type"].isin(IMPLICIT)
        summary.implicit_skipped = int(implicit.sum())
        events = events[~implicit]
    known = events[ITEM].isin(catalogue)
    summary.dropped_unknown_items = int((~known).sum())
    added = _interactions(events[known], base.interactions, timestamps)
    pairs = pd.MultiIndex.from_frame(base.interactions[[USER, ITEM]].astype(str))
    repeat = pd.MultiIndex.from_frame(added[[USER, ITEM]]).isin(pairs)
    summary.repeats_skipped = int(repeat.sum())
    added = added[~repeat]
    summary.interactions_added = len(added)
    summary.new_users = int((~added[USER].drop_duplicates().isin(set(base.interactions[USER].astype(str)))).sum())
    interactions = pd.concat([base.interactions, added], ignore_index=True) if len(added) else base.interactions
    return Dataset(base.name, interactions, items, base.users), summary


def _events(events: pd.DataFrame) -> pd.DataFrame:
    """The columns a refresh reads, typed, in time order (ties by event id, so the result never depends on the
    order segments were listed in)."""
    missing = [c for c in EVENT_COLUMNS if c not in events.columns]
    if missing and events.empty:  # no segment yet: nothing to type
        return pd.DataFrame({c: pd.Series(dtype=np.int64 if c == TIME else np.float64 if c == "value" else object)
                             for c in EVENT_COLUMNS})
    if missing:
        raise UserError(f"the feedback events have no {', '.join(missing)} column", field="serving.live.uri",
                        fix="point serving.live.uri (or --live) at the folder POST /v1/events writes")
    frame = events.loc[:, list(EVENT_COLUMNS)].copy()
    for column in ("event_id", USER, ITEM, "type"):
        frame[column] = frame[column].astype(str)
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce").astype(np.float64)
    frame[TIME] = pd.to_numeric(frame[TIME], errors="coerce").fillna(0).astype(np.int64)
    return frame.sort_values([TIME, "event_id"], kind="stable").reset_index(drop=True)


def _interactions(events: pd.DataFrame, like: pd.DataFrame, timestamps: bool) -> pd.DataFrame:
    """One row per (user, item): the first event's time, the last rating's value (else IMPLICIT_RATING), in the
    base interactions' columns and types."""
    columns = list(like.columns)
    if events.empty:
        return like.iloc[0:0].astype({USER: object, ITEM: object})
    first = events.groupby([USER, ITEM], sort=False)[TIME].min().reset_index()
    rated = events[events["type"] == "rating"].dropna(subset=["value"])
    last_rating = rated.groupby([USER, ITEM], sort=False)["value"].last().reset_index()
    frame = first.merge(last_rating, on=[USER, ITEM], how="left")
    value = frame["value"]
    times = frame[TIME].to_numpy(dtype=np.int64) if timestamps else np.zeros(len(frame), np.int64)
    rows: dict[str, Any] = {USER: frame[USER].to_numpy(dtype=object), ITEM: frame[ITEM].to_numpy(dtype=object),
                            TIME: times}
    if RATING in columns:
        rows[RATING] = value.fillna(IMPLICIT_RATING).to_numpy(dtype=np.float64)
    if LABEL in columns:
        rows[LABEL] = np.where(value.isna(), 1, value >= IMPLICIT_RATING).astype(like[LABEL].dtype)
    out = pd.DataFrame(rows)
    for column in columns:
        if column not in out:  # a column this project does not read: left missing for the new rows
            out[column] = pd.Series([pd.NA] * len(out), dtype=like[column].dtype if len(like) else object)
    out = out.sort_values(TIME, kind="stable").reset_index(drop=True)
    return out[columns].astype({TIME: like[TIME].dtype}) if TIME in like else out[columns]


def _catalogue(items: pd.DataFrame, upserted: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """Base items with the upserts applied (a whole row replaced; new items appended); (items, new, updated)."""
    items = items.drop(columns=[TEXT], errors="ignore").assign(**{ITEM: items[ITEM].astype(str)})
    if upserted is None or upserted.empty:
        return items, 0, 0
    if ITEM not in upserted.columns:
        raise UserError("the live catalogue has no item_id column", field="serving.live.uri",
                        fix="point serving.live.uri (or --live) at the folder PUT /v1/items writes")
    live = upserted.drop(columns=[TEXT], errors="ignore").assign(**{ITEM: upserted[ITEM].astype(str)})
    live = live.drop_duplicates(ITEM, keep="last")
    known = set(items[ITEM])
    new = int((~live[ITEM].isin(known)).sum())
    order = list(items[ITEM]) + [i for i in live[ITEM] if i not in known]
    merged = pd.concat([items[~items[ITEM].isin(set(live[ITEM]))], live], ignore_index=True)
    merged = merged.set_index(ITEM).loc[order].reset_index()
    for column in merged.columns:
        if column != ITEM:
            merged[column] = _storable(merged[column])
    return merged, new, len(live) - new


def _storable(column: pd.Series) -> pd.Series:
    """A field column Parquet can store: a base `year` of ints and an upsert's "1999" make a mixed column, written
    as text (whole floats without ".0", lists joined) so the rendered item text reads the same."""
    import pyarrow as pa

    try:
        pa.array(column, from_pandas=True)
        return column
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return column.map(_as_text).astype(object)


def _as_text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(str(v) for v in value)
    return str(value)


def content_digest(base: Dataset, live: LiveData, task: str, template: str, timestamps: bool) -> str:
    """sha256 of everything a refresh reads: equal inputs name the same folder, so a re-run reuses it."""
    digest = hashlib.sha256(json.dumps({"format": REFRESH_FORMAT, "task": "rating" if task == "rating" else "any",
                                        "template": template, "timestamps": timestamps, "name": base.name,
                                        "retired": sorted(live.retired)}).encode())
    for frame in (base.interactions, base.items.drop(columns=[TEXT], errors="ignore"), base.users,
                  _events(live.events), live.upserted):
        _update(digest, frame)
    return digest.hexdigest()


def _update(digest: Any, frame: pd.DataFrame | None) -> None:
    if frame is None:
        digest.update(b"none\0")
        return
    frame = frame.reset_index(drop=True)
    digest.update(json.dumps([[str(c), str(t)] for c, t in frame.dtypes.items()]).encode())
    for column in frame.columns:
        values = frame[column]
        if values.dtype == object and pd.api.types.infer_dtype(values, skipna=True) not in ("string", "empty"):
            values = values.map(lambda v: json.dumps(v.tolist() if isinstance(v, np.ndarray) else v, default=str))
        digest.update(pd.util.hash_pandas_object(values, index=False).to_numpy().tobytes())


def refreshed_name(base_name: str, digest: str) -> str:
    return f"{base_name[:_NAME_BASE_MAX]}-live-{digest[:16]}"


def _base_card(data: DataSpec) -> tuple[str, bool]:
    """(the item text template the base data reads with, whether it has timestamps): the spec's template, else
    the prepared card's, as `load_dataset` chooses."""
    from fusionrec.data.remote import local_data

    local = local_data(data)
    folder: Path | None = None
    if local.interactions:
        candidate = (Path(local.path) if local.path else Path()) / local.interactions
        folder = candidate.parent if is_prepared_folder(candidate.parent) else None
    elif local.path:
        folder = Path(local.path) if is_prepared_folder(local.path) else None
    elif local.dataset:
        folder = prepared_dir(local.dataset)
    card = read_card(folder) if folder is not None else {}
    template = local.item_text_template or card.get("template") or DEFAULT_TEMPLATE
    return str(template), card.get("timestamps") is not False


def _published(uri: str) -> bool:
    from fusionrec.storage import is_published

    return is_published(uri)


def _write(dataset: Dataset, root: str, target: str, template: str, timestamps: bool, refresh_card: dict) -> bool:
    """Write the dataset prepared in a local temporary folder, then publish it; True when a concurrent refresh
    published the same content first."""
    from fusionrec.storage import publish_folder

    with tempfile.TemporaryDirectory(prefix=".fusionrec-refresh-") as scratch:
        folder = Path(scratch) / dataset.name
        write_prepared(dataset, folder, template, source=f"{refresh_card['base']} + {refresh_card['live']}",
                       timestamps=timestamps)
        card = read_card(folder)
        card.update(location=target, refresh=refresh_card)
        (folder / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        try:
            publish_folder(folder, root, name=dataset.name)
        except UserError:
            if _published(target):  # the same inputs, published by another run meanwhile
                return True
            raise
    return False


__all__ = ["DATASETS_FOLDER", "IMPLICIT_RATING", "LiveData", "RefreshSummary", "Refreshed", "merge_live", "read_live",
           "refresh", "refreshed_manifest", "refreshed_name"]
