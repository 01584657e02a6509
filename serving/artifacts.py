"""Where a served version's artifact is read from: a local folder (a path or file:///path) as it is, or a version
published to object storage (s3://bucket/prefix/<version>, gs://...) fetched into a local cache first.

The fetch is `fusionrec.storage.fetch_folder`: a version without its PUBLISHED marker (an upload that never
finished) is refused, every file is checked against the published manifest, and the copy is renamed into place
only when all of it matched, so a replica never loads half a version. The cache folder is keyed by the URI
(`<cache>/<sha256 of the uri>/<version>/`); a copy already there that still matches is used without downloading,
so replicas restarting on the same node fetch once; replicas starting together on one node take turns (a file
lock per URI), so none replaces the folder another is loading. Credentials and the endpoint come from the environment
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_S3; GOOGLE_APPLICATION_CREDENTIALS).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path

from fusionrec.errors import UserError
from fusionrec.storage import StorageError, fetch_folder

ARTIFACT_CACHE_ENV = "FUSIONREC_ARTIFACT_CACHE"
CACHE_ENV = "FUSIONREC_CACHE"


def artifact_cache_dir() -> Path:
    """`$FUSIONREC_ARTIFACT_CACHE`, else `$FUSIONREC_CACHE/artifacts`, else `~/.cache/fusionrec/artifacts`."""
    if os.environ.get(ARTIFACT_CACHE_ENV):
        return Path(os.environ[ARTIFACT_CACHE_ENV]).expanduser()
    base = Path(os.environ[CACHE_ENV]).expanduser() if os.environ.get(CACHE_ENV) else \
        Path.home() / ".cache" / "fusionrec"
    return base / "artifacts"


def is_remote(location: str | os.PathLike[str]) -> bool:
    """Whether an artifact location is in object storage (any `scheme://` but file://)."""
    text = os.fspath(location)
    return "://" in text and not text.startswith("file://")


def local_artifact(location: str | os.PathLike[str], *, cache: str | os.PathLike[str] | None = None) -> Path:
    """The local folder to load an artifact from: `location` itself when local, else the verified local copy of
    the published version at that URI (fetched into `cache`, default `artifact_cache_dir()`).

    Raises:
        UserError: the URI is malformed, credentials are missing, or the version is not published (no marker:
            a half-finished upload) or does not match its manifest; it is never served.
        StorageError: the download failed (a retry may succeed).
    """
    text = os.fspath(location)
    if text.startswith("file://"):
        return Path(text.removeprefix("file://"))
    if not is_remote(text):
        return Path(text)
    uri = text.rstrip("/")
    folder = Path(cache).expanduser() if cache is not None else artifact_cache_dir()
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with open(folder / f".{key}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when closed; the next replica finds the copy current
            return fetch_folder(uri, folder / key)
    except UserError as exc:
        raise UserError(f"cannot serve {uri}: {exc.message}", field="args.versions.artifact", fix=exc.fix) from None
    except StorageError as exc:
        raise StorageError(f"cannot serve {uri}: {exc}", not_found=exc.not_found) from None
