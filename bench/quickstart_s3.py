"""`make quickstart-s3` end to end, measured: the quickstart (MiniLM-L6 + SmolLM2-135M on MovieLens-100K) with
storage.uri on the loopback S3 server, trained, compiled, published and served from its published URI.

What runs (the make target's recipe, minus the install, plus what is measured):

  1. tools/s3/s3-up.sh start <tmp>/s3, its env (credentials, endpoint) passed to the children only
  2. tools/s3/create-bucket.py fusionrec-quickstart
  3. fusionrec -q run examples/quickstart-s3.yaml --json --no-keep-serving --port 0 --work-dir <tmp>/work-1
     a fresh work folder: every step runs (the embedding cache is the user's, as for `make quickstart-s3`;
     whether it already held the catalogue embeddings is recorded)
  4. the same with another fresh --work-dir: a fresh machine, the version already published: nothing may be trained
     (each run has an empty artifact cache of its own, FUSIONREC_ARTIFACT_CACHE, so each really downloads it)
  5. the published prefix listed (objects, bytes), then fetched into an empty folder with
     fusionrec.storage.fetch_folder (every file checked against the published manifest) and opened with load_artifact
  6. the server stopped, whatever happened

The baseline is the same run's own building steps: the object-storage share is (publish + fetch) / run 1's wall
time, and the re-run ratio is run 2's wall time over run 1's. Per-step times are the runner's own (--json).
Credentials go to the children's environment only; the outputs are checked for them and none is written here.

    python bench/quickstart_s3.py        # writes bench/results/quickstart-s3.json and .md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MANIFEST = "examples/quickstart-s3.yaml"
BUCKET = "fusionrec-quickstart"
URI = f"s3://{BUCKET}/runs"


def read_env(path: Path) -> dict[str, str]:
    lines = [line.removeprefix("export ").strip() for line in path.read_text().splitlines() if "=" in line]
    return dict(line.split("=", 1) for line in lines)


def run_quickstart(env: dict[str, str], work: Path) -> dict[str, Any]:
    """One `fusionrec run` in `work`, with an artifact cache of its own beside it (so each run fetches as a
    machine that never saw the version would)."""
    command = [str(BIN / "fusionrec"), "-q", "run", MANIFEST, "--json", "--no-keep-serving", "--port", "0",
               "--work-dir", str(work)]
    env = {**env, "FUSIONREC_ARTIFACT_CACHE": str(work.parent / f"artifacts-{work.name}")}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    try:
        summary = json.loads(done.stdout)
    except ValueError:
        summary = {}
    if done.returncode != 0:
        print(done.stderr[-6000:], file=sys.stderr)
        raise SystemExit(f"`{' '.join(command)}` exited {done.returncode}")
    return {"command": " ".join(["fusionrec", *command[1:]]).replace(str(work), "<tmp>/" + work.name),
            "exit_code": done.returncode, "wall_s": round(wall, 1), "summary": summary, "stderr": done.stderr}


def published_objects(env: dict[str, str], version_uri: str, dest: Path) -> dict[str, Any]:
    """List the version's objects and fetch it into an empty folder, verified (in a child, with the server's
    environment)."""
    code = f"""
import json, sys, time
from pyarrow import fs as pafs
from fusionrec import storage
from fusionrec.artifact import load_artifact
location = storage.resolve({version_uri!r})
infos = location.filesystem.get_file_info(pafs.FileSelector(location.path, recursive=True))
objects = [i for i in infos if i.type == pafs.FileType.File]
started = time.perf_counter()
path = storage.fetch_folder({version_uri!r}, {str(dest)!r})
fetch_s = time.perf_counter() - started
artifact = load_artifact(path)
print(json.dumps({{"objects": len(objects), "bytes": sum(i.size for i in objects),
                  "published_marker": storage.is_published(location),
                  "listed_versions": storage.list_published({URI!r}),
                  "fetch_verified": True, "fetch_s": round(fetch_s, 2), "artifact_files": len(artifact.files),
                  "artifact_version": artifact.version,
                  "compiled": sorted(n for n in artifact.files if n.endswith(('.onnx', 'compile.json')))}}))
