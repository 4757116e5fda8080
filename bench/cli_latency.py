"""Start-up latency of the light CLI commands, against the bare imports they need, and `make demo`'s wall time.

    python bench/cli_latency.py [--runs 5] [--no-demo]

Each command runs ``--runs`` times as a new process (the median is reported) beside
``python -c "import torch, faiss, open_clip"``, measured in the same run: ``index query`` needs
exactly those, so its ratio to them is the CLI's own overhead. Targets on the 2-core machine:
``--help`` and ``catalog list`` at most 1 s, ``index query`` at most 1.5x the bare imports,
``make demo`` (after the install) at most 60 s. Writes the ``cli_latency`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_section  # noqa: E402

logger = logging.getLogger("bench.cli_latency")

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MAGIC141 = str(BIN / "magic141")


def _timed(command: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def _median(command: list[str], runs: int, env: dict[str, str], cwd: Path) -> float:
    _timed(command, env, cwd)  # warm the page cache, as a user's second command would find it
    return statistics.median(_timed(command, env, cwd) for _ in range(runs))


def _prepare(work: Path, env: dict[str, str]) -> str:
    """A demo corpus, its index and a catalog with one video, made with the real commands; the video's id."""
    subprocess.run([sys.executable, "-c", "from retrieval_index.demo import make_demo_corpus; "
                    f"make_demo_corpus({str(work / 'corpus')!r})"], env=env, cwd=work, check=True)
    subprocess.run([MAGIC141, "index", "build", "corpus", "--index-dir", "index"], env=env, cwd=work, check=True,
                   stdout=subprocess.DEVNULL)
    made = subprocess.run([MAGIC141, "generate", "--prompt", "a red circle", "--seconds", "1", "--out", "clip.mp4",
                           "--catalog", f"sqlite:///{work / 'catalog.db'}", "--json"], env=env, cwd=work, check=True,
                          capture_output=True, text=True)
    return json.loads(made.stdout)["id"]


def _demo_wall(env: dict[str, str]) -> float:
    """``make demo`` in a fresh clone of the working tree's HEAD, its environment already installed."""
    with tempfile.TemporaryDirectory(prefix="magic141-demo-") as clone:
        subprocess.run(["git", "clone", "--quiet", str(REPO), clone], check=True)
        os.symlink(REPO / ".venv", Path(clone) / ".venv")
        os.symlink(REPO / ".uv", Path(clone) / ".uv")
        subprocess.run(["make", "-s", "-C", clone, "--touch", ".venv/.synced"], env=env, check=True)
        started = time.perf_counter()
        subprocess.run(["make", "-s", "-C", clone, "demo"], env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-demo", action="store_true", help="skip the make demo wall time")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory(prefix="magic141-cli-latency-") as folder:
        work = Path(folder)
        home = work / "home"
        home.mkdir()
        env = {name: value for name, value in os.environ.items() if name not in ("PREFECT_API_URL", "MAGIC141_INDEX_DIR")}
        env.update(HOME=str(home), PYTHONDONTWRITEBYTECODE="1")
        video_id = _prepare(work, env)
        catalog = f"sqlite:///{work / 'catalog.db'}"
        bare = [sys.executable, "-c", "import torch, faiss, open_clip"]
        commands = {
            "magic141 --help": ([MAGIC141, "--help"], 1.0, None),
            "magic141 catalog list": ([MAGIC141, "catalog", "list", "--catalog", catalog], 1.0, None),
            "magic141 catalog show ID": ([MAGIC141, "catalog", "show", video_id, "--catalog", catalog], 1.0, None),
            "magic141 catalog export": ([MAGIC141, "catalog", "export", "--catalog", catalog], None, None),
            "magic141 index info": ([MAGIC141, "index", "info", "--index-dir", "index"], 1.0, None),
            'magic141 index query "a red circle" -k 3': (
                [MAGIC141, "index", "query", "a red circle", "-k", "3", "--index-dir", "index"], None, 1.5),
        }
        bare_s = _median(bare, args.runs, env, work)
        logger.info("bare imports: %.2f s", bare_s)
        rows = [f"| `python -c \"import torch, faiss, open_clip\"` | {bare_s:.2f} | 1.00 | (reference) | |"]
        failed = False
        for name, (command, limit_s, limit_ratio) in commands.items():
            seconds = _median(command, args.runs, env, work)
            ratio = seconds / bare_s
            if limit_s is not None:
                target, met = f"<= {limit_s:.1f} s", seconds <= limit_s
            elif limit_ratio is not None:
                target, met = f"<= {limit_ratio:.1f}x the bare imports", ratio <= limit_ratio
            else:
                target, met = "-", True
            failed |= not met
            logger.info("%s: %.2f s (%.2fx)", name, seconds, ratio)
            rows.append(f"| `{name}` | {seconds:.2f} | {ratio:.2f} | {target} | {'met' if met else 'MISSED'} |")
        demo_line = ""
        if not args.no_demo and shutil.which("git") and (REPO / ".venv").is_dir():
            demo_s = _demo_wall(env)
            failed |= demo_s > 60
            logger.info("make demo: %.1f s", demo_s)
            demo_line = (f"\n`make demo` in a fresh clone with a fresh home (a new Prefect database), its environment "
                         f"installed: **{demo_s:.1f} s** (target <= 60 s: {'met' if demo_s <= 60 else 'MISSED'}).\n")
    body = "\n".join([
        "## CLI start-up latency: light commands against the bare imports they need",
        "",
        f"`python bench/cli_latency.py`: median of {args.runs} runs, each a new process, bytecode compiled at install,",
        "`PYTHONDONTWRITEBYTECODE=1`, fresh home. Ratio: the command's time over the bare imports' in the same run.",
        "",
        "| command | median s | ratio | target | |",
        "|---|---|---|---|---|",
        *rows,
        demo_line,
    ])
    write_section("cli_latency", body)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
