"""The `fusionrec` command line. Each command group lives in its own module and imports heavy libraries
(torch, ray) only when it runs, so `fusionrec --help` stays instant.

Exit codes: 0 success, 1 an unexpected failure (a bug: the traceback is printed), 2 a user error (bad input,
with the field and the fix named).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click

from fusionrec import __version__
from fusionrec.errors import UserError


class _UserErrorsExit2(click.Group):
    """Turns UserError from any command into one clear message on stderr and exit code 2, and a failed transfer
    to or from object storage (fusionrec.storage.StorageError: a retry may succeed) into its message and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc.render()}", err=True)
            ctx.exit(2)
        except Exception as exc:
            storage = sys.modules.get("fusionrec.storage")  # never imported: not a StorageError (keeps --help fast)
            if storage is None or not isinstance(exc, storage.StorageError):
                raise
            click.echo(f"error: object storage: {exc}", err=True)  # its text holds no credentials
            ctx.exit(1)


@click.group(cls=_UserErrorsExit2, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fusionrec")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars, warnings and errors only.")
def cli(verbose: int, quiet: bool) -> None:
    """Train, compile and serve recommenders built by fusing pretrained language models.

    \b
    Examples:
      fusionrec run examples/quickstart.yaml      # prepare, train, evaluate, compile, serve
      fusionrec data prepare ml-100k
      fusionrec evaluate --baselines
    """
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if quiet:
        os.environ["FUSIONREC_QUIET"] = "1"


def _register() -> None:
    from fusionrec.cli import (
        compile_cmd,
        data_cmd,
        embed_cmd,
        evaluate_cmd,
        merge_cmd,
        models_cmd,
        report_cmd,
        retrain_cmd,
        run_cmd,
        serve_cmd,
        train_cmd,
    )

    cli.add_command(run_cmd.run)
    cli.add_command(retrain_cmd.retrain)
    cli.add_command(data_cmd.data)
    cli.add_command(embed_cmd.embed)
    cli.add_command(evaluate_cmd.evaluate)
    cli.add_command(models_cmd.models)
    cli.add_command(merge_cmd.merge)
    cli.add_command(compile_cmd.compile_)
    cli.add_command(train_cmd.train)
    cli.add_command(serve_cmd.serve)
    cli.add_command(serve_cmd.recommend)
    cli.add_command(report_cmd.report)


_register()


def main() -> None:
    cli(prog_name="fusionrec")


if __name__ == "__main__":
    main()
