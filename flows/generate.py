"""The ``generate`` flow: prompt (+ optional image) -> prior -> render (windows stitched into the mp4) -> record."""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run

from tasks.produce import produce_video
from tasks.record import VideoRecord
from tasks.request import GenerateRequest
from tasks.runtime.publish import sweep_work_dirs

logger = logging.getLogger(__name__)


@flow(name="generate", log_prints=False)
def generate(request: GenerateRequest) -> VideoRecord:
    """Generate one video and record its provenance; the catalog row is written only once the mp4 is complete.

    The request was checked when it was built (:class:`GenerateRequest`). The prior's decision is recorded as
    ``prior_details``. Work folders that dead runs left in the output folder are removed first.
    """
    folder = Path(request.output.path).parent
    folder.mkdir(exist_ok=True)  # a folder to create was allowed when the output was built
    sweep_work_dirs(folder, request.output.url)
    return produce_video(request, flow_run.get_id())
