"""Folders in object storage (s3://, gs://) or on a local disk, published and fetched so that no reader ever
trusts half a version.

Why a layer of its own: a training job on one machine writes a version (an artifact, a prepared data set) that
serving replicas elsewhere read, and an object store has no atomic rename of a folder. So a version is uploaded
under a hidden temporary prefix, every object is read back and checked against a sha256 manifest computed from
the local files, the objects are moved to their final prefix, and only then is a small marker object written:

    <root>/<name>/...            the folder's files
    <root>/<name>/MANIFEST.json  sha256 and size of every file (the artifact manifest's format, fusionrec.artifact)
    <root>/<name>/PUBLISHED      the sha256 of MANIFEST.json, written LAST: a version exists once this does

A reader (`fetch_folder`) refuses a prefix without the marker, checks the manifest against the marker and every
file against the manifest, and renames its download into place only when all of it matched, so an interrupted
or corrupted transfer leaves nothing a later run would trust. An artifact folder already holds MANIFEST.json:
it is checked against the files and published as is, so a fetched artifact opens with `load_artifact`. Like
artifacts, pickled files and names reaching outside the folder are refused in both directions.

Readers that open files on disk (a prepared data set in `data.path`, a model source) get a local folder for any
URI from `local_copy`: a published version fetched as above, or a folder uploaded with other tools copied
object by object, with what was copied recorded so that a change in storage is fetched again.

Everything goes through pyarrow.fs (already a dependency: S3FileSystem with endpoint_override, GcsFileSystem,
LocalFileSystem), so local paths and file:// take the same code path as s3:// and gs://. Credentials and the
endpoint come from the environment only (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
AWS_REGION, AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_CA_BUNDLE; GOOGLE_APPLICATION_CREDENTIALS,
STORAGE_EMULATOR_HOST), never from a URI, and no message or log line carries them. One writer per version is
assumed (as for artifacts); a published version is immutable.

Errors: `UserError` for what a retry cannot fix (a bad URI, missing credentials, an unpublished or corrupted
version); `StorageError` for a failed transfer (network, permissions, a missing bucket), its text scrubbed of
credentials.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

import pyarrow as pa
from pyarrow import fs as pafs

from fusionrec import __version__
from fusionrec.artifact.layout import FORMAT_VERSION, MANIFEST_NAME, PICKLE_SUFFIXES, check_name, walk
from fusionrec.artifact.reading import _read_manifest
from fusionrec.errors import UserError
from fusionrec.files import atomic_directory, atomic_write_bytes, entry_lock, sha256_file

__all__ = ["COPY_RECORD", "MANIFEST_NAME", "PUBLISHED_NAME", "Location", "StorageError", "check_bucket",
           "delete_object", "fetch_folder", "is_published", "is_remote", "list_objects", "list_published",
           "local_copy", "publish_folder", "read_object", "read_published_file", "resolve", "shown_uri",
           "write_object"]

log = logging.getLogger(__name__)

PUBLISHED_NAME = "PUBLISHED"
COPY_RECORD = ".fusionrec-copy.json"  # beside a copied plain folder: what it was copied from (hidden: not data)
_TMP_PREFIX = ".tmp-"  # hidden: never a version name, so never listed
_CHUNK = 8 << 20
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_SECRET_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
# Credential sources the AWS SDK's default chain reads from the environment (IRSA, EKS Pod Identity, a profile).
_AWS_CHAIN_VARS = ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                   "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_PROFILE")
URI_FIX = "use a local path, file:///path, s3://bucket/prefix or gs://bucket/prefix"


class StorageError(Exception):
    """A transfer failed (network, permissions, missing bucket): a retry may succeed. Never holds credentials.
    `not_found`: the object or prefix did not exist."""

    def __init__(self, message: str, *, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


@dataclass(frozen=True)
class Location:
    """A resolved URI: the filesystem that reaches it and the path on that filesystem ("bucket/key/prefix" for
    object stores, an absolute POSIX path locally). `uri` is the URI as given, without a trailing slash."""

    filesystem: Any  # pyarrow.fs.FileSystem (pyarrow ships no type stubs)
    path: str
    uri: str
    scheme: str  # "file", "s3" or "gs"

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    def child(self, *parts: str) -> Location:
        joined = "/".join(p.strip("/") for p in parts if p.strip("/"))
        return Location(self.filesystem, f"{self.path.rstrip('/')}/{joined}", f"{self.uri}/{joined}", self.scheme)


# --- resolving a URI ---------------------------------------------------------------------------------------------


def resolve(uri: str | os.PathLike[str]) -> Location:
    """The filesystem and path for a local path, file://, s3://bucket/prefix or gs://bucket/prefix.

    Raises:
        UserError: an unsupported scheme, credentials or settings in the URI, or no credentials in the environment.
    """
    text = os.fspath(uri)
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", text)
    if match is None:
        path = Path(text).expanduser().absolute()
        return Location(pafs.LocalFileSystem(), path.as_posix(), text.rstrip("/") or "/", "file")
    scheme = match.group(1).lower()
    parsed = urlparse(text)
    if "@" in parsed.netloc:
        # The URI is not repeated: what precedes '@' may be a secret.
        raise UserError(f"the {scheme}:// URI holds user information before '@'; credentials are never read "
                        "from URIs", field="uri", fix="put credentials in the environment (AWS_ACCESS_KEY_ID and "
                        "AWS_SECRET_ACCESS_KEY from a Secret, or GOOGLE_APPLICATION_CREDENTIALS) and drop them "
                        "from the URI")
    if parsed.query or parsed.fragment:
        raise UserError(f"URI {text!r}: query strings and fragments are not read; settings such as the endpoint "
                        "come from the environment (AWS_ENDPOINT_URL_S3)", field="uri", fix=URI_FIX)
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise UserError(f"URI {text!r}: file:// URIs name a local path (file:///path), not host "
                            f"{parsed.netloc!r}", field="uri", fix=URI_FIX)
        path = Path(unquote(parsed.path) or "/")
        return Location(pafs.LocalFileSystem(), path.as_posix(), text.rstrip("/"), "file")
    if scheme not in ("s3", "gs"):
        raise UserError(f"URI {text!r}: scheme {scheme}:// is not a storage location", field="uri", fix=URI_FIX)
    bucket, key = parsed.netloc, unquote(parsed.path).strip("/")
    if not bucket:
        raise UserError(f"URI {text!r} names no bucket", field="uri", fix=f"write {scheme}://<bucket>/<prefix>")
    if any(part in (".", "..") for part in key.split("/")) or "//" in key:
        raise UserError(f"URI {text!r}: '.', '..' and empty path segments are not allowed", field="uri",
                        fix=URI_FIX)
    filesystem = _s3_filesystem(bucket) if scheme == "s3" else _gcs_filesystem()
    return Location(filesystem, f"{bucket}/{key}" if key else bucket, text.rstrip("/"), scheme)


def _s3_filesystem(bucket: str) -> Any:
    """S3 (or an S3-compatible server) with credentials, region and endpoint from the standard AWS variables.

    Without keys in the environment the SDK's default chain is used only when the environment names one of its
    sources (IRSA, Pod Identity, a profile): otherwise it would probe the EC2 metadata service, which hangs
    for seconds off AWS and then fails with a message that does not say what to set.
    """
    key_id, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    # request_timeout: a server-side copy (publishing moves each verified object) answers only once it is done, and
    # S3-compatible servers send nothing meanwhile; the SDK's default (3 s without a byte) failed a 700 MB copy.
    options: dict[str, Any] = {"connect_timeout": 10.0, "request_timeout": 300.0}
    if key_id and secret:
        options.update(access_key=key_id, secret_key=secret, session_token=os.environ.get("AWS_SESSION_TOKEN"))
    elif key_id or secret:
        missing = "AWS_SECRET_ACCESS_KEY" if key_id else "AWS_ACCESS_KEY_ID"
        raise UserError(f"s3://: {missing} is not set but its pair is", field="storage",
                        fix="set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    elif not any(os.environ.get(var) for var in _AWS_CHAIN_VARS):
        raise UserError("s3://: no S3 credentials in the environment", field="storage",
                        fix="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (from a Secret), or run with a web "
                            "identity (AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE, as IRSA sets them)")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.path.strip("/") or "@" in endpoint:
            raise UserError("AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL must look like http(s)://host[:port]",
                            field="storage", fix="e.g. AWS_ENDPOINT_URL_S3=http://127.0.0.1:8333")
        options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme)
    if os.environ.get("AWS_CA_BUNDLE"):
        options["tls_ca_file_path"] = os.environ["AWS_CA_BUNDLE"]
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region and endpoint:
        region = "us-east-1"  # S3-compatible servers take any region; SigV4 needs one
    if not region:
        with _io(f"finding the region of bucket {bucket!r} (set AWS_REGION to skip this)"):
            region = pafs.resolve_s3_region(bucket)
    options["region"] = region
    return pafs.S3FileSystem(**options)


def _gcs_filesystem() -> Any:
    """Google Cloud Storage with a service-account key file (GOOGLE_APPLICATION_CREDENTIALS), or an emulator
    (STORAGE_EMULATOR_HOST, anonymous). Other ambient credentials (the metadata server) are not probed."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:
        parsed = urlparse(emulator if "://" in emulator else f"http://{emulator}")
        return pafs.GcsFileSystem(anonymous=True, endpoint_override=parsed.netloc, scheme=parsed.scheme)
    key_file = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if not key_file:
        raise UserError("gs://: no Google Cloud credentials in the environment", field="storage",
                        fix="set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file (mounted from a "
                            "Secret), or STORAGE_EMULATOR_HOST for an emulator")
    if not Path(key_file).is_file():
        raise UserError(f"gs://: GOOGLE_APPLICATION_CREDENTIALS names {key_file}, which is not a file",
                        field="storage", fix="point it at the service-account key file")
    return pafs.GcsFileSystem()


