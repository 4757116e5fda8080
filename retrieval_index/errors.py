"""The one error type of the retrieval index: a problem told in one line, with what to do about it."""

from __future__ import annotations

from magic141.utils import InputError


class RetrievalIndexError(InputError):
    """A retrieval-index problem (bad input, missing or corrupt index), told in one line that says what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class CorpusError(RetrievalIndexError):
    """The corpus itself cannot be indexed (no usable image): the user's input, not the build, is at fault."""
