"""Auth for local serving (`fusionrec serve`, `fusionrec run`): on by default, with a generated token.

When the spec names no token source (`serving.auth.tokenFile` / `tokenEnv`; a cluster's `secretRef` does not
apply on this machine) and auth is not turned off, a random token (`secrets.token_urlsafe(32)`) is generated
once and kept in `token_path()`:

    $FUSIONREC_CONFIG_DIR/serving-token, else $XDG_CONFIG_HOME/fusionrec/serving-token,
    else ~/.config/fusionrec/serving-token

written atomically, mode 0600 in a 0700 folder, and reused by every later local serve, so a client started in
another terminal keeps working across restarts. `fusionrec recommend` and the runner's own requests read it
from there; the token itself is never printed or logged, only its path. A token file that other users can read
is refused (fix: `chmod 600`).

`--no-auth` (or `serving.auth.disabled: true`) serves without a token, with a warning; on an address other than
loopback that is refused: anyone who can reach the port could query the model.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from fusionrec.errors import UserError
from fusionrec.files import atomic_write_bytes
from fusionrec.spec import AuthSpec

TOKEN_NAME = "serving-token"
CONFIG_DIR_ENV = "FUSIONREC_CONFIG_DIR"


def config_dir() -> Path:
    """Where fusionrec keeps per-user settings ($FUSIONREC_CONFIG_DIR, else the XDG config folder)."""
    if os.environ.get(CONFIG_DIR_ENV):
        return Path(os.environ[CONFIG_DIR_ENV])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "fusionrec"


def token_path() -> Path:
    return config_dir() / TOKEN_NAME


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine (`localhost`, 127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_private(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UserError(f"the serving token file {path} can be read by other users (mode {oct(mode & 0o777)})",
                        field="serving.auth", fix=f"chmod 600 {path}, or delete it to have a new token generated")


def read_token(path: Path | None = None) -> str | None:
    """The first token of the local token file, or None when there is none."""
    from fusionrec.serving.auth import parse_tokens

    path = path or token_path()
    try:
        tokens = parse_tokens(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        return None
    return tokens[0].decode("utf-8") if tokens else None


def ensure_token(path: Path | None = None) -> tuple[Path, bool]:
    """(the local token file, whether it was generated now): reuse a private one, else write a new token."""
    path = path or token_path()
    if path.is_file() and read_token(path):
        _check_private(path)
        return path, False
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write_bytes(path, (secrets.token_urlsafe(32) + "\n").encode("utf-8"), mode=0o600)
    return path, True


def local_auth(auth: AuthSpec, *, host: str, no_auth: bool = False, token_file: str | None = None,
               token_env: str | None = None, say: Callable[[str], None] = print) -> AuthSpec:
    """The auth a local server runs with (no `secretRef`): the options' or the spec's token source, else the
    generated token; or none when `--no-auth` / `serving.auth.disabled` says so, on loopback only.

    Raises UserError (exit 2) for `--no-auth` with a token option, and for no auth on a non-loopback host.
    """
    if no_auth and (token_file or token_env):
        raise UserError("--no-auth cannot be combined with --token-file or --token-env", field="--no-auth",
                        fix="drop --no-auth to require the tokens, or drop the token option")
    # The spec's write tokens (serving.auth.writeTokenFile/Env) are kept whatever reads with.
    writes = {"write_token_file": auth.write_token_file, "write_token_env": auth.write_token_env}
    if no_auth:
        chosen, why = AuthSpec(disabled=True), "--no-auth"
    elif token_file or token_env:
        chosen, why = AuthSpec(token_file=token_file, token_env=token_env, **writes), ""
    else:
        chosen = AuthSpec(token_file=auth.token_file, token_env=auth.token_env, disabled=auth.disabled, **writes)
        why = "serving.auth.disabled: true"
    if chosen.disabled:
        if not is_loopback(host):
            raise UserError(f"refusing to serve on {host} without auth ({why}): anyone who can reach it could "
                            "query the model", field="--no-auth" if no_auth else "serving.auth.disabled",
                            fix="drop --no-auth / serving.auth.disabled (a bearer token is then generated and "
                                "required), or listen on loopback only: --host 127.0.0.1")
        say(f"warning: auth is off ({why}): every local user and process can query the API on {host}")
        return chosen
    if chosen.token_file or chosen.token_env:
        return chosen
    path, generated = ensure_token()
    note = "generated a bearer token" if generated else "bearer token"
    say(f"auth: {note} in {path} (`fusionrec recommend` uses it; curl: -H \"Authorization: Bearer $(cat {path})\"; "
        "--no-auth turns auth off)")
    return AuthSpec(token_file=str(path), **writes)