# --- publishing ---------------------------------------------------------------------------------------------------


def publish_folder(local_folder: str | os.PathLike[str], uri: str | os.PathLike[str], *,
                   name: str | None = None) -> str:
    """Publish a local folder as `<uri>/<name>` (name: the folder's own name by default); return that URI.

    The files go to a temporary prefix first and are each read back and checked (size and sha256) against the
    manifest computed here; they are then moved under `<uri>/<name>/`, MANIFEST.json follows, and PUBLISHED
    last. A failure at any step leaves no marker, so readers never see the version; publishing again clears
    what an unfinished attempt left.

    Raises:
        UserError: not a folder, a bad name, a symlink or pickled file in it, a folder whose own MANIFEST.json
            does not match its files, or a version already published under that name (versions are immutable).
        StorageError: a transfer failed, or an object read back differs from what was sent.
    """
    folder = Path(local_folder)
    if not folder.is_dir():
        raise UserError(f"cannot publish {folder}: not a folder", field="local_folder")
    name = folder.resolve().name if name is None else name
    _check_version_name(name)
    root = resolve(uri)
    target = root.child(name)
    started = time.monotonic()
    manifest_bytes, manifest = _local_manifest(folder, name)
    _check_bucket(root)
    if is_published(target):
        raise UserError(f"{target.uri} is already published; published versions are immutable", field="name",
                        fix="publish under a new name")
    staging = root.child(f"{_TMP_PREFIX}{name}-{uuid.uuid4().hex[:12]}")
    try:
        _upload_verified(folder, manifest, staging)
        _promote(staging, target, manifest, manifest_bytes)
        _write_marker(target, hashlib.sha256(manifest_bytes).hexdigest())
    finally:
        _delete_quietly(staging)
    total = sum(entry["size"] for entry in manifest["files"].values())
    log.info("published %s: %d files, %.1f MB in %.1f s", target.uri, len(manifest["files"]), total / 1e6,
             time.monotonic() - started)
    return target.uri


