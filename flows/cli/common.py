"""What every ``magic141`` subcommand shares: the output consoles, logging and how flows are run."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from magic141.utils import InputError, one_line
from tasks.runtime.services import ServiceStartError

DEFAULT_OUT_DIR = Path("out")  # the videos and catalog of generate, and the catalog the catalog commands read
# Text that is not read on a terminal (a pipe, a file, a CI log) is never cut or wrapped to 80 columns:
# tables take the width their values need. $COLUMNS still sets a width.
UNLIMITED_WIDTH = 100_000


stdout = Console()
stderr = Console(stderr=True)


def _fit_consoles() -> None:
    """Widths from the environment of the run: ``$COLUMNS``, else the terminal's, else unlimited."""
    columns = os.environ.get("COLUMNS", "")
    for console in (stdout, stderr):
        if columns.isdigit() and int(columns) > 0:
            console.width = int(columns)
        elif not console.is_terminal:
            console.width = UNLIMITED_WIDTH


LOG_FILE_ENV = "MAGIC141_LOG_FILE"
# Seconds Prefect's temporary API server may take to answer; its first start on a new Prefect home creates and
# migrates the database, which takes far longer than Prefect's default 20 s on a busy 2-core machine.
PREFECT_START_TIMEOUT_S = 300
START_PREFECT = (
    "start a server with 'prefect server start' and set PREFECT_API_URL to its API address "
    "(e.g. http://127.0.0.1:4200/api)"
)
# Libraries whose log records and warnings go to the log file, not the terminal, unless --verbose.
LIBRARY_LOGGERS = (
    "py.warnings", "torch", "transformers", "diffusers", "huggingface_hub", "accelerate", "optimum", "open_clip",
    "ray", "filelock", "urllib3", "PIL", "alembic", "httpx", "numexpr",
)
_library_handler: list[logging.Handler] = []


def default_log_file() -> Path:
    """``$MAGIC141_LOG_FILE``, else ``magic141/cli.log`` in the user's state folder (``$XDG_STATE_HOME``)."""
    explicit = os.environ.get(LOG_FILE_ENV)
    if explicit:
        return Path(explicit)
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "magic141" / "cli.log"


def configure_cli(verbose: bool) -> None:
    """Set up the environment and logging of one CLI process; called by ``main()``, before any command runs.

    The consoles take their width (:func:`_fit_consoles`). Prefect gets its settings (no analytics, a temporary server start-up time that holds on a busy
    machine, only warnings on the console: run logs still reach the Prefect API). Python warnings are
    logged. Unless ``verbose``, the libraries' records and warnings go to the log file
    (:func:`default_log_file`) instead of the terminal.
    """
    _fit_consoles()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(PREFECT_START_TIMEOUT_S))
    logging.captureWarnings(True)
    if verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "INFO")
        _library_handler.clear()
        return
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    handler: logging.Handler
    try:
        log_file = default_log_file()
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, delay=True)
    except OSError:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    _library_handler[:] = [handler]
    _route_library_logs()


def _route_library_logs() -> None:
    if not _library_handler:
        return
    for name in LIBRARY_LOGGERS:
        library_logger = logging.getLogger(name)
        for handler in list(library_logger.handlers):
            library_logger.removeHandler(handler)
        library_logger.addHandler(_library_handler[0])
        library_logger.propagate = False


def quiet_model_libraries(*, diffusers: bool = True, ray: bool = False) -> None:
    """Keep torch, transformers, diffusers (and Ray) off the terminal unless --verbose; call before loading models.

    These libraries install their own terminal handlers when imported, and draw progress bars while
    loading weights, so they are imported here first and their handlers replaced by the log file's.
    ``diffusers=False`` leaves diffusers unimported, for commands that never load it; ``ray=True``
    prepares Ray too, for commands that start or join a Ray cluster.
    """
    if not _library_handler:
        return
    import importlib

    import torch  # noqa: F401  (installs torch's stderr handlers, replaced below)

    if ray:
        importlib.import_module("ray")

    for name in ("transformers", "diffusers") if diffusers else ("transformers",):
        library = importlib.import_module(f"{name}.utils.logging")
        library.disable_progress_bar()
        library.disable_default_handler()
    _route_library_logs()


