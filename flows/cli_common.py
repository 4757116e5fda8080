"""What every ``magic141`` subcommand shares: the output consoles, the user-error type and how flows are run."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

stdout = Console()
stderr = Console(stderr=True)


class UserError(Exception):
    """A problem with what the user asked for: reported as one line, exit status 2."""


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (its type name when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def print_fields(fields: Iterable[tuple[str, object]], width: int) -> None:
    """Print ``name: value`` lines, names right-aligned to ``width``; values are shown as they are, never as markup."""
    for name, value in fields:
        stdout.print(f"{name:>{width}}: {value}", highlight=False, soft_wrap=True, markup=False)


@contextlib.contextmanager
def progress_bars(labels: Mapping[str, str] | None = None) -> Iterator[None]:
    """Draw a bar on stderr for each progress stage the flow reports (:mod:`tasks.progress`) while the block runs.

    ``labels`` maps the stages to show onto their bar names; without it every stage is shown by its name.
    When the block raises, the bars are removed: the error is what is left to read.
    """
    from tasks.progress import listening

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
    """Run a flow in the block, turning the errors of ``kinds`` it raises (bad input found inside it) into a UserError.

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
        raise UserError(one_line(exc)) from None
    finally:
        for handler, kept in held.items():
            handler.removeFilter(kept)
            if shown:
                for record in kept.records:
                    handler.handle(record)
