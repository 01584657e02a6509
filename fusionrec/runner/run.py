"""`fusionrec run`: one manifest through the whole cycle on this machine.

prepare -> merge (if spec.merge) -> train (Ray Train) -> evaluate (singles, baselines) -> compile -> serve
(local Ray Serve on loopback) -> roll out (when the output folder already serves another version) ->
sample recommendation and latency sample.

Every building step is cached by content hash (`fusionrec.runner.cache`): re-running the same manifest skips
them all and only serves. Serving is never cached: it is a live process. The run's own Ray is stopped at
the end unless the caller keeps it serving (`keep_serving`, then `wait`).

With spec.storage.uri (or --output) in object storage, the same steps run in a local work folder, then
publish (after compile) and fetch come before serving, and every version is served from its published URI
(`fusionrec.runner.publishing`); a version already published there is not built again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusionrec.errors import UserError
from fusionrec.runner import build, compare, publishing
from fusionrec.runner.cache import STATE_DIR, FolderHasher, StepCache
from fusionrec.runner.inputs import baselines_of
from fusionrec.runner.local_rollout import RolloutResult, rollout
from fusionrec.runner.local_serve import (
    LocalServing,
    ServedState,
    Version,
    app_args,
    bearer_headers,
    latency_sample,
    sample_recommendation,
)
from fusionrec.runner.steps import RunContext, record_step
from fusionrec.runner.summary import RunReport
from fusionrec.serving.artifacts import is_remote, local_artifact
from fusionrec.serving.config import AppArgs, with_live_uri
from fusionrec.spec import LIVE_FOLDER, Manifest, ServingSpec

log = logging.getLogger(__name__)

LATENCY_NAME = "latency.json"


@dataclass
class RunOptions:
    """How to run a manifest. `output` None means spec.storage.uri; `port` None means spec.serving.port."""

    output: str | None = None
    serve: bool = True
    keep_serving: bool = False
    host: str = "127.0.0.1"
    port: int | None = None
    requests: int = 50
    warmup: int = 5
    use_cache: bool = True
    no_auth: bool = False
    work_dir: str | None = None  # where an object-storage output is built locally (default: under the cache)


class Runner:
    """Runs one manifest; `report` holds what happened so far, also when a step failed."""

    def __init__(self, manifest: Manifest, options: RunOptions, say: Callable[[str], None] = print) -> None:
        self.manifest = manifest
        self.options = options
        self.say = say
        self.report = RunReport(name=manifest.metadata.name, version=manifest.spec.version)
        self.serving: LocalServing | None = None
        self.local_serving: ServingSpec | None = None  # spec.serving with the auth this machine serves with

    def run(self) -> RunReport:
        from fusionrec.model.saved import embedding_cache_dir

        spec, options = self.manifest.spec, self.options
        output = options.output or spec.storage.uri
        # Storage first: no credentials or no bucket fails in seconds, before the data is read.
        dest = publishing.destination(output, spec.version, field="--output" if options.output else
                                      "spec.storage.uri", work_dir=options.work_dir, rebuild=not options.use_cache)
        root = dest.work_root if dest else build.check_local_output(output)
        baselines_of(spec)  # a baseline that does not suit the task fails before any work
        hasher = FolderHasher(root / STATE_DIR / "hashes.json", trust_stat=options.use_cache)
        ctx = RunContext(self.manifest, root, StepCache(root, enabled=options.use_cache), hasher,
                         embedding_cache_dir(), self.say, steps=self.report.steps)
        self.report.artifact = str(ctx.target)
        self.report.storage = dest.uri if dest else None
        if options.serve:  # before any work: no auth on a non-loopback host is refused (exit 2)
            self.local_serving = self._local_serving()
        try:
            data_key = build.prepare(ctx)
            merged = build.merge(ctx)
            if dest is not None and dest.published:  # the published version is the result: nothing is rebuilt
                self.report.comparison = publishing.adopt(ctx, dest, build.train_inputs(ctx, data_key, merged))
                self.report.artifact = self.report.published = dest.version_uri
                self._start_serving()
            else:
                self._start_serving()  # one Ray for training and serving: started before training needs it
                trained = build.train(ctx, data_key, merged)
                self.report.comparison = compare.evaluate(ctx, trained)
                compiled = build.compile_version(ctx, trained)
                if dest is not None:  # published last, once compile succeeded
                    self.report.artifact = self.report.published = publishing.publish(ctx, dest, trained, compiled)
        finally:
            hasher.save()
        if options.serve:
            new = Version(spec.version, ctx.target)
            if dest is not None:  # served from the published URI, as a cluster replica reads it
                new = Version(spec.version, publishing.fetch(ctx, dest), dest.version_uri)
            self._serve(ctx, new)
        return self.report

    def _start_serving(self) -> None:
        if self.options.serve:
            port = self.manifest.spec.serving.port if self.options.port is None else self.options.port
            self.serving = LocalServing(self.options.host, port, self._cpus())
            self.serving.start()

    def _cpus(self) -> int:
        """Logical CPUs of a Ray started here: enough for the training workers and, during a rollout, two
        versions at their maximum replicas (Ray only counts reservations; the cores are shared)."""
        from fusionrec.serving.config import cpus_of

        spec = self.manifest.spec
        training = spec.training.workers * spec.training.cpus_per_worker
        serving = 2 * spec.serving.max_replicas * cpus_of(spec.serving.resources.cpu)
        return int(math.ceil(max(os.cpu_count() or 1, training, serving))) + 1

    # --- serving ------------------------------------------------------------------------------------------

    def _local_serving(self) -> ServingSpec:
        """spec.serving with local auth: the spec's tokenFile/tokenEnv, else a generated token (its path is
        said, never the token); none with --no-auth or serving.auth.disabled, on loopback only."""
        from fusionrec.serving.local_auth import local_auth

        serving = self.manifest.spec.serving.model_copy(deep=True)
        serving.auth = local_auth(serving.auth, host=self.options.host, no_auth=self.options.no_auth,
                                  say=self.say)
        return serving

    def _serve(self, ctx: RunContext, new: Version) -> None:
        import httpx

        serving = with_live_uri(self.local_serving or self._local_serving(), self._live_default(ctx))
        url = self._server().start()
        self.report.endpoint = url
        state = ServedState.load(ctx.root, self.manifest.metadata.name)
        stable = self._stable(ctx, state)
        versions = [stable, new] if stable else [new]
        args = app_args(self.manifest.metadata.name, versions,
                        {stable.version: 100, new.version: 0} if stable else {new.version: 100}, serving)
        with httpx.Client(base_url=url, headers=bearer_headers(serving), timeout=60.0) as client:
            record_step(ctx, "serve", lambda: self._deploy(args, url, versions))
            served = new
            if stable is not None:
                served = self._roll_out(ctx, client, args, stable, new, state)
            if stable is None or self._rollout_result().promoted:
                state.current, state.artifact = new.version, new.location
            state.save()
            self.report.served_version = served.version
            record_step(ctx, "sample", lambda: self._sample(ctx, client, served))
        self.report.serving = "running" if self.options.keep_serving else "stopped"

    def _live_default(self, ctx: RunContext) -> str:
        """Where item changes and events live unless serving.live.uri says: beside the versions, in the bucket
        for a run that publishes there (every machine serving the bucket's versions shares them), else in the
        run's folder."""
        output = self.options.output or self.manifest.spec.storage.uri
        return f"{output.rstrip('/')}/{LIVE_FOLDER}" if is_remote(output) else str(ctx.root / LIVE_FOLDER)

    def _server(self) -> LocalServing:
        """The local Ray Serve that `run` started before any work (the serving steps come after it)."""
        if self.serving is None:
            raise RuntimeError("local serving is not started: Runner.run starts it when options.serve is set")
        return self.serving

    def _rollout_result(self) -> RolloutResult:
        """The result `_roll_out` recorded (its step re-raises when the rollout itself failed)."""
        if self.report.rollout is None:
            raise RuntimeError("the rollout step recorded no result")
        return self.report.rollout

    def _stable(self, ctx: RunContext, state: ServedState) -> Version | None:
        """The version this output folder served before, when it is another one and still verifies (a published
        one: still published, and fetched and verified again)."""
        if not state.current or state.current == self.manifest.spec.version or not state.artifact:
            return None
        if is_remote(state.artifact):
            from fusionrec.storage import StorageError

            try:
                return Version(state.current, local_artifact(state.artifact), state.artifact)
            except (UserError, StorageError) as exc:
                self.say(f"note: the served version {state.current} cannot be fetched ({str(exc).splitlines()[0]}); "
                         f"{self.manifest.spec.version} is served without a rollout")
                return None
        if ctx.artifact(Path(state.artifact)) is None:
            self.say(f"note: the served version {state.current} ({state.artifact}) is gone or broken; "
                     f"{self.manifest.spec.version} is served without a rollout")
            return None
        return Version(state.current, Path(state.artifact))

    def _deploy(self, args: AppArgs, url: str, versions: list[Version]) -> tuple[bool, str]:
        self._server().deploy(args, fresh=True)
        return True, f"{url}  ({', '.join(v.version for v in versions)} loaded)"

    def _roll_out(self, ctx: RunContext, client: Any, args: AppArgs, stable: Version, new: Version,
                  state: ServedState) -> Version:
        spec = self.manifest.spec

        def work() -> tuple[bool, str]:
            result = rollout(client, lambda weights: self._server().deploy(args, weights=weights), stable, new,
                             spec.rollout, self.say)
            self.report.rollout = result
            state.rollouts.append({**result.to_json(), "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            if result.promoted:
                return True, f"{stable.version} -> {new.version}: promoted"
            why = result.steps[-1]["message"] if result.steps else ""
            return False, f"{result.outcome}: {stable.version} keeps its traffic ({why})"

        record_step(ctx, "rollout", work)
        weights = self._rollout_result().final_weights
        return new if weights.get(new.version, 0) >= weights.get(stable.version, 0) else stable

    def _sample(self, ctx: RunContext, client: Any, served: Version) -> tuple[bool, str]:
        latency = latency_sample(client, served.artifact, self.options.requests, self.options.warmup)
        record = {LATENCY_NAME: (json.dumps(latency, indent=2) + "\n").encode()}
        if served.uri is None:
            ctx.add_files(served.artifact, record)
        elif ctx.artifact(ctx.root / served.version) is not None:
            # A published version is immutable (and its fetched copy must stay as published): the latency goes to
            # the local build of that version, when this machine has one, and to the report.
            ctx.add_files(ctx.root / served.version, record)
        self.report.latency = latency
        if latency["failed"]:
            raise RuntimeError(f"{latency['failed']} of {latency['requests']} requests to {served.version} at "
                               f"{self.report.endpoint} failed (see the serving replicas' logs)")
        self.report.sample = sample_recommendation(client, served.artifact)
        return True, f"{latency['requests']} requests to {served.version}, none failed"

    # --- lifetime -----------------------------------------------------------------------------------------

    def wait(self) -> None:
        """Block until Ctrl-C or SIGTERM (`--keep-serving`)."""
        stop = False

        def _stop(*_: Any) -> None:
            nonlocal stop
            stop = True

        previous = signal.signal(signal.SIGTERM, _stop)
        try:
            while not stop:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)

    def close(self) -> None:
        if self.serving is not None:
            self.serving.close()
            self.serving = None


def interrupted_line(report: RunReport) -> str:
    """The one line a Ctrl-C'd run ends with: what (if anything) this run published, and that running again
    reuses every finished step (a training stopped half-way starts over: its checkpoints belong to that run).
    Training publishes its version only once it is complete, so a run stopped before the train step finished
    published nothing; with object storage, nothing is published before the publish step finished (its marker is
    written last)."""
    finished = {step.name for step in report.steps if step.status in ("ran", "cached")}
    if report.storage is not None and report.published is None:
        return (f"interrupted: nothing published to {report.storage} for version {report.version}; run again "
                "(finished steps are reused)")
    if "train" not in finished:
        return f"interrupted: nothing published for version {report.version}; run again to train it"
    pending = next((step.name for step in report.steps if step.status == "failed"), "next")
    return (f"interrupted: version {report.version} is at {report.artifact} but its {pending} step did not "
            f"finish; run again to resume")