"""
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def step_times(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": s["name"], "status": s["status"], "seconds": s["seconds"]} for s in summary.get("steps", [])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "quickstart-s3.json")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="qs3-"))
    s3_dir = scratch / "s3"
    embeddings = Path(os.environ.get("FUSIONREC_EMBEDDING_CACHE") or Path.home() / ".cache/fusionrec/embeddings")
    embeddings_before = sum(1 for p in embeddings.rglob("*") if p.is_file()) if embeddings.is_dir() else 0
    load_before = os.getloadavg()
    result: dict[str, Any] = {}
    try:
        started = time.perf_counter()
        up = subprocess.run(["bash", "tools/s3/s3-up.sh", "start", str(s3_dir)], cwd=REPO, capture_output=True,
                            text=True)
        if up.returncode != 0:
            raise SystemExit(f"tools/s3/s3-up.sh start failed:\n{up.stderr[-4000:]}")
        server_s = time.perf_counter() - started
        server = read_env(s3_dir / "env")
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **server,
               "PYTHONSAFEPATH": "1", "HF_HUB_OFFLINE": "1"}
        subprocess.run([sys.executable, "tools/s3/create-bucket.py", BUCKET], cwd=REPO, env=env, check=True)

        first = run_quickstart(env, scratch / "work-1")
        second = run_quickstart(env, scratch / "work-2")
        version_uri = first["summary"]["published"]
        published = published_objects(env, version_uri, scratch / "fetched")
        secrets = [server["AWS_SECRET_ACCESS_KEY"], server["AWS_ACCESS_KEY_ID"]]
        leaked = any(s in r["stderr"] + json.dumps(r["summary"]) for r in (first, second) for s in secrets)
        steps1, steps2 = step_times(first["summary"]), step_times(second["summary"])
        seconds1 = {s["name"]: s["seconds"] for s in steps1}
        storage_s = seconds1.get("publish", 0.0) + seconds1.get("fetch", 0.0)
        result = {
            "bench": "quickstart-s3",
            "commands": ["bash tools/s3/s3-up.sh start <tmp>/s3", f"python tools/s3/create-bucket.py {BUCKET}",
                         first["command"], second["command"], "python bench/quickstart_s3.py"],
            "manifest": MANIFEST, "storage_uri": URI, "published": version_uri,
            "server_start_s": round(server_s, 1),
            "run1_fresh_work_folder": {"wall_s": first["wall_s"], "steps": steps1,
                                       "served_version": first["summary"].get("served_version"),
                                       "latency": first["summary"].get("latency"),
                                       "quality": first["summary"].get("quality")},
            "run2_published_fresh_machine": {"wall_s": second["wall_s"], "steps": steps2,
                                             "trained": any(s["name"] == "train" and s["status"] == "ran"
                                                            for s in steps2),
                                             "served_version": second["summary"].get("served_version")},
            "published_objects": published,
            "object_storage_share": round(storage_s / first["wall_s"], 4),
            "rerun_ratio": round(second["wall_s"] / first["wall_s"], 4),
            "credentials_in_output": leaked,
            "embedding_cache_files_before": embeddings_before,
            "load_average": {"before": [round(x, 2) for x in load_before],
                             "after": [round(x, 2) for x in os.getloadavg()]},
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    finally:
        subprocess.run(["bash", "tools/s3/s3-up.sh", "stop", str(s3_dir)], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
        shutil.rmtree(scratch, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(render(result))
    print(f"object storage (publish + fetch) is {100 * result['object_storage_share']:.1f}% of the cold run; "
          f"re-run on a fresh machine / cold run = {result['rerun_ratio']:.3f}")
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


def render(result: dict[str, Any]) -> str:
    first, second, published = result["run1_fresh_work_folder"], result["run2_published_fresh_machine"], \
        result["published_objects"]
    second_steps = {s["name"]: s for s in second["steps"]}
    lines = ["# quickstart-s3: the quickstart published to and served from S3 (loopback SeaweedFS)", "",
             f"Measured {result['when']} by `python bench/quickstart_s3.py` ({result['machine']['cpus']} CPUs; load "
             f"average before {result['load_average']['before']}, after {result['load_average']['after']}; the "
             "machine was shared with other work, so absolute times are noisy). One run of each, not a median: "
             "each cold run takes minutes.", "",
             "Commands (what `make quickstart-s3` runs, minus the install; `--port 0` and `--work-dir` so that "
             "nothing on this machine is reused or collides):", ""]
    lines += [f"    {command}" for command in result["commands"][:-1]]
    lines += ["", f"Server start: {result['server_start_s']} s. Published: `{result['published']}`.", "",
              "| step | run 1: fresh work folder | s | run 2: fresh machine, version published | s |",
              "|---|---|---:|---|---:|"]
    for step in first["steps"]:
        other = second_steps.get(step["name"])
        lines.append(f"| {step['name']} | {step['status']} | {step['seconds']:.1f} | "
                     f"{other['status'] if other else '-'} | {other['seconds'] if other else 0:.1f} |")
    lines += [f"| **wall (the whole command)** | | **{first['wall_s']:.1f}** | | **{second['wall_s']:.1f}** |", "",
              f"- Published: {published['objects']} objects, {published['bytes'] / 1e6:.1f} MB under "
              f"`{result['published']}` (PUBLISHED marker present: {published['published_marker']}; versions listed: "
              f"{published['listed_versions']}); compiled files: {', '.join(published['compiled'])}.",
              f"- A fresh fetch (`fusionrec.storage.fetch_folder` into an empty folder) verified every file against "
              f"the published manifest in {published['fetch_s']} s and the copy opened with `load_artifact` "
              f"({published['artifact_files']} files, version {published['artifact_version']}).",
              f"- Object storage's share of the cold run (publish + fetch steps / wall): "
              f"{100 * result['object_storage_share']:.1f}%.",
              f"- Run 2 (fresh work folder, version already published) trained: {second['trained']}; served "
              f"{second['served_version']}; its wall time is {result['rerun_ratio']:.3f} of run 1's.",
              f"- Served version in run 1: {first['served_version']}; latency "
              f"{_latency(first['latency'])}.",
              f"- Credentials found in any output: {result['credentials_in_output']}.",
              f"- Embedding cache files before the run: {result['embedding_cache_files_before']} (non-zero: the "
              "catalogue embeddings of earlier quickstart runs were reused, as on any second run).", ""]
    return "\n".join(lines)


def _latency(latency: dict[str, Any] | None) -> str:
    if not latency:
        return "-"
    return f"p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms over {latency['requests']} sequential requests"


if __name__ == "__main__":
    main()