def check_bucket(uri: str | os.PathLike[str] | Location) -> None:
    """That the bucket of `uri` exists and these credentials reach it (a local root needs nothing): checked before
    work whose result is published there, so a typo fails in seconds rather than after training.

    Raises:
        UserError: a bad URI, no credentials, or no such bucket.
        StorageError: the endpoint could not be reached or refused the request.
    """
    _check_bucket(uri if isinstance(uri, Location) else resolve(uri))


def _check_bucket(root: Location) -> None:
    """A missing bucket is named up front (object stores; a local root is created as needed)."""
    if root.is_local:
        return
    bucket = root.path.split("/", 1)[0]
    with _io(f"checking bucket {bucket!r}"):
        missing = root.filesystem.get_file_info(bucket).type == pafs.FileType.NotFound
    if missing:
        raise UserError(f"{root.uri}: bucket {bucket!r} does not exist (or these credentials cannot see it)",
                        field="uri", fix="create the bucket first, or correct the URI")


def _local_manifest(folder: Path, name: str) -> tuple[bytes, dict[str, Any]]:
    """The folder's manifest as the bytes to publish and parsed: its own MANIFEST.json (an artifact) after checking
    it against the files, else one written here in the same format."""
    names = [n for n in walk(folder) if n != MANIFEST_NAME]
    for entry in names:
        check_name(entry)
    files = {n: {"sha256": sha256_file(folder / n), "size": (folder / n).stat().st_size} for n in names}
    if (folder / MANIFEST_NAME).is_file():
        own = _read_manifest(folder)
        listed = {n: {"sha256": e["sha256"], "size": e["size"]} for n, e in own["files"].items()}
        if listed != files:
            changed = sorted(set(listed) ^ set(files) | {n for n in files if listed.get(n) != files[n]})
            raise UserError(f"cannot publish {folder}: its {MANIFEST_NAME} does not match its files "
                            f"({', '.join(changed[:5])})", field=changed[0] if changed else MANIFEST_NAME,
                            fix="rewrite the folder (or remove the stale MANIFEST.json)")
        return (folder / MANIFEST_NAME).read_bytes(), own
    manifest = {"format_version": FORMAT_VERSION, "fusionrec_version": __version__, "version": name,
                "created": datetime.now(UTC).isoformat(timespec="seconds"), "files": files}
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8"), manifest


