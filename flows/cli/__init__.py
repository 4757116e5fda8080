"""The ``magic141`` command line: one typer app, a module per command.

========================  ===========================================================
``generate``              :mod:`flows.cli.generate`: one video from a prompt
``bulk``                  :mod:`flows.cli.bulk`: every row of a prompt CSV
``catalog ...``           :mod:`flows.cli.catalog`: list, show, export, contact sheet
``index ...``             :mod:`flows.cli.index`: build and query the retrieval index
``model ...``             :mod:`flows.cli.model`: convert, quantize, report weights
``train ...``             :mod:`flows.cli.train`: train and distil the models
``evaluate``              :mod:`flows.cli.evaluate`: prompt adherence on the toy world
``service apply``         :mod:`flows.cli.service`: the scheduled Prefect deployments
========================  ===========================================================

What they share (consoles, the user-error type, logging, how flows are run) is :mod:`flows.cli.common`.
The environment and logging are set up when a command runs (:func:`~flows.cli.common.configure_cli`),
not at import.
"""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli.bulk import bulk
from flows.cli.catalog import catalog_app
from flows.cli.common import configure_cli, stderr
from flows.cli.evaluate import evaluate
from flows.cli.generate import generate
from flows.cli.index import index_app
from flows.cli.model import model_app
from flows.cli.service import service_app
from flows.cli.train import train_app
from magic141.utils import InputError, one_line
from tasks.runtime.services import ServiceStartError

# Exit status of a command whose own services (Prefect's temporary server, a local Ray) did not start: try again
# later or run the service separately (sysexits' EX_TEMPFAIL).
EXIT_SERVICE_START = 75

app = typer.Typer(help="Magic 1-For-1 video generation pipeline.", no_args_is_help=True, add_completion=False)
app.command("generate")(generate)
app.command("bulk")(bulk)
app.add_typer(catalog_app, name="catalog")
app.add_typer(index_app, name="index")
app.add_typer(model_app, name="model")
app.add_typer(train_app, name="train")
app.command("evaluate")(evaluate)
app.add_typer(service_app, name="service")


@app.callback()
def _options(
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Also show the libraries' warnings, progress bars and Prefect's run log lines."
    )] = False,
) -> None:
    """Magic 1-For-1 video generation pipeline."""
    configure_cli(verbose)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``magic141``: one line on stderr and a non-zero status for every user error, no traceback."""
    return run(app, argv, "magic141")


def run(commands: typer.Typer, argv: list[str] | None, prog_name: str) -> int:
    """Run a typer app as a program named ``prog_name``; its errors become one line on stderr and an exit status:
    2 for user errors, 75 when the command's own services did not start, 1 for the rest."""
    command = typer.main.get_command(commands)
    try:
        status = command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except InputError as exc:
        stderr.print(f"{prog_name}: error: {one_line(exc)}", highlight=False, markup=False, soft_wrap=True)
        return 2
    except ServiceStartError as exc:
        stderr.print(f"{prog_name}: error: {exc}", highlight=False, markup=False, soft_wrap=True)
        return EXIT_SERVICE_START
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # usage errors: unknown option, value of the wrong type, ...
        stderr.print(f"{prog_name}: error: {exc.format_message()}", highlight=False, markup=False, soft_wrap=True)
        return 2
    except typer.Abort:
        stderr.print(f"{prog_name}: aborted", highlight=False)
        return 130
    except Exception as exc:  # the flow run already logged the traceback
        stderr.print(f"{prog_name}: error: {one_line(exc)}", highlight=False, markup=False, soft_wrap=True)
        return 1
    return status if isinstance(status, int) else 0
