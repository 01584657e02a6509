"""Bearer-token auth for the HTTP API: tokens from a mounted secret file or an environment variable.

Auth is on by default: a served app needs a token source unless `serving.auth.disabled` is true
(`require_token_source`); local serving generates a token when the spec names none (local_auth.py).

401 when no (or a malformed) `Authorization: Bearer` header is sent, 403 when the token is wrong. Every
configured token is compared in constant time, and all of them are compared on every request, so the
response time does not tell how much of a guess was right or which token it was close to. Writes (item
changes, feedback events) may need a separate write token (`serving.auth.writeTokenFile` / `writeTokenEnv`):
a read token leaked from a client app then cannot change the catalogue. Tokens are never
logged or echoed back. A mounted Secret is updated in place by the kubelet when it rotates, so the file is
re-read when its modification time changes (checked at most once a second).
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from fusionrec.errors import UserError
from fusionrec.serving.config import MOUNTED_WRITE_TOKENS_FILE
from fusionrec.serving.errors import ApiError
from fusionrec.spec import AuthSpec

log = logging.getLogger(__name__)

RECHECK_SECONDS = 1.0
WRITE_METHODS = frozenset({"PUT", "DELETE", "POST", "PATCH"})
WRITE_PATHS = ("/v1/items", "/v1/events")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="fusionrec"'}


def parse_tokens(text: str) -> list[bytes]:
    """Tokens from a secret's text: one per line or comma-separated; blanks and `#` comment lines skipped."""
    lines = [line.strip() for line in text.splitlines()]
    tokens = [t.strip() for line in lines if not line.startswith("#") for t in line.split(",")]
    return [t.encode("utf-8") for t in tokens if t]


def require_token_source(auth: AuthSpec) -> None:
    """Auth is on by default: refuse to serve when no token source is configured and auth is not disabled.

    The operator mounts `secretRef` as a tokenFile, and `fusionrec serve` / `fusionrec run` generate a token
    (serving/local_auth.py), so this only fires for args written by hand.
    """
    if not (auth.disabled or auth.token_file or auth.token_env):
        raise UserError("serving.auth names no token source (tokenFile, tokenEnv; secretRef on a cluster) and is "
                        "not disabled; refusing to serve /v1/* open", field="serving.auth",
                        fix="set serving.auth.tokenFile or tokenEnv (secretRef on a cluster), or "
                            "serving.auth.disabled: true to serve without auth")


class _TokenSource:
    """Tokens of one scope from a file (re-read when it changes) and/or an environment variable.

    `optional_file`: a file that does not exist yet is no error; its tokens count from when it appears. Only
    for the operator's mount of the Secret's optional `write-tokens` key (`MOUNTED_WRITE_TOKENS_FILE`): any
    other missing file is a mistake, and tolerating it would let the read tokens write.
    """

    def __init__(self, token_file: str | None, token_env: str | None, *, write: bool = False,
                 optional_file: bool = False) -> None:
        self.token_file = Path(token_file) if token_file else None
        self.token_env = token_env
        self.file_setting = "serving.auth.writeTokenFile" if write else "serving.auth.tokenFile"
        self.env_setting = "serving.auth.writeTokenEnv" if write else "serving.auth.tokenEnv"
        self._lock = threading.Lock()
        self._file_tokens: list[bytes] = []
        self._mtime: float | None = None
        self._checked = 0.0
        self._env_tokens = self._read_env()
        if self.token_file is not None and not (optional_file and not self.token_file.exists()):
            self._reload_file(force=True)
        elif self.token_file is not None:
            log.info("%s: %s does not exist (yet): the read tokens may write until it appears", self.file_setting,
                     self.token_file)
        if (self.token_file is None or self.token_file.exists()) and self.configured and not self.tokens():
            sources = [s for s in (token_file and f"file {token_file}", token_env and f"${token_env}") if s]
            setting = self.file_setting if token_file else self.env_setting
            raise UserError(f"{setting} is configured but {' and '.join(sources)} hold no token; refusing to "
                            "start open", field=setting,
                            fix="put at least one token in the secret, or set serving.auth.disabled: true (and no "
                                "token source) to serve without auth")

    @property
    def configured(self) -> bool:
        return self.token_file is not None or self.token_env is not None

    def _read_env(self) -> list[bytes]:
        if self.token_env is None:
            return []
        value = os.environ.get(self.token_env)
        if value is None:
            raise UserError(f"{self.env_setting} names ${self.token_env}, which is not set", field=self.env_setting)
        return parse_tokens(value)

    def _reload_file(self, force: bool = False) -> None:
        if self.token_file is None:
            return
        now = time.monotonic()
        if not force and now - self._checked < RECHECK_SECONDS:
            return
        self._checked = now
        try:
            mtime = self.token_file.stat().st_mtime
        except FileNotFoundError:
            if force:
                raise UserError(f"{self.file_setting} {self.token_file} does not exist",
                                field=self.file_setting) from None
            if self._mtime is not None:
                log.warning("token file %s disappeared; keeping the tokens read before", self.token_file)
            return
        if mtime == self._mtime:
            return
        tokens = parse_tokens(self.token_file.read_text(encoding="utf-8"))
        if not tokens and not force:
            log.warning("token file %s is now empty; keeping the tokens read before", self.token_file)
            return
        self._file_tokens, self._mtime = tokens, mtime
        if not force:
            log.info("token file %s changed: %d token(s) loaded", self.token_file, len(tokens))

    def tokens(self) -> list[bytes]:
        if self.token_file is not None:
            with self._lock:
                self._reload_file()
        return self._file_tokens + self._env_tokens

    def matches(self, candidate: bytes) -> bool:
        matched = False
        for known in self.tokens():
            matched |= hmac.compare_digest(candidate, known)  # no early exit: time is the same for every token
        return matched


