"""`python -m fusionrec.train --manifest M --output DIR|s3://B/P|gs://B/P [--address ADDR] [--refresh]`: what the
operator's RayJob runs (`--refresh` for a scheduled retrain with serving.live.events on). An object-storage output
gets the version trained in a local staging folder, then published to `<output>/<version>/`
(fusionrec.storage.publish_folder: verified, PUBLISHED marker last).

A plain module entry point (no click group): exit 0 on success, 2 for bad input (the message names the field
and the fix), 130 when interrupted (SIGINT: training is stopped and nothing is written), 1 for a failed transfer
to or from object storage (its message) and for anything else (with its traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fusionrec.errors import UserError

if TYPE_CHECKING:
    from fusionrec.spec import Manifest

EXIT_INTERRUPTED = 130  # 128 + SIGINT


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fusionrec.train",
                                     description="Fine-tune a FusionRecommender manifest under Ray Train.")
    parser.add_argument("--manifest", required=True, help="FusionRecommender YAML manifest.")
    parser.add_argument("--output", required=True,
                        help="Folder of versioned artifacts, or s3://bucket/prefix / gs://bucket/prefix: the "
                             "version is then published to <output>/<version>/ (credentials and endpoint from "
                             "the environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_S3...).")
    parser.add_argument("--work-dir", default=None,
                        help="With an s3:// or gs:// output: where the local staging folder is made (default: "
                             "the system's temp folder); deleted once the version is published.")
    parser.add_argument("--address", default=None,
                        help="Ray cluster to submit to (host:port, ray://..., auto); default RAY_ADDRESS, "
                             "else a local Ray sized to this machine.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing version.")
    parser.add_argument("--dashboard", action="store_true", help="Start the Ray dashboard with a local Ray.")
    parser.add_argument("--refresh", action="store_true",
                        help="Train on the base data + the feedback events + the live catalogue under "
                             "serving.live.uri (fusionrec.data.refresh), published beside them first: what a "
                             "scheduled retrain runs when serving.live.events is on.")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    from fusionrec.storage import StorageError
    from fusionrec.train.distributed import summary_table, train_distributed

    try:
        manifest = refreshed(args.manifest) if args.refresh else args.manifest
        result = train_distributed(manifest, args.output, address=args.address, overwrite=args.overwrite,
                                   dashboard=args.dashboard, work_dir=args.work_dir)
    except UserError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        return 2
    except StorageError as exc:  # a transfer failed (a retry may succeed); its text holds no credentials
        print(f"error: object storage: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        version = _version_of(args.manifest)
        print(f"interrupted: nothing published for version {version}; run again to train it", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(summary_table(result))
    return 0


def refreshed(path: str) -> Manifest:
    """The manifest at `path` training on its data refreshed with the events and live catalogue (a retrain with no
    events yet still trains: on the base data and the live catalogue)."""
    from fusionrec.data.refresh import refresh, refreshed_manifest
    from fusionrec.spec import load_manifest

    manifest = load_manifest(path)
    live = manifest.spec.serving.live.uri
    if not live:
        raise UserError("--refresh reads the events where serving writes them, and this manifest names no place",
                        field="spec.serving.live.uri", fix="set serving.live.uri (the operator sets it in the pods)")
    result = refresh(manifest.spec.data, manifest.spec.task.type, live)
    print(f"refreshed data: {result.name} ({'reused' if result.reused else 'published'} at {result.uri})\n"
          f"{result.summary.render()}", file=sys.stderr)
    return refreshed_manifest(manifest, result)


def _version_of(manifest: str) -> str:
    """The manifest's spec.version for the interrupted line ("?" if it cannot be read again)."""
    from fusionrec.spec import load_manifest

    try:
        return load_manifest(manifest).spec.version
    except Exception:  # the line must still be printed
        return "?"


if __name__ == "__main__":
    sys.exit(main())