def _upload_verified(folder: Path, manifest: dict[str, Any], staging: Location) -> None:
    """Upload every manifest file under `staging`, then read each object back and check its size and sha256:
    what reaches the final prefix is what left this machine, not what a proxy or a partial write made of it."""
    for entry in sorted(manifest["files"]):
        dest = staging.child(entry)
        with _io(f"uploading {entry} to {staging.uri}"):
            _ensure_parent(dest)
            with open(folder / entry, "rb") as source, dest.filesystem.open_output_stream(dest.path) as sink:
                shutil.copyfileobj(source, sink, _CHUNK)
    for entry, expected in sorted(manifest["files"].items()):
        dest = staging.child(entry)
        with _io(f"reading back {dest.uri}"):
            digest, size = _hash_object(dest)
        if (size, digest) != (expected["size"], expected["sha256"]):
            raise StorageError(f"{dest.uri} read back as {size} bytes that do not match the manifest of the local "
                               f"file ({expected['size']} bytes): changed during the upload or damaged on the way; "
                               "nothing was published")


def _promote(staging: Location, target: Location, manifest: dict[str, Any], manifest_bytes: bytes) -> None:
    """Move the verified objects to the final prefix (after clearing what an unfinished attempt left there),
    then write the manifest beside them; the marker is not written here."""
    with _io(f"clearing {target.uri}"):
        target.filesystem.delete_dir_contents(target.path, missing_dir_ok=True)
    for entry in sorted(manifest["files"]):
        src, dest = staging.child(entry), target.child(entry)
        with _io(f"moving {entry} to {target.uri}"):
            _ensure_parent(dest)
            target.filesystem.move(src.path, dest.path)
            info = target.filesystem.get_file_info(dest.path)
        if info.type != pafs.FileType.File or info.size != manifest["files"][entry]["size"]:
            raise StorageError(f"{dest.uri} is not the verified object after the move; nothing was published")
    _put(target.child(MANIFEST_NAME), manifest_bytes)


def _write_marker(target: Location, manifest_sha256: str) -> None:
    """The last write of a publish: from here on the version exists for readers."""
    _put(target.child(PUBLISHED_NAME), f"{manifest_sha256}\n".encode())


# --- reading ------------------------------------------------------------------------------------------------------


def is_published(uri: str | os.PathLike[str] | Location) -> bool:
    """Whether `<uri>` (a version: `<root>/<name>`) has its PUBLISHED marker, i.e. finished publishing."""
    location = uri if isinstance(uri, Location) else resolve(uri)
    marker = location.child(PUBLISHED_NAME)
    with _io(f"checking {marker.uri}"):
        return bool(marker.filesystem.get_file_info(marker.path).type == pafs.FileType.File)


def list_published(uri: str | os.PathLike[str]) -> list[str]:
    """The names of the published versions under `<uri>`, sorted; unfinished and temporary ones are left out."""
    root = resolve(uri)
    with _io(f"listing {root.uri}"):
        entries = root.filesystem.get_file_info(pafs.FileSelector(root.path, recursive=False, allow_not_found=True))
    names = sorted(info.base_name for info in entries
                   if info.type == pafs.FileType.Directory and _NAME_RE.match(info.base_name))
    return [n for n in names if is_published(root.child(n))]


