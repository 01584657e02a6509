"""`python -m fusionrec.train --manifest M --output DIR [--address ADDR]`: what the operator's RayJob runs.

A plain module entry point (no click group): exit 0 on success, 2 for bad input (the message names the field
and the fix), 130 when interrupted (SIGINT: training is stopped and nothing is written), 1 for anything else,
with its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from fusionrec.errors import UserError

EXIT_INTERRUPTED = 130  # 128 + SIGINT


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fusionrec.train",
                                     description="Fine-tune a FusionRecommender manifest under Ray Train.")
    parser.add_argument("--manifest", required=True, help="FusionRecommender YAML manifest.")
    parser.add_argument("--output", required=True, help="Folder of versioned artifacts.")
    parser.add_argument("--address", default=None,
                        help="Ray cluster to submit to (host:port, ray://..., auto); default RAY_ADDRESS, "
                             "else a local Ray sized to this machine.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing version.")
    parser.add_argument("--dashboard", action="store_true", help="Start the Ray dashboard with a local Ray.")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    from fusionrec.train.distributed import summary_table, train_distributed

    try:
        result = train_distributed(args.manifest, args.output, address=args.address, overwrite=args.overwrite,
                                   dashboard=args.dashboard)
    except UserError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        version = _version_of(args.manifest)
        print(f"interrupted: nothing published for version {version}; run again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(summary_table(result))
    return 0


def _version_of(manifest: str) -> str:
    """The manifest's spec.version for the interrupted line ("?" if it cannot be read again)."""
    from fusionrec.spec import load_manifest

    try:
        return load_manifest(manifest).spec.version
    except Exception:  # the line must still be printed
        return "?"


if __name__ == "__main__":
    sys.exit(main())
