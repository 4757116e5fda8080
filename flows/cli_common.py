"""What every ``magic141`` subcommand shares: the output consoles and the user-error type."""

from __future__ import annotations

import contextlib
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
    """
    from tasks.progress import listening

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr, transient=False) as progress:
        bars: dict[str, Any] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            label = stage if labels is None else labels.get(stage)
            if label is None:
                return
            if stage not in bars:
                bars[stage] = progress.add_task(label, total=total)
            progress.update(bars[stage], completed=done, total=total)

        with listening(on_progress):
            yield