def fetch_folder(uri: str | os.PathLike[str] | Location, local_cache: str | os.PathLike[str]) -> Path:
    """Download the published version `<uri>` to `<local_cache>/<name>` and return that path.

    The download goes to a hidden temporary folder beside it; the manifest is checked against the marker and
    every file against the manifest (size and sha256) before the folder is renamed into place, so a failed or
    interrupted fetch leaves nothing at `<local_cache>/<name>` (a copy already there stays as it was). A local
    copy of the same version that still matches its manifest is returned without downloading.

    Raises:
        UserError: `<uri>` is not published (no marker), or its manifest or a file does not match (corrupted
            or altered in storage).
        StorageError: a transfer failed.
    """
    source = uri if isinstance(uri, Location) else resolve(uri)
    name = source.path.rstrip("/").rsplit("/", 1)[-1]
    _check_version_name(name)
    marker = _read_marker(source)
    dest = Path(local_cache).absolute() / name
    if _cached_copy_matches(dest, marker):
        log.info("%s: local copy %s is current", source.uri, dest)
        return dest
    started = time.monotonic()
    with atomic_directory(dest, replace=True) as staging:
        manifest_object = source.child(MANIFEST_NAME)
        digest, _ = _download(manifest_object, staging / MANIFEST_NAME)
        if digest != marker:
            raise UserError(f"{manifest_object.uri}: sha256 does not match {PUBLISHED_NAME} (altered after "
                            "publishing); nothing was kept", field=MANIFEST_NAME, fix="publish the folder again")
        manifest = _read_manifest(staging)
        for entry, expected in sorted(manifest["files"].items()):
            digest, size = _download(source.child(entry), staging / entry)
            if (size, digest) != (expected["size"], expected["sha256"]):
                raise UserError(f"{source.uri}/{entry}: {size} bytes with sha256 {digest[:12]}..., but "
                                f"{MANIFEST_NAME} says {expected['size']} bytes with {expected['sha256'][:12]}... "
                                "(corrupted or altered in storage); nothing was kept", field=entry,
                                fix="publish the folder again under a new name")
    log.info("fetched %s to %s: %d files in %.1f s", source.uri, dest, len(manifest["files"]),
             time.monotonic() - started)
    return dest


def read_published_file(uri: str | os.PathLike[str], name: str) -> bytes:
    """One file of the published version `<uri>`, checked against its manifest (and the manifest against the
    marker) without downloading the rest: a small record read to decide something before, or instead of,
    fetching the whole version.

    Raises:
        UserError: `<uri>` is not published, `name` is not one of its files, or what was read does not match.
        StorageError: a transfer failed.
    """
    source = resolve(uri)
    check_name(name)
    marker = _read_marker(source)
    manifest_bytes = _read_object(source.child(MANIFEST_NAME))
    if hashlib.sha256(manifest_bytes).hexdigest() != marker:
        raise UserError(f"{source.uri}/{MANIFEST_NAME}: sha256 does not match {PUBLISHED_NAME} (altered after "
                        "publishing)", field=MANIFEST_NAME, fix="publish the folder again under a new name")
    try:
        expected = json.loads(manifest_bytes)["files"][name]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{source.uri} has no {name!r} in its {MANIFEST_NAME}", field=name) from None
    data = _read_object(source.child(name))
    if (len(data), hashlib.sha256(data).hexdigest()) != (expected.get("size"), expected.get("sha256")):
        raise UserError(f"{source.uri}/{name} does not match {MANIFEST_NAME} (corrupted or altered in storage)",
                        field=name, fix="publish the folder again under a new name")
    return data


def _read_object(location: Location) -> bytes:
    with _io(f"reading {location.uri}"), location.filesystem.open_input_stream(location.path) as stream:
        return bytes(stream.read())


def _read_marker(source: Location) -> str:
    marker = source.child(PUBLISHED_NAME)
    try:
        with _io(f"reading {marker.uri}"), marker.filesystem.open_input_stream(marker.path) as stream:
            text = stream.read(1024).decode("utf-8", errors="replace").strip()
    except StorageError as exc:
        if exc.not_found:
            raise UserError(f"{source.uri} is not published (no {PUBLISHED_NAME} marker): an upload that never "
                            "finished, or a wrong path; it is never read", field="uri",
                            fix="publish it with publish_folder, or pick a name from list_published") from None
        raise
    if not _SHA256_RE.match(text):
        raise UserError(f"{marker.uri} does not hold a sha256", field="uri", fix="publish the folder again")
    return text


def _cached_copy_matches(dest: Path, marker: str) -> bool:
    """A previous fetch of the same version that nothing has changed since (every file hashed again)."""
    manifest_file = dest / MANIFEST_NAME
    if not manifest_file.is_file() or sha256_file(manifest_file) != marker:
        return False
    try:
        files = _read_manifest(dest)["files"]
        if set(walk(dest)) - {MANIFEST_NAME} != set(files):
            return False
    except UserError:
        return False
    return all((dest / n).stat().st_size == e["size"] and sha256_file(dest / n) == e["sha256"]
               for n, e in files.items())


# --- a local copy of any folder -----------------------------------------------------------------------------------