@contextlib.contextmanager
def prefect_api() -> Iterator[None]:
    """Flow runs in the block use ``PREFECT_API_URL``'s server, else Prefect's temporary server, started here.

    The temporary server gets ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`` (set by
    :func:`configure_cli`) to answer; if it does not, :class:`ServiceStartError` says how to run one instead,
    before the request has started anything.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    _tracebacks_to_log_file()
    if PREFECT_API_URL.value():
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    timeout = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
    try:
        SubprocessASGIServer().start(timeout=timeout)
    except RuntimeError as exc:
        logging.getLogger(__name__).info("Prefect's temporary server did not start: %s", exc)
        raise ServiceStartError(
            f"Prefect's temporary API server did not answer within {timeout} s; {START_PREFECT}, "
            f"or raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
        ) from None
    yield


class _TracebacksToLogFile(logging.Filter):
    """On Prefect's console, a failed run's record keeps its line and loses its traceback, which goes to the log
    file: a batch whose rows fail during an outage shows one line per failure, not a thousand lines of
    tracebacks. The record itself is not changed, so the Prefect API still gets the traceback."""

    def __init__(self, console: logging.Handler, log: logging.Handler) -> None:
        super().__init__()
        self.console, self.log = console, log

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info:
            return True
        self.log.handle(record)
        brief = copy.copy(record)
        brief.msg, brief.args = f"{record.getMessage()} (traceback in {default_log_file()})", ()
        brief.exc_info = brief.exc_text = brief.stack_info = None
        self.console.handle(brief)  # through the handler's other filters (a held-back run's lines stay held)
        return False


def _tracebacks_to_log_file() -> None:
    """Install :class:`_TracebacksToLogFile` on Prefect's console handlers (not with --verbose)."""
    if not _library_handler:
        return
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()
    for handler in {*logging.getLogger().handlers, *logging.getLogger("prefect").handlers}:
        if isinstance(handler, PrefectConsoleHandler) and not any(
                isinstance(f, _TracebacksToLogFile) for f in handler.filters):
            handler.addFilter(_TracebacksToLogFile(handler, _library_handler[0]))


def shown(value: object) -> str:
    """``value`` as the terminal may show it: no escape sequences or control characters from CSVs or the catalog."""
    from tasks.request import printable_text

    return printable_text(str(value))


def cell(value: object) -> str:
    """A table cell of ``value``: :func:`shown`, with rich markup escaped."""
    from rich.markup import escape

    return escape(shown(value))


def print_fields(fields: Iterable[tuple[str, object]], width: int) -> None:
    """Print ``name: value`` lines, names right-aligned to ``width``; values are shown as they are, never as markup."""
    for name, value in fields:
        stdout.print(f"{name:>{width}}: {shown(value)}", highlight=False, soft_wrap=True, markup=False)


@contextlib.contextmanager
def progress_bars(labels: Mapping[str, str] | None = None) -> Iterator[None]:
    """Draw a bar on stderr for each progress stage the flow reports (:mod:`tasks.runtime.progress`) while the block runs.

    ``labels`` maps the stages to show onto their bar names; without it every stage is shown by its name.
    When the block raises, the bars are removed: the error is what is left to read.
    """
    from tasks.runtime.progress import listening

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    progress = Progress(*columns, console=stderr, transient=False)
    bars: dict[str, Any] = {}

    def on_progress(stage: str, done: int, total: int) -> None:
        label = stage if labels is None else labels.get(stage)
        if label is None:
            return
        if stage not in bars:
            bars[stage] = progress.add_task(label, total=total)
        progress.update(bars[stage], completed=done, total=total)

    progress.start()
    try:
        with listening(on_progress):
            yield
    except BaseException:
        progress.live.transient = True
        progress.live.stop()  # not progress.stop(), which ends a display that is not a terminal with an empty line
        raise
    progress.stop()


class _Held(logging.Filter):
    """Keeps every record a handler is given instead of letting it emit them."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False


@contextlib.contextmanager
def bad_input_from_flow(*kinds: type[BaseException]) -> Iterator[None]:
    """Run a flow in the block, turning the errors of ``kinds`` it raises (bad input found inside it) into an InputError.

    Prefect's console log lines are held back while the block runs. If it raises one of ``kinds``,
    they are dropped (with the failed run's tracebacks) and the user reads one line; otherwise
    (success, or an internal failure, whose traceback is wanted) they are printed once it ends.
    The run's logs still reach the Prefect API as usual.
    """
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()
    held = {handler: _Held() for handler in logging.getLogger().handlers if isinstance(handler, PrefectConsoleHandler)}
    for handler, kept in held.items():
        handler.addFilter(kept)
    shown = True
    try:
        yield
    except kinds as exc:
        shown = False
        raise InputError(one_line(exc)) from None
    finally:
        for handler, kept in held.items():
            handler.removeFilter(kept)
            if shown:
                for record in kept.records:
                    handler.handle(record)
