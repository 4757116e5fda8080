"""Progress of long stages, shown in the Prefect UI (progress artifacts) and to in-process listeners.

The CLI registers a listener to draw its progress bars; inside a flow run each stage also keeps a
Prefect progress artifact up to date, throttled so a fast sampler does not flood the API.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import FlowRunContext, TaskRunContext

logger = logging.getLogger(__name__)

Listener = Callable[[str, int, int], None]

_listeners: list[Listener] = []
_lock = threading.Lock()


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Call ``listener(stage, done, total)`` for every progress update while the block runs."""
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)


class StageProgress:
    """Progress of one stage: ``update(done, total)`` notifies listeners and the Prefect artifact."""

    def __init__(self, stage: str, description: str, min_interval_s: float = 0.5) -> None:
        self.stage = stage
        self.description = description
        self.min_interval_s = min_interval_s
        self._artifact_id = None
        self._last_sent = 0.0
        if FlowRunContext.get() is not None or TaskRunContext.get() is not None:
            self._artifact_id = create_progress_artifact(progress=0.0, description=description)

    def update(self, done: int, total: int) -> None:
        with _lock:
            listeners = list(_listeners)
        for listener in listeners:
            listener(self.stage, done, total)
        now = time.monotonic()
        finished = done >= total
        if self._artifact_id is not None and (finished or now - self._last_sent >= self.min_interval_s):
            self._last_sent = now
            update_progress_artifact(self._artifact_id, progress=100.0 * done / max(total, 1))
