"""The video as the catalog records it, filled in stage by stage, and the record stage that writes its row."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task

from tasks.catalog import open_catalog
from tasks.provenance import combined_fingerprint, library_versions, model_details

if TYPE_CHECKING:
    from tasks.prior import PriorResult
    from tasks.request import GenerateRequest


@dataclass(frozen=True)
class VideoRecord:
    """One video from render to catalog row.

    The render stage fills the file, its windows and the model's fingerprint; producing it adds the
    first frame (``prior``), the published paths and the stage timings; recording adds ``video_id``.
    ``added`` is False when another writer had already catalogued the video's content key.
    """

    path: str
    sha256: str
    bytes: int
    frames: int
    fps: int
    width: int
    height: int
    windows: list[dict[str, Any]]
    window_layout: list[dict[str, int]]
    fingerprint: str  # the video model's weights
    stage_seconds: dict[str, float] = field(default_factory=dict)
    prior: PriorResult | None = None
    prior_path: str | None = None  # where the first frame is kept: the prior's own file, or beside the video
    thumbnail_path: str | None = None
    video_id: str | None = None
    added: bool = True

    @property
    def prior_source(self) -> str | None:
        return None if self.prior is None else self.prior.source

    def catalog_fields(self, request: GenerateRequest, flow_run_id: str | None) -> dict[str, Any]:
        """The catalog row of this video made for ``request`` (its windows go in :func:`record_video`)."""
        if self.prior is None:
            raise ValueError("a video is catalogued with its first frame; produce it first")
        render, output = request.render, request.output
        fields: dict[str, Any] = {
            "prompt": request.prompt.text,
            "negative_prompt": request.prompt.negative,
            "seed": render.seed,
            "prior_source": self.prior.source,
            "prior_image_path": self.prior_path,
            "prior_image_sha256": self.prior.sha256,
            "prior_details": self.prior.details,
            "preset": request.model.preset,
            "weights_fingerprint": combined_fingerprint(self.fingerprint, self.prior.fingerprint),
            "steps": render.steps,
            "guidance": render.guidance,
            "true_cfg": render.true_cfg if render.true_cfg > 1 else None,
            "seconds": render.seconds,
            "window_layout": self.window_layout,
            "windows_mode": render.windows,
            "output_path": self.path,
            "output_sha256": self.sha256,
            "output_bytes": self.bytes,
            "frames": self.frames,
            "fps": self.fps,
            "width": self.width,
            "height": self.height,
            "stage_timings": self.stage_seconds,
            "flow_run_id": flow_run_id,
            "library_versions": library_versions(),
            "model_details": model_details(request.model.preset, request.model.weights),
            "thumbnail_path": self.thumbnail_path,
        }
        if output.content_key is not None:
            fields.update(content_key=output.content_key, batch_id=output.batch_id)
        return fields


@task(name="record")
def record_video(catalog_url: str, fields: dict[str, Any], windows: list[dict[str, Any]]) -> str:
    """Insert the video's provenance row and one row per rendered window; return the video's id."""
    with open_catalog(catalog_url) as catalog:
        video_id = catalog.add_video(windows=windows, **fields)
    get_run_logger().info("catalogued video %s", video_id)
    return video_id


@task(name="record-once")
def record_video_once(catalog_url: str, fields: dict[str, Any], windows: list[dict[str, Any]]) -> tuple[str, bool]:
    """Like :func:`record_video` for a video with a ``content_key``: return (video id, whether this call added it).

    When a video with the same content key is already catalogued, nothing is written and that
    video's id comes back with ``False``.
    """
    with open_catalog(catalog_url) as catalog:
        video_id, added = catalog.add_video_once(windows=windows, **fields)
    if added:
        get_run_logger().info("catalogued video %s", video_id)
    else:
        get_run_logger().info("content key %s is already catalogued as video %s", fields["content_key"], video_id)
    return video_id, added
