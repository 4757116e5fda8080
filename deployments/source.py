"""Where deployed flows run from: this checkout, declared in each deployment as its working folder."""

from __future__ import annotations

from pathlib import Path

from prefect import Flow

PROJECT_DIR = Path(__file__).resolve().parents[1]


def from_checkout(flow: Flow, code_dir: Path) -> Flow:
    """``flow`` loaded from the checkout ``code_dir`` (``Flow.from_source`` on a local folder).

    Its deployments get a pull step that sets the working folder to ``code_dir``, so a process
    worker started in any folder runs the flow from there.
    """
    module = Path(flow.fn.__code__.co_filename).resolve().relative_to(PROJECT_DIR).as_posix()
    return flow.from_source(source=str(code_dir.resolve()), entrypoint=f"{module}:{flow.fn.__name__}")
