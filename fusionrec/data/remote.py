"""`data.path` in object storage (s3://bucket/prefix/<folder>, gs://...): fetched once into the data cache, then
read exactly as a local folder (so are data.interactions, items and users given as URIs of single files).

Every reader below opens files on disk (pandas, the Parquet and atomic-file readers, the built-ins' raw files), and
the folder is read again by every Ray worker and by the driver, so the folder is copied, not streamed:
`fusionrec.storage.local_copy` fetches a published version (`fusionrec data push`, `publish_folder`) checked
against its manifest, or copies a folder uploaded with other tools and records what it copied, into
`$FUSIONREC_DATA_HOME/.fetched/`. A later load re-uses the copy while it still matches what is in storage.
Credentials and the endpoint come from the environment only (AWS_*, GOOGLE_APPLICATION_CREDENTIALS).
"""

from __future__ import annotations

from pathlib import Path

from fusionrec.data.datasets import data_home
from fusionrec.errors import UserError
from fusionrec.spec import DataSpec

FETCHED = ".fetched"  # under the data home; hidden, so never a dataset name (prepared folders lie beside it)


def fetched_home() -> Path:
    """Where copies of data in object storage are kept: `<data home>/.fetched`."""
    return data_home() / FETCHED


def local_data(spec: DataSpec) -> DataSpec:
    """`spec` with every location in object storage (data.path, and data.interactions, items or users given as
    URIs of single files) replaced by its local copy, fetched when missing or stale; any other spec as it is.

    Raises:
        UserError: naming the field and the fix: no credentials, nothing at the URI, an unfinished or altered
            publish, a pickled file.
        StorageError: a transfer failed (a retry may succeed); its text names the field.
    """
    from fusionrec.storage import is_remote

    updates = {field: str(_fetched(value, f"spec.data.{field}"))
               for field in ("path", "interactions", "items", "users")
               if (value := getattr(spec, field)) and is_remote(value)}
    return spec.model_copy(update=updates) if updates else spec


def _fetched(uri: str, field: str) -> Path:
    from fusionrec.storage import StorageError, local_copy, shown_uri

    try:
        return local_copy(uri, fetched_home())
    except UserError as exc:
        raise UserError(f"{shown_uri(uri)}: {exc.message}", field=field,
                        fix=exc.fix or "give the folder `fusionrec data push` published (or one uploaded whole)") \
            from None
    except StorageError as exc:
        raise StorageError(f"fetching {field}: {exc}", not_found=exc.not_found) from None
