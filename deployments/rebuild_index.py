"""Nightly rebuild of the retrieval index as a Prefect deployment.

``rebuild_index_deployment(...)`` returns the deployment object; whoever assembles the project's
deployments serves or deploys it (``prefect.serve(...)`` or ``.deploy(work_pool_name=...)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from deployments.schedules import NIGHTLY_CRON
from deployments.source import PROJECT_DIR, from_checkout
from flows.rebuild_index import rebuild_index

DEPLOYMENT_NAME = "rebuild-index"


def rebuild_index_deployment(
    corpus: Sequence[str | Path],
    index_dir: str | Path,
    catalog_url: str | dict[str, object],
    *,
    model: str = "tiny",
    pretrained: str | Path | None = None,
    cron: str = NIGHTLY_CRON,
    timezone: str = "UTC",
    recall_target: float = 0.95,
    code_dir: Path | None = None,
) -> RunnerDeployment:
    """An incremental rebuild of ``index_dir`` from ``corpus`` on ``cron`` (03:00 every night by default).

    Paths are made absolute here, since scheduled runs start in the worker's own folder. At most
    one run at a time: a night's build that overruns is not joined by the next. ``catalog_url`` may
    be a reference to a Secret block holding it; ``code_dir`` is the checkout the runs start in
    (default: this one).
    """

    parameters = {
        "corpus": [str(Path(source).absolute()) for source in corpus],
        "index_dir": str(Path(index_dir).absolute()),
        "catalog_url": catalog_url,
        "model": model,
        "pretrained": None if pretrained is None else str(Path(pretrained).absolute()),
        "incremental": True,
        "recall_target": recall_target,
    }
    return from_checkout(rebuild_index, code_dir or PROJECT_DIR).to_deployment(
        name=DEPLOYMENT_NAME,
        schedules=[Cron(cron, timezone=timezone)],
        parameters=parameters,
        concurrency_limit=1,
        description="Nightly incremental rebuild of the CLIP/FAISS retrieval index.",
        tags=["retrieval-index", "nightly"],
    )
