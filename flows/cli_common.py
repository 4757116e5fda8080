"""What every ``magic141`` subcommand shares: the output consoles and the user-error type."""

from __future__ import annotations

from rich.console import Console

stdout = Console()
stderr = Console(stderr=True)


class UserError(Exception):
    """A problem with what the user asked for: reported as one line, exit status 2."""
