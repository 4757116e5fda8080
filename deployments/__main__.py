"""``python -m deployments``: the same command as ``magic141 service apply`` (:mod:`flows.cli.service`)."""

from __future__ import annotations

import sys

import typer

from flows.cli import run
from flows.cli.common import configure_cli
from flows.cli.service import apply


def main(argv: list[str] | None = None) -> int:
    """Apply the service; one line on stderr and status 2 for bad arguments or an unusable Prefect API."""
    configure_cli(verbose=False)
    command = typer.Typer(add_completion=False)
    command.command()(apply)
    return run(command, sys.argv[1:] if argv is None else argv, "python -m deployments")


if __name__ == "__main__":
    sys.exit(main())