def is_remote(uri: str | os.PathLike[str]) -> bool:
    """Whether `uri` is not a local path or file:// (s3://, gs://; `resolve` refuses other schemes): its files
    must be fetched before readers that open files on disk can use them."""
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", os.fspath(uri))
    return match is not None and match.group(1).lower() != "file"


def shown_uri(uri: str | os.PathLike[str]) -> str:
    """`uri` as a message may repeat it: one with user information before '@' (possibly a secret, which
    `resolve` refuses) is cut to its scheme."""
    text = os.fspath(uri)
    scheme, sep, rest = text.partition("://")
    return f"{scheme}://..." if sep and "@" in rest.split("/", 1)[0] else text


def local_copy(uri: str | os.PathLike[str] | Location, cache_root: str | os.PathLike[str]) -> Path:
    """A local folder holding what `<uri>` holds, for readers that open files on disk (a prepared data set, a
    Hugging Face model folder): copied once, re-used while it still matches.

    - A local path or file:// is the folder itself: nothing is copied.
    - A published version (PUBLISHED marker) is fetched with `fetch_folder`: checked against its manifest.
    - A prefix holding MANIFEST.json without the marker is refused: a publish that never finished (or is under
      way), which nothing may read.
    - Any other prefix (a folder uploaded with other tools) is copied object by object. The listing (sizes and
      modification times), each object's ETag and each file's sha256 are recorded beside the copy (COPY_RECORD),
      so the copy is re-used only while all of them still match (a HEAD request per object): an object replaced
      in storage is fetched again. Hidden objects (.git/, temporary prefixes) are not copied.
    - A URI naming one object (a data file) is copied the same way, alone, and the local file's path returned.

    The copy is `<cache_root>/<key>/<name>`: `key` hashes the endpoint and the URI, `name` is the URI's last
    segment. It is written beside that folder and renamed into place, by one fetch at a time on this machine (a
    file lock: Ray workers sharing a node wait for the first copy instead of downloading it again). Pickled files
    and names reaching outside the folder are refused, as when publishing.

    Raises:
        UserError: a bad URI or no credentials, nothing at `<uri>`, an unfinished publish, a pickled file, or a
            published version that does not match its manifest.
        StorageError: a transfer failed, or the objects changed while they were copied (a retry may succeed).
    """
    source = uri if isinstance(uri, Location) else resolve(uri)
    if source.is_local:
        return Path(source.path)
    name = source.path.rstrip("/").rsplit("/", 1)[-1]
    _check_version_name(name)
    key = hashlib.sha256(f"{_endpoint(source.scheme)}|{source.uri}".encode()).hexdigest()[:16]
    cache = Path(cache_root).expanduser().absolute() / key
    with entry_lock(cache):
        if is_published(source):
            return fetch_folder(source, cache)
        listing = _list_objects(source)
        if listing:
            return _copy_plain(source, listing, cache / name, lambda: _list_objects(source))
        return _copy_one_object(source, cache)


def _endpoint(scheme: str) -> str:
    """The server besides the bucket (one bucket name on two endpoints is two places); never a credential."""
    if scheme == "s3":
        return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
    return os.environ.get("STORAGE_EMULATOR_HOST", "") if scheme == "gs" else ""


def _copy_one_object(source: Location, cache: Path) -> Path:
    """A URI naming one object (data.interactions: s3://bucket/shop/orders.csv): copied alone into a folder
    named like its own folder (readers may go by that name), and the local file's path returned."""
    _check_bucket(source)
    with _io(f"checking {source.uri}"):
        info = source.filesystem.get_file_info(source.path)
    if info.type != pafs.FileType.File:
        raise UserError(f"{source.uri}: no objects there (a wrong path, or these credentials cannot list it)",
                        field="uri", fix="check the URI, or upload the folder first")
    parent_path, _, base = source.path.rpartition("/")
    folder = Location(source.filesystem, parent_path, source.uri.rsplit("/", 1)[0], source.scheme)
    parent_name = parent_path.rsplit("/", 1)[-1]

    def listed() -> dict[str, dict[str, Any]]:
        with _io(f"checking {source.uri}"):
            now = source.filesystem.get_file_info(source.path)
        return {base: {"size": now.size, "mtime_ns": now.mtime_ns}} if now.type == pafs.FileType.File else {}

    dest = cache / (parent_name if _NAME_RE.match(parent_name) else "object")
    return _copy_plain(folder, {base: {"size": info.size, "mtime_ns": info.mtime_ns}}, dest, listed) / base