def needs_write(method: str, path: str) -> bool:
    """Whether a request changes stored state (PUT/DELETE/POST under /v1/items or /v1/events): the write scope."""
    return method.upper() in WRITE_METHODS and any(path == p or path.startswith(p + "/") for p in WRITE_PATHS)


class TokenAuth:
    """Checks `Authorization` headers; `enabled` is False when no token source is configured.

    Two scopes: reads (/v1/recommend, /v1/score, /v1/model) take a read or a write token; writes (`needs_write`)
    take a write token when a write token source is configured (a read token is then 403, saying a write
    token is needed), else any read token, so a deployment without write tokens keeps working as before.

    Args:
        token_file: file with one token a line (a mounted Secret's key).
        token_env: environment variable with comma-separated tokens.
        write_token_file, write_token_env: the same for the write tokens (`serving.auth.writeTokenFile`,
            `writeTokenEnv`). Only the operator's mounted path (`MOUNTED_WRITE_TOKENS_FILE`, an optional Secret
            key) may not exist yet (read when it appears); any other missing file is a UserError, as tokenFile.
    """

    def __init__(self, token_file: str | None = None, token_env: str | None = None,
                 write_token_file: str | None = None, write_token_env: str | None = None) -> None:
        self.token_file = Path(token_file) if token_file else None
        self.token_env = token_env
        self._read = _TokenSource(token_file, token_env)
        self._write = _TokenSource(write_token_file, write_token_env, write=True,
                                   optional_file=write_token_file == MOUNTED_WRITE_TOKENS_FILE)
        if self._write.configured and not self._read.configured:
            raise UserError("serving.auth has write tokens but no read tokens (tokenFile, tokenEnv)",
                            field="serving.auth", fix="set serving.auth.tokenFile or tokenEnv too")

    @classmethod
    def from_spec(cls, auth: AuthSpec) -> TokenAuth:
        """The check a served app runs: auth is on unless `serving.auth.disabled` is true (then off, warned)."""
        require_token_source(auth)
        if auth.disabled:
            log.warning("serving.auth.disabled: true: /v1/* is served without a bearer token")
        return cls(auth.token_file, auth.token_env, auth.write_token_file, auth.write_token_env)

    @property
    def enabled(self) -> bool:
        return self._read.configured

    @property
    def write_scope(self) -> bool:
        """Whether writes need a write token (else a read token may write)."""
        return bool(self._write.configured and self._write.tokens())

    def check(self, authorization: str | Sequence[str] | None, *, write: bool = False) -> None:
        """Raise ApiError 401 (no bearer token, or more than one `Authorization` header) or 403 (wrong token,
        or a read token for a write); return when allowed or auth is off.

        `authorization` is the header's value, or every value sent (the ingress passes them all): two headers
        are refused rather than one picked, since a proxy in front and this check could each read a different
        one (which one "wins" differs between HTTP stacks).
        """
        if not self.enabled:
            return
        if authorization is not None and not isinstance(authorization, str):
            values = list(authorization)
            if len(values) > 1:
                raise ApiError(401, f"{len(values)} Authorization headers sent; send exactly one "
                                    "'Authorization: Bearer <token>'", "Authorization", headers=_CHALLENGE)
            authorization = values[0] if values else None
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "missing bearer token: send 'Authorization: Bearer <token>'", "Authorization",
                           headers=_CHALLENGE)
        candidate = token.encode("utf-8")
        # Both scopes are always compared, so the time does not tell which scope a guess was close to.
        is_reader, is_writer = self._read.matches(candidate), self._write.matches(candidate)
        if not (is_reader or is_writer):
            raise ApiError(403, "invalid bearer token", "Authorization")
        if write and not is_writer and self.write_scope:
            raise ApiError(403, "this request writes (PUT/DELETE /v1/items, POST /v1/events) and needs a write "
                                "token (serving.auth.writeTokenFile / writeTokenEnv); a read token was sent",
                           "Authorization")

