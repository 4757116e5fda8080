"""``magic141 service apply`` (also ``python -m deployments``): the scheduled service on ``PREFECT_API_URL``.

It creates or updates the work pools, the GPU limit and the deployments. On the first run of the
service it also creates the inbox folders and, when the index folder has no index yet, builds it
once from the corpus before anything is scheduled: the inbox's first batches would otherwise be
refused until the nightly rebuild.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from deployments.schedules import INBOX_CRON, NIGHTLY_CRON
from flows.cli.common import configure_cli, quiet_model_libraries, stdout
from magic141.presets import default_preset_name
from magic141.utils import InputError, first_line
from tasks.request import QUANTIZATION_LEVELS

START_SERVER = (
    "start the server with 'prefect server start' and set PREFECT_API_URL to its API address "
    "(e.g. http://127.0.0.1:4200/api)"
)

service_app = typer.Typer(help="Run bulk generation and index rebuilds as scheduled Prefect deployments.",
                          no_args_is_help=True)


@service_app.callback()
def _service() -> None:
    """Run bulk generation and index rebuilds as scheduled Prefect deployments."""


def _first_run(config: Any) -> None:
    """Create the inbox folders; build the retrieval index now if ``config.index_dir`` has none."""
    from retrieval_index.store import current_version

    for folder in (config.inbox, config.inbox / "done", config.inbox / "failed"):
        folder.mkdir(parents=True, exist_ok=True)
    if current_version(config.index_dir) is not None:
        return
    from flows.cli.common import bad_input_from_flow, prefect_api, progress_bars
    from flows.cli.index import STAGE_LABELS
    from flows.rebuild_index import rebuild_index
    from retrieval_index.errors import CorpusError
    from tasks.catalog import hide_password

    stdout.print(f"no retrieval index in {config.index_dir} yet: building it once now, before the inbox is scheduled",
                 highlight=False, markup=False, soft_wrap=True)
    with prefect_api(), bad_input_from_flow(CorpusError), progress_bars(STAGE_LABELS):
        result = rebuild_index(
            [str(path.absolute()) for path in config.corpus], str(config.index_dir.absolute()),
            hide_password(config.catalog_url), config.clip_model,
            None if config.clip_weights is None else str(config.clip_weights.absolute()),
        )
    stdout.print(f"index {result.version} built: {result.count} image(s)", highlight=False, markup=False,
                 soft_wrap=True)


def apply(
    inbox: Annotated[Path, typer.Option(help="Folder watched for prompt CSVs.")],
    out_dir: Annotated[Path, typer.Option(help="Folder the videos go to.")],
    catalog: Annotated[str | None, typer.Option(envvar="MAGIC141_CATALOG_URL", help="Catalog URL (default: $MAGIC141_CATALOG_URL).")] = None,
    corpus: Annotated[list[Path] | None, typer.Option(help="Image corpus folder (repeatable).")] = None,
    index_dir: Annotated[Path | None, typer.Option(envvar="MAGIC141_INDEX_DIR", help="Retrieval index folder (default: $MAGIC141_INDEX_DIR).")] = None,
    inbox_cron: Annotated[str, typer.Option(help="When the inbox is read.")] = INBOX_CRON,
    index_cron: Annotated[str, typer.Option(help="When the index is rebuilt.")] = NIGHTLY_CRON,
    timezone: Annotated[str, typer.Option(help="Time zone of the schedules.")] = "UTC",
    preset: Annotated[str | None, typer.Option(envvar="MAGIC141_PRESET", help="Model preset of the bulk runs (default: toy, its trained weights).")] = None,
    weights: Annotated[Path | None, typer.Option(help="Weights folder or JSON file of the bulk runs (see magic141 generate).")] = None,
    quantize: Annotated[str | None, typer.Option(help=f"Quantize the bulk runs' model on load: {' or '.join(QUANTIZATION_LEVELS)}.")] = None,
    low_memory: Annotated[bool, typer.Option("--low-memory", help="Bulk runs keep each model on the GPU only while it runs.")] = False,
    clip_model: Annotated[str, typer.Option(help="CLIP model of the nightly index rebuild: 'toy' (trained), 'tiny' (random) or an open_clip name such as ViT-B-32.")] = "tiny",
    clip_weights: Annotated[Path | None, typer.Option(metavar="FILE", help="Local weights file of --clip-model (needed for every model but tiny).")] = None,
    workers: Annotated[int, typer.Option(help="Ray render actors per bulk run (0: in process).")] = 0,
    gpu_slots: Annotated[int, typer.Option(help="Renders at once across all runs (the 'gpu' limit).")] = 1,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also show the libraries' warnings and Prefect's log lines.")] = False,
) -> None:
    """Create or update the work pools, the GPU limit and the deployments on PREFECT_API_URL."""
    if verbose:
        configure_cli(verbose=True)
    quiet_model_libraries()
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectException
    from prefect.settings import PREFECT_API_URL

    from deployments.service import GPU_POOL, PROCESS_POOL, ServiceConfig, apply_service, check_service
    from tasks.catalog import CatalogError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    problems = [name for name, value in (("--catalog", catalog), ("--index-dir", index_dir)) if not value]
    if problems or not corpus:
        raise InputError("give " + ", ".join(problems + ([] if corpus else ["--corpus"])))
    api_url = PREFECT_API_URL.value()
    if not api_url:
        raise InputError(f"PREFECT_API_URL is not set, so there is no Prefect server to deploy to; {START_SERVER}")
    config = ServiceConfig(
        inbox=inbox, out_dir=out_dir, catalog_url=catalog, corpus=tuple(corpus), index_dir=Path(index_dir),
        inbox_cron=inbox_cron, index_cron=index_cron, timezone=timezone, preset=preset or default_preset_name(),
        weights=weights, quantize=quantize, low_memory=low_memory, workers=workers, gpu_slots=gpu_slots,
        clip_model=clip_model, clip_weights=clip_weights,
    )
    try:
        check_service(config)
        with get_client(sync_client=True) as client:
            client.hello()  # the server answers before anything is built or created
        _first_run(config)
        applied = apply_service(config)
    except (ValueError, CatalogError) as exc:
        raise InputError(first_line(exc)) from None
    except httpx.TransportError as exc:
        raise InputError(f"cannot reach the Prefect API at {api_url} ({first_line(exc)}); {START_SERVER}") from None
    except (httpx.HTTPError, PrefectException) as exc:
        raise InputError(
            f"the Prefect API at {api_url} refused the request ({first_line(exc)}); check that PREFECT_API_URL "
            f"is the server's API address (ending in /api) and the server is healthy"
        ) from None
    for name, deployment_id in applied.items():
        stdout.print(f"{name}: {deployment_id}", highlight=False, markup=False, soft_wrap=True)
    stdout.print(
        f"start workers: prefect worker start --pool {PROCESS_POOL}  and  prefect worker start --pool {GPU_POOL}",
        highlight=False, markup=False, soft_wrap=True,
    )


service_app.command("apply")(apply)