def _copy_plain(source: Location, listing: dict[str, dict[str, Any]], dest: Path,
                relist: Callable[[], dict[str, dict[str, Any]]]) -> Path:
    """Copy the listed objects of an unpublished prefix to `dest` (see `local_copy`); `relist` lists them again
    once copied, to catch an upload that changed them meanwhile."""
    if MANIFEST_NAME in listing:
        raise UserError(f"{source.uri} holds {MANIFEST_NAME} but no {PUBLISHED_NAME} marker: a publish that never "
                        "finished (or is still under way); it is never read", field="uri",
                        fix="publish the folder again (fusionrec.storage.publish_folder; `fusionrec data push` for "
                            "a prepared dataset), or wait until its publish has finished")
    _check_object_names(source, listing)
    if _plain_copy_matches(dest, source, listing):
        log.info("%s: local copy %s is current", source.uri, dest)
        return dest
    started = time.monotonic()
    with atomic_directory(dest, replace=True) as staging:
        files: dict[str, dict[str, Any]] = {}
        for entry, listed in sorted(listing.items()):
            digest, size, etag = _download_tagged(source.child(entry), staging / entry)
            if size != listed["size"]:
                raise StorageError(_changed_while_copied(source))
            files[entry] = {**listed, "sha256": digest, "etag": etag}
        if relist() != listing:
            raise StorageError(_changed_while_copied(source))
        record = {"uri": source.uri, "files": files}
        (staging / COPY_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    log.info("copied %s to %s: %d files, %.1f MB in %.1f s", source.uri, dest, len(files),
             sum(e["size"] for e in files.values()) / 1e6, time.monotonic() - started)
    return dest


def _list_objects(source: Location) -> dict[str, dict[str, Any]]:
    """{name under the prefix: {"size", "mtime_ns"}} of every object that is not hidden."""
    prefix = source.path.rstrip("/") + "/"
    with _io(f"listing {source.uri}"):
        try:
            infos = source.filesystem.get_file_info(pafs.FileSelector(source.path, recursive=True,
                                                                      allow_not_found=True))
        except NotADirectoryError:  # one file on a local filesystem (an object store lists nothing for one)
            infos = []
    objects: dict[str, dict[str, Any]] = {}
    for info in infos:
        if info.type != pafs.FileType.File or not info.path.startswith(prefix):
            continue
        name = info.path[len(prefix):]
        if not any(part.startswith(".") for part in name.split("/")):  # '.' and '..' are hidden too
            objects[name] = {"size": info.size, "mtime_ns": info.mtime_ns}
    return objects


def _check_object_names(source: Location, names: dict[str, Any]) -> None:
    for name in names:
        if "\\" in name or "" in name.split("/"):
            raise UserError(f"{source.uri}: object name {name!r} has an empty segment or a backslash; nothing was "
                            "copied", field="uri", fix="rename the object")
    pickled = sorted(n for n in names if PurePosixPath(n).suffix.lower() in PICKLE_SUFFIXES)
    if pickled:
        raise UserError(f"{source.uri}: pickled files are refused, loading them could run code "
                        f"({', '.join(pickled[:5])}); nothing was copied", field="uri",
                        fix="keep only safetensors weights (save_pretrained(..., safe_serialization=True)) and "
                            "remove the pickled files from the prefix, or copy the folder elsewhere without them")


def _plain_copy_matches(dest: Path, source: Location, listing: dict[str, dict[str, Any]]) -> bool:
    """A previous copy of the same objects that nothing has changed since: the listing as recorded, each
    object's ETag as recorded (listings give times to the second only), every local file hashed again."""
    try:
        record = json.loads((dest / COPY_RECORD).read_text(encoding="utf-8"))
        files = record["files"]
        if record["uri"] != source.uri or {n: {"size": e["size"], "mtime_ns": e["mtime_ns"]}
                                           for n, e in files.items()} != listing:
            return False
        if set(walk(dest)) - {COPY_RECORD} != set(files):
            return False
        if any(e.get("etag") is not None and _etag(source.child(n)) != e["etag"] for n, e in files.items()):
            return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError, UserError, StorageError):
        return False  # unreadable, or an object gone since the listing: copy again
    return all((dest / n).stat().st_size == e["size"] and sha256_file(dest / n) == e["sha256"]
               for n, e in files.items())


def _changed_while_copied(source: Location) -> str:
    return (f"{source.uri}: objects were added, replaced or removed while they were copied; nothing was kept "
            "(try again once the upload has finished)")


# --- single immutable objects (append-only logs: feedback event segments, live item changes) ---------------------


