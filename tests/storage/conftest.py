"""A real S3-compatible server on loopback (SeaweedFS, tools/s3/s3-up.sh) for the `storage` tests, one per session.

The binary is built with Go on first use and cached (tools/s3/build-seaweedfs.sh, ~/.cache/fusionrec/s3); where
neither the cache nor Go is there, the server tests skip with the reason. The server's credentials reach the code
under test only through the environment, as they would in a pod.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
S3_UP = REPO / "tools" / "s3" / "s3-up.sh"
BUILD = REPO / "tools" / "s3" / "build-seaweedfs.sh"
BUCKET = "fusionrec-test"
# Everything that could point the code under test elsewhere than the loopback server.
AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
            "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CA_BUNDLE")


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.removeprefix("export ").strip().split("=", 1) for line in path.read_text().splitlines())
    return {key: value for key, value in pairs}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Start the server (building weed first if it is not cached) and a bucket; yield its environment."""
    if not os.environ.get("S3_UP_WEED"):
        build = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True)
        if build.returncode == 2:
            pytest.skip(f"no cached weed binary and no Go to build it: {build.stderr.strip()}")
        assert build.returncode == 0, f"tools/s3/build-seaweedfs.sh failed:\n{build.stderr[-4000:]}"
    folder = tmp_path_factory.mktemp("s3")
    started = subprocess.run(["bash", str(S3_UP), "start", str(folder)], capture_output=True, text=True)
    try:
        assert started.returncode == 0, f"tools/s3/s3-up.sh start failed:\n{started.stderr[-4000:]}"
        env = read_env_file(folder / "env")
        _create_bucket(env, BUCKET)
        yield env
    finally:
        subprocess.run(["bash", str(S3_UP), "stop", str(folder)], capture_output=True, text=True, timeout=120)


def _create_bucket(env: dict[str, str], bucket: str) -> None:
    from pyarrow import fs

    host = env["AWS_ENDPOINT_URL_S3"].split("://", 1)[1]
    s3 = fs.S3FileSystem(access_key=env["AWS_ACCESS_KEY_ID"], secret_key=env["AWS_SECRET_ACCESS_KEY"],
                         region=env["AWS_REGION"], endpoint_override=host, scheme="http",
                         allow_bucket_creation=True)
    s3.create_dir(bucket)


@pytest.fixture
def no_cloud_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No AWS or Google Cloud settings from the machine running the tests."""
    for var in (*AWS_VARS, "GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def s3_env(s3_server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The server's credentials and endpoint in the environment, and nothing else AWS-related."""
    for var in AWS_VARS:
        monkeypatch.delenv(var, raising=False)
    for var, value in s3_server.items():
        monkeypatch.setenv(var, value)
    return s3_server


@pytest.fixture
def s3_root(s3_env: dict[str, str]) -> str:
    """A fresh prefix in the test bucket for one test."""
    return f"s3://{BUCKET}/runs-{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.storage)])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where versions are published: a local folder, or a prefix on the loopback S3 server (the same tests run
    on both, through the same functions)."""
    if request.param == "local":
        return str(tmp_path / "published")
    return str(request.getfixturevalue("s3_root"))


@pytest.fixture
def sample_folder(tmp_path: Path) -> Path:
    """A folder to publish: text, nested files, an empty file and 6 MB of random bytes (an S3 multipart upload)."""
    folder = tmp_path / "src" / "v1"
    (folder / "sub" / "deeper").mkdir(parents=True)
    (folder / "a.txt").write_text("hello\n")
    (folder / "sub" / "b.json").write_text('{"x": 1}\n')
    (folder / "sub" / "deeper" / "empty").write_bytes(b"")
    (folder / "big.dat").write_bytes(os.urandom(6 << 20))
    return folder
