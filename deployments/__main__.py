"""``python -m deployments``: create or update the work pools, the GPU limit and the deployments on ``PREFECT_API_URL``.

On the first run of the service it also creates the inbox folders and, when the index folder has no
index yet, builds it once from the corpus before anything is scheduled: the inbox's first batches
would otherwise be refused until the nightly rebuild.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from flows.cli_common import UserError, configure_cli, quiet_model_libraries, stderr, stdout
from magic141.presets import default_preset_name
from magic141.utils import first_line

START_SERVER = (
    "start the server with 'prefect server start' and set PREFECT_API_URL to its API address "
    "(e.g. http://127.0.0.1:4200/api)"
)


def _parser() -> argparse.ArgumentParser:
    from deployments.rebuild_index import NIGHTLY_CRON
    from deployments.service import INBOX_CRON
    from tasks.request import QUANTIZATION_LEVELS

    parser = argparse.ArgumentParser(prog="python -m deployments", description=__doc__)
    parser.add_argument("--inbox", required=True, type=Path, help="folder watched for prompt CSVs")
    parser.add_argument("--out-dir", required=True, type=Path, help="folder the videos go to")
    parser.add_argument("--catalog", default=os.environ.get("MAGIC141_CATALOG_URL"),
                        help="catalog URL (default: $MAGIC141_CATALOG_URL)")
    parser.add_argument("--corpus", action="append", default=[], type=Path, help="image corpus folder (repeatable)")
    parser.add_argument("--index-dir", type=Path, default=os.environ.get("MAGIC141_INDEX_DIR"),
                        help="retrieval index folder (default: $MAGIC141_INDEX_DIR)")
    parser.add_argument("--inbox-cron", default=INBOX_CRON, help=f"when the inbox is read (default {INBOX_CRON!r})")
    parser.add_argument("--index-cron", default=NIGHTLY_CRON, help=f"when the index is rebuilt (default {NIGHTLY_CRON!r})")
    parser.add_argument("--timezone", default="UTC")
    parser.add_argument("--preset", default=default_preset_name(),
                        help="model preset of the bulk runs (default: $MAGIC141_PRESET, else toy: its trained weights)")
    parser.add_argument("--weights", type=Path, help="weights folder or JSON file of the bulk runs (see magic141 generate)")
    parser.add_argument("--quantize", help=f"quantize the bulk runs' model on load: {' or '.join(QUANTIZATION_LEVELS)}")
    parser.add_argument("--low-memory", action="store_true",
                        help="bulk runs keep each model on the GPU only while it runs")
    parser.add_argument("--clip-model", default="tiny",
                        help="CLIP model of the nightly index rebuild: 'toy' (trained), 'tiny' (random) or an open_clip "
                             "name such as ViT-B-32 (default: tiny)")
    parser.add_argument("--clip-weights", type=Path, metavar="FILE",
                        help="local weights file of --clip-model (needed for every model but tiny)")
    parser.add_argument("--workers", type=int, default=0, help="Ray render actors per bulk run (0: in process)")
    parser.add_argument("--gpu-slots", type=int, default=1, help="renders at once across all runs (the 'gpu' limit)")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="also show the libraries' warnings and Prefect's log lines")
    return parser


def _error(message: str) -> int:
    stderr.print(f"python -m deployments: error: {message}", highlight=False, markup=False, soft_wrap=True)
    return 2


def _first_run(config: Any) -> None:
    """Create the inbox folders; build the retrieval index now if ``config.index_dir`` has none."""
    from retrieval_index.store import current_version

    for folder in (config.inbox, config.inbox / "done", config.inbox / "failed"):
        folder.mkdir(parents=True, exist_ok=True)
    if current_version(config.index_dir) is not None:
        return
    from flows.cli_common import bad_input_from_flow, prefect_api, progress_bars
    from flows.cli_index import STAGE_LABELS
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


def main(argv: list[str] | None = None) -> int:
    """Apply the service; one line on stderr and status 2 for bad arguments or an unusable Prefect API."""
    argv = sys.argv[1:] if argv is None else argv
    configure_cli(verbose=bool({"--verbose", "-v"} & set(argv)))
    quiet_model_libraries()
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectException
    from prefect.settings import PREFECT_API_URL

    from deployments.service import GPU_POOL, PROCESS_POOL, ServiceConfig, apply_service, check_service
    from tasks.catalog import CatalogError

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    problems = [name for name, value in (("--catalog", args.catalog), ("--index-dir", args.index_dir)) if not value]
    if problems or not args.corpus:
        return _error("give " + ", ".join(problems + ([] if args.corpus else ["--corpus"])))
    api_url = PREFECT_API_URL.value()
    if not api_url:
        return _error(f"PREFECT_API_URL is not set, so there is no Prefect server to deploy to; {START_SERVER}")
    config = ServiceConfig(
        inbox=args.inbox, out_dir=args.out_dir, catalog_url=args.catalog, corpus=tuple(args.corpus),
        index_dir=Path(args.index_dir), inbox_cron=args.inbox_cron, index_cron=args.index_cron,
        timezone=args.timezone, preset=args.preset, weights=args.weights, quantize=args.quantize,
        low_memory=args.low_memory, workers=args.workers,
        gpu_slots=args.gpu_slots, clip_model=args.clip_model, clip_weights=args.clip_weights,
    )
    try:
        check_service(config)
        with get_client(sync_client=True) as client:
            client.hello()  # the server answers before anything is built or created
        _first_run(config)
        applied = apply_service(config)
    except (ValueError, CatalogError, UserError) as exc:
        return _error(first_line(exc))
    except httpx.TransportError as exc:
        return _error(f"cannot reach the Prefect API at {api_url} ({first_line(exc)}); {START_SERVER}")
    except (httpx.HTTPError, PrefectException) as exc:
        return _error(
            f"the Prefect API at {api_url} refused the request ({first_line(exc)}); check that PREFECT_API_URL "
            f"is the server's API address (ending in /api) and the server is healthy"
        )
    for name, deployment_id in applied.items():
        stdout.print(f"{name}: {deployment_id}", highlight=False, markup=False, soft_wrap=True)
    stdout.print(
        f"start workers: prefect worker start --pool {PROCESS_POOL}  and  prefect worker start --pool {GPU_POOL}",
        highlight=False, markup=False, soft_wrap=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