def write_object(location: Location, data: bytes) -> None:
    """One immutable object, whole or not at all, and durable once this returns: a single PUT on object stores;
    locally a temp file fsync'd, renamed into place, and the folder fsync'd (without that last step a power
    cut can lose the rename, and with it a write that was already acknowledged), and so is every folder this
    write created and the one holding the topmost of them (a new folder's own entry is in its parent: the
    first object of a new replica's folder would otherwise vanish with the folder).

    Raises:
        StorageError: the write failed (nothing is visible under the name then).
    """
    parent = location.path.rsplit("/", 1)[0] or "/"
    synced = [parent]
    if location.is_local:
        folder = parent
        while not os.path.isdir(folder) and os.path.dirname(folder) != folder:  # the folders created below
            folder = os.path.dirname(folder)
            synced.append(folder)
    _ensure_parent(location)
    _put(location, data)
    if location.is_local and hasattr(os, "O_DIRECTORY"):
        with _io(f"syncing the folder of {location.uri}"):
            for folder in synced:
                fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)


def read_object(location: Location) -> bytes:
    """The bytes of one object (StorageError with not_found=True when it is gone)."""
    return _read_object(location)


def list_objects(location: Location) -> dict[str, dict[str, Any]]:
    """{name relative to the prefix: {"size", "mtime_ns"}} of every object under it, recursively; hidden names
    (a segment of the name starting with '.', such as a local write's temp file) are left out. A prefix that
    does not exist lists nothing."""
    return _list_objects(location)


def delete_object(location: Location) -> None:
    """Delete one object; one that is already gone is not an error (two compactions may race)."""
    try:
        with _io(f"deleting {location.uri}"):
            location.filesystem.delete_file(location.path)
    except StorageError as exc:
        if not exc.not_found:
            raise


# --- transfers ----------------------------------------------------------------------------------------------------


@contextmanager
def _io(what: str) -> Iterator[None]:
    """Turn a pyarrow / OS failure into a StorageError saying what was being done, scrubbed of credentials;
    raised `from None`, so no traceback repeats the original message, which might echo a key."""
    try:
        yield
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(_redact(f"{what}: {type(exc).__name__}: {exc}"),
                           not_found=isinstance(exc, FileNotFoundError)) from None


def _redact(text: str) -> str:
    for var in _SECRET_VARS:
        value = os.environ.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def _hash_object(location: Location) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with location.filesystem.open_input_stream(location.path) as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _download(location: Location, dest: Path) -> tuple[str, int]:
    """Copy one object to a local file; return its sha256 and size as received."""
    digest, size, _ = _download_tagged(location, dest)
    return digest, size


def _download_tagged(location: Location, dest: Path) -> tuple[str, int, str | None]:
    """`_download`, and the ETag of the object the bytes came from (None where the filesystem has none)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    with _io(f"downloading {location.uri}"), location.filesystem.open_input_stream(location.path) as stream, \
            open(dest, "wb") as sink:
        etag = _etag_of(stream)
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
            sink.write(chunk)
            size += len(chunk)
    return digest.hexdigest(), size, etag


def _etag(location: Location) -> str | None:
    """The object's ETag (one HEAD request on S3; None where the filesystem shows none, e.g. locally)."""
    with _io(f"checking {location.uri}"), location.filesystem.open_input_stream(location.path) as stream:
        return _etag_of(stream)


def _etag_of(stream: Any) -> str | None:
    value = (stream.metadata() or {}).get("ETag") or (stream.metadata() or {}).get(b"ETag")
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def _put(location: Location, data: bytes) -> None:
    """One small object, whole or not at all: a single PUT on object stores, write-and-rename locally."""
    with _io(f"writing {location.uri}"):
        if location.is_local:
            atomic_write_bytes(Path(location.path), data)
            return
        with location.filesystem.open_output_stream(location.path) as sink:
            sink.write(data)


def _ensure_parent(location: Location) -> None:
    if location.is_local:  # object stores have no folders to create
        location.filesystem.create_dir(location.path.rsplit("/", 1)[0], recursive=True)


def _delete_quietly(location: Location) -> None:
    try:
        location.filesystem.delete_dir(location.path)
    except (OSError, pa.ArrowException) as exc:
        if not isinstance(exc, FileNotFoundError):
            log.warning("could not delete the temporary prefix %s: %s", location.uri, _redact(str(exc)))


def _check_version_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise UserError(f"version name {name!r} must be one path segment of letters, digits, '.', '_' and '-', "
                        "not starting with '.' (at most 128 characters)", field="name")
