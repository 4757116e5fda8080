"""The project's Prefect service: work pools, the GPU concurrency limit and the scheduled deployments.

- ``bulk-generate``: the ``bulk-inbox`` flow on a cron schedule (every 5 minutes by default) on
  the GPU work pool: every settled CSV in the inbox becomes a batch, then moves to ``done/`` or
  ``failed/``.
- ``rebuild-index``: the nightly incremental index rebuild (:mod:`deployments.rebuild_index`) on
  the process work pool.
- Work pools ``magic141-process`` and ``magic141-gpu`` (process type; start a worker for each),
  and the global concurrency limit ``gpu`` whose slots each render holds.

Both deployments run their flows from this checkout (``code_dir``): the deployment's pull step sets
the working folder there (``Flow.from_source`` on a local folder), so a process worker started
anywhere finds ``flows/``. A catalog URL with a password is stored in the Prefect ``Secret`` block
``magic141-catalog-url`` and the deployments' parameters reference the block, never the password.

:func:`apply_service` checks the whole configuration (schedules, time zone, CLIP model and
weights, slots) before it contacts the server, then creates or updates all of it against the
configured ``PREFECT_API_URL``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
    WorkPoolCreate,
)
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import RunnerDeployment
from prefect.exceptions import ObjectNotFound
from prefect.schedules import Cron
from prefect.workers.process import ProcessWorker

from deployments.rebuild_index import rebuild_index_deployment
from deployments.schedules import INBOX_CRON, NIGHTLY_CRON
from deployments.source import PROJECT_DIR, from_checkout
from flows.bulk import GPU_LIMIT, bulk_inbox
from magic141.presets import default_preset_name
from magic141.utils import InputError
from retrieval_index.embedder import EmbedderSpec
from tasks.catalog import has_password
from tasks.request import ModelSpec, check_workers

logger = logging.getLogger(__name__)

BULK_DEPLOYMENT = "bulk-generate"
PROCESS_POOL = "magic141-process"
GPU_POOL = "magic141-gpu"
CATALOG_SECRET = "magic141-catalog-url"


@dataclass(frozen=True)
class ServiceConfig:
    """Where the service reads and writes, and how often it runs."""

    inbox: Path
    out_dir: Path
    catalog_url: str
    corpus: tuple[Path, ...]
    index_dir: Path
    inbox_cron: str = INBOX_CRON
    index_cron: str = NIGHTLY_CRON
    timezone: str = "UTC"
    preset: str = field(default_factory=default_preset_name)
    weights: Path | None = None
    quantize: str | None = None
    low_memory: bool = False
    workers: int = 0
    gpu_slots: int = 1
    clip_model: str = "tiny"
    clip_weights: Path | None = None
    code_dir: Path = PROJECT_DIR  # the checkout the workers run the flows from


def _schedule_valid(cron: str, timezone: str) -> bool:
    """Whether the Prefect server would accept ``cron`` in ``timezone`` (the schema it validates with)."""
    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValueError:
        return False
    return True


def check_service(config: ServiceConfig) -> None:
    """Raise ``ValueError`` naming the first bad setting; contacts nothing, so bad input creates nothing."""
    if config.gpu_slots < 1:
        raise InputError(f"gpu slots must be at least 1, got {config.gpu_slots}")
    if not config.timezone or not _schedule_valid("0 0 * * *", config.timezone):
        raise InputError(f"unknown time zone {config.timezone!r}; use an IANA name such as UTC or Europe/Berlin")
    for what, cron in (("inbox", config.inbox_cron), ("index", config.index_cron)):
        if not _schedule_valid(cron, config.timezone):
            raise InputError(
                f"{what} schedule {cron!r} is not a cron expression; give five fields such as '*/5 * * * *'"
            )
    weights = None if config.clip_weights is None else str(config.clip_weights)
    EmbedderSpec(config.clip_model, weights).check()
    weights = None if config.weights is None else str(config.weights)
    ModelSpec(config.preset, weights, config.quantize, config.low_memory)  # refuses unknown presets, levels, folders
    check_workers(config.workers)
    if not (config.code_dir / "flows" / "bulk.py").is_file():
        raise InputError(f"code folder {str(config.code_dir)!r} is not a checkout of this project (no flows/bulk.py)")


def catalog_parameter(catalog_url: str) -> str | dict[str, object]:
    """The deployments' ``catalog_url`` parameter: the URL, or a reference to a Secret block when it has a password.

    The block is created or updated here (Prefect resolves the reference when a run starts).
    """
    if not has_password(catalog_url):
        return catalog_url
    block_id = Secret(value=catalog_url).save(CATALOG_SECRET, overwrite=True)
    logger.info("catalog URL stored in the Secret block %s", CATALOG_SECRET)
    return {"$ref": {"block_document_id": str(block_id)}}


def bulk_inbox_deployment(
    config: ServiceConfig, catalog: str | dict[str, object] | None = None
) -> RunnerDeployment:
    """The ``bulk-generate`` deployment: ``bulk-inbox`` on ``config.inbox_cron``, one run at a time.

    ``catalog`` is the catalog parameter (:func:`catalog_parameter`; default: the URL as it is).
    """
    parameters = {
        "inbox": str(config.inbox.absolute()),
        "out_dir": str(config.out_dir.absolute()),
        "catalog_url": config.catalog_url if catalog is None else catalog,
        "index_dir": str(config.index_dir.absolute()),
        "preset": config.preset,
        "weights": None if config.weights is None else str(config.weights.absolute()),
        "quantize": config.quantize,
        "low_memory": config.low_memory,
        "workers": config.workers,
        "gpu_limit": GPU_LIMIT,
    }
    return from_checkout(bulk_inbox, config.code_dir).to_deployment(
        name=BULK_DEPLOYMENT,
        schedules=[Cron(config.inbox_cron, timezone=config.timezone)],
        parameters=parameters,
        concurrency_limit=1,
        description="Bulk production: every prompt CSV dropped into the inbox becomes a catalogued batch.",
        tags=["bulk", "gpu"],
    )


def service_deployments(
    config: ServiceConfig, catalog: str | dict[str, object] | None = None
) -> list[tuple[RunnerDeployment, str]]:
    """Each deployment with the work pool it runs on; ``catalog`` as in :func:`bulk_inbox_deployment`."""
    rebuild = rebuild_index_deployment(
        config.corpus, config.index_dir, config.catalog_url if catalog is None else catalog,
        model=config.clip_model, pretrained=config.clip_weights, cron=config.index_cron, timezone=config.timezone,
        code_dir=config.code_dir,
    )
    return [(bulk_inbox_deployment(config, catalog), GPU_POOL), (rebuild, PROCESS_POOL)]


def _ensure_pool(name: str, description: str) -> None:
    pool = WorkPoolCreate(
        name=name, type=ProcessWorker.type, description=description,
        base_job_template=ProcessWorker.get_default_base_job_template(),
    )
    with get_client(sync_client=True) as client:
        client.create_work_pool(pool, overwrite=True)
    logger.info("work pool %s ready", name)


def _ensure_limit(name: str, slots: int) -> None:
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
        else:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=slots, active=True))
    logger.info("global concurrency limit %s: %d slot(s)", name, slots)


def apply_service(config: ServiceConfig) -> dict[str, UUID]:
    """Create or update the pools, the GPU limit and the deployments; return each deployment's id by name.

    Raises ``ValueError`` for a bad configuration before anything is created; errors of the Prefect
    client (``httpx.HTTPError``, ``prefect.exceptions.PrefectException``) pass through.
    """
    check_service(config)
    deployments = service_deployments(config, catalog_parameter(config.catalog_url))
    _ensure_pool(PROCESS_POOL, "CPU work: retrieval-index rebuilds.")
    _ensure_pool(GPU_POOL, "GPU machines: bulk video production (one worker per GPU machine).")
    _ensure_limit(GPU_LIMIT, config.gpu_slots)
    applied = {}
    for deployment, pool in deployments:
        applied[deployment.name] = deployment.apply(work_pool_name=pool)
        logger.info("deployment %s applied on work pool %s", deployment.name, pool)
    return applied
