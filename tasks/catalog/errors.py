"""The catalog's error: one line that names the problem and what to do."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError

from magic141.utils import first_line, one_line


class CatalogError(Exception):
    """A catalog problem, told in one line that names it and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


def short_reason(exc: BaseException) -> str:
    """First line of the driver's message, without SQLAlchemy's SQL echo."""
    orig = exc.orig if isinstance(exc, DBAPIError) else None
    return first_line(orig or exc)
