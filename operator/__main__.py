"""`python -m fusionrec.operator`: run the FusionRecommender operator against a kubeconfig or in-cluster."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from fusionrec.errors import UserError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fusionrec.operator",
        description="Train, serve and roll out FusionRecommender resources with KubeRay. Settings come from "
                    "FUSIONREC_* environment variables (see fusionrec.operator.config).",
    )
    parser.add_argument("-n", "--namespace", action="append", default=[],
                        help="watch this namespace (repeatable; default: $FUSIONREC_WATCH_NAMESPACES, else all)")
    parser.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    parser.add_argument("--liveness", metavar="URL", default=os.environ.get("FUSIONREC_LIVENESS_URL"),
                        help="serve kopf's health check, e.g. http://0.0.0.0:8081/healthz")
    parser.add_argument("--peering", metavar="NAME", default=None,
                        help="coordinate replicas through this KopfPeering (default: standalone)")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("-q", "--quiet", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    namespaces = args.namespace or [n for n in os.environ.get("FUSIONREC_WATCH_NAMESPACES", "").split(",") if n]
    if args.all_namespaces:
        namespaces = []
    import kopf

    kopf.configure(verbose=args.verbose, debug=args.debug, quiet=args.quiet)
    if not args.debug:  # one line per child request would drown the operator's own log
        for noisy in ("httpx", "httpcore"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        from fusionrec.operator import handlers  # noqa: F401  (registers the handlers with kopf)
    except UserError as exc:
        print(f"fusionrec operator: {exc.render()}", file=sys.stderr)
        return 2
    settings = kopf.OperatorSettings()
    if namespaces and not any(set(n) & set("*?[!") for n in namespaces):
        # Exact names: nothing to discover. kopf would list namespaces to find matches, get 403 from a
        # namespaced install's RBAC and retry with back-off for about a minute before the first reconcile.
        settings.scanning.disabled = True
    kopf.run(
        settings=settings,
        standalone=args.peering is None,
        peering_name=args.peering,
        liveness_endpoint=args.liveness,
        clusterwide=not namespaces,
        namespaces=namespaces,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
