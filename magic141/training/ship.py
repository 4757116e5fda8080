"""Copy finished runs' weights into the shipped folder and write its manifest.

``python -m magic141.training.ship --to magic141/toy_weights RUN [RUN ...]`` copies each run's ``final/``
folder to ``<to>/<stage>/``; the transformer stages make ``<to>`` a weights folder: the DMD2 student's
transformer is its transformer/, the I2V teacher's VAE and encoders sit beside it, and the teachers'
transformers go to teacher/ (CFG-distilled) and i2v/, each named by a weights file (teacher.json, i2v.json).
Each loss curve goes to ``<to>/curves/<stage>.png``, and ``<to>/MANIFEST.json`` holds the sha256 and size of every shipped file,
and for each stage the commands, commits, seeds, steps and wall times that produced it (its
``sessions.jsonl``). A stage given with ``--record-only`` (the T2V teacher, only where the I2V teacher starts)
has its provenance in the manifest and no files. A refined VAE (stage ``vae-decoder``) replaces vae/ and keeps
it: a VAE of the same encoder shipped later leaves it, one of another encoder replaces it and drops its entry.
``--check`` verifies a shipped folder against its manifest instead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

from magic141.utils import InputError

logger = logging.getLogger(__name__)
MANIFEST = "MANIFEST.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> dict[str, dict[str, Any]]:
    return {
        str(path.relative_to(folder)): {"sha256": _sha256(path), "bytes": path.stat().st_size}
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }


def _halve(folder: Path) -> None:
    """Store the float32 tensors of every safetensors file in ``folder`` as float16 (half the bytes)."""
    import torch
    from safetensors.torch import load_file, save_file

    for path in folder.rglob("*.safetensors"):
        tensors = load_file(path)
        save_file({k: v.half() if v.dtype == torch.float32 else v for k, v in tensors.items()}, path)


# Where each transformer stage's transformer goes: the DMD2 student is the weights folder's own (the default),
# the teachers sit beside it with a JSON file naming their components (``<name>.json``, a weights path).
TRANSFORMERS = {"dmd2": "transformer", "cfg": "teacher/transformer", "i2v": "i2v/transformer"}


REFINED_VAE = "vae-decoder"  # the stage that refines the shipped VAE's decoder (``train vae --refine``)


def _targets(stage: str, final: Path, to: Path) -> list[tuple[Path, Path]]:
    """Where a run's final folder goes: a transformer stage's transformer where ``TRANSFORMERS`` says, and the
    I2V teacher's other components (vae/, text encoders, ...) at the top of ``to``, so that ``to`` is a
    weights folder; the refined VAE to vae/; any other stage under its name."""
    if stage == REFINED_VAE:
        return [(final, to / "vae")]
    if stage not in TRANSFORMERS:
        return [(final, to / stage)]
    targets = [(final / "transformer", to / TRANSFORMERS[stage])]
    if stage == "i2v":
        targets += [(child, to / child.name) for child in sorted(final.iterdir())
                    if child.is_dir() and child.name != "transformer"]
    return targets


def _write_spec(to: Path, stage: str) -> None:
    """``<to>/<folder>.json``: the weights path of a teacher shipped beside the student."""
    folder = TRANSFORMERS[stage].split("/")[0]
    components = {child.name: child.name for child in sorted(to.iterdir())
                  if child.is_dir() and child.name in SHARED_COMPONENTS}
    (to / f"{folder}.json").write_text(json.dumps({**components, "transformer": TRANSFORMERS[stage]}, indent=2) + "\n")


SHARED_COMPONENTS = frozenset({"vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "image_processor",
                               "prior"})


def _encoder(folder: Path) -> str | None:
    """The fingerprint of the latents of the VAE in ``folder`` (None when there is none)."""
    if not (folder / "config.json").is_file():
        return None
    from diffusers import AutoencoderKLHunyuanVideo

    from magic141.components import vae_encoder_fingerprint

    return vae_encoder_fingerprint(AutoencoderKLHunyuanVideo.from_pretrained(str(folder)))


def _keeps_refined_vae(manifest: dict[str, Any], source: Path, target: Path) -> bool:
    """Whether copying the VAE ``source`` to the shipped ``target`` (vae/) is skipped: the shipped one is a
    refined decoder of the same encoder. A VAE of another encoder replaces it, and the refinement's entry goes."""
    if REFINED_VAE not in manifest["stages"]:
        return False
    if _encoder(source) == _encoder(target):
        logger.info("%s keeps its refined decoder (%s encodes the same latents)", target, source)
        return True
    logger.warning("%s encodes other latents than the refined VAE in %s: the refinement is dropped", source, target)
    del manifest["stages"][REFINED_VAE]
    (target.parent / "curves" / f"{REFINED_VAE}.png").unlink(missing_ok=True)
    return False


def _check_refinement(runs: list[tuple[Path, dict[str, Any]]], to: Path) -> None:
    """Refuse a refined VAE whose encoder is not that of the VAE the shipped transformers' latents come from."""
    refined = [run for run, record in runs if record["stage"] == REFINED_VAE]
    if not refined:
        return
    others = [_targets(record["stage"], run / "final", to) for run, record in runs if record["stage"] != REFINED_VAE]
    sources = [source for targets in others for source, target in targets if target == to / "vae"]
    encoder = _encoder(refined[0] / "final")
    for source in sources or [to / "vae"]:
        seen = _encoder(source)
        if seen is not None and seen != encoder:
            raise InputError(f"{refined[0]} refines a VAE of another encoder than {source}'s; refine that VAE "
                             "(train vae --refine) or ship the runs trained on the refined one's latents")


def ship(
    runs: list[Path], to: Path, half: frozenset[str] = frozenset(), record_only: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Copy every run's final folder under ``to`` and (re)write the manifest; return it.

    The stages named in ``half`` have what they trained stored in float16 (a transformer stage's transformer,
    not the components shipped beside it), for models whose loaders cast the weights into their own float32
    parameters (open_clip and diffusers do); those in ``record_only`` are recorded in the
    manifest (commands, commits, seeds) without their weights.
    """
    to.mkdir(parents=True, exist_ok=True)
    manifest_path = to / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"stages": {}}
    records = [(run, json.loads((run / "run.json").read_text())) for run in runs]
    for run, _ in records:
        if not (run / "final").is_dir():
            raise InputError(f"{run} has no final/ folder; let the run finish (or --resume it) first")
    # The refined VAE last: the I2V teacher's VAE, beside it, is the one it refines.
    records.sort(key=lambda item: item[1]["stage"] == REFINED_VAE)
    _check_refinement(records, to)
    for run, record in records:
        final = run / "final"
        shipped = record["stage"] not in record_only
        for source, target in _targets(record["stage"], final, to) if shipped else ():
            if target == to / "vae" and record["stage"] != REFINED_VAE and _keeps_refined_vae(manifest, source, target):
                continue
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target)
            # Only what the stage trained: the VAE and text encoders beside an I2V teacher keep the precision
            # its latent cache was encoded with.
            if record["stage"] in half and (record["stage"] not in TRANSFORMERS or source.name == "transformer"):
                _halve(target)
        if shipped and (run / "loss.png").is_file():
            (to / "curves").mkdir(exist_ok=True)
            shutil.copyfile(run / "loss.png", to / "curves" / f"{record['stage']}.png")
        sessions = [json.loads(line) for line in (run / "sessions.jsonl").read_text().splitlines() if line.strip()]
        manifest["stages"][record["stage"]] = {
            "sessions": sessions, "identity": record["identity"], "float16": record["stage"] in half,
            **({} if shipped else {"weights": "not shipped"}),
            **({"refines": record["description"]["refine"]} if record["stage"] == REFINED_VAE else {}),
        }
        logger.info("shipped %s from %s", record["stage"], run)
    for stage in ("i2v", "cfg"):
        if stage in manifest["stages"]:
            _write_spec(to, stage)
    manifest["files"] = _files(to)
    manifest["total_bytes"] = sum(entry["bytes"] for entry in manifest["files"].values())
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def check(folder: Path) -> list[str]:
    """The files of ``folder`` that differ from its manifest (missing, changed or unlisted)."""
    listed = json.loads((folder / MANIFEST).read_text())["files"]
    present = _files(folder)
    return sorted(name for name in set(listed) | set(present) if listed.get(name) != present.get(name))


def main() -> None:
    parser = argparse.ArgumentParser(description="Ship finished training runs' weights with a manifest.")
    parser.add_argument("runs", type=Path, nargs="*", help="run folders (holding run.json and final/)")
    parser.add_argument("--to", type=Path, required=True, help="the shipped weights folder")
    parser.add_argument("--check", action="store_true", help="verify --to against its manifest and exit")
    parser.add_argument("--half", action="append", default=[], metavar="STAGE", help="store STAGE in float16")
    parser.add_argument("--record-only", action="append", default=[], metavar="STAGE",
                        help="record STAGE's provenance in the manifest without shipping its weights")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.check:
        differing = check(args.to)
        for name in differing:
            logger.error("%s differs from %s", name, args.to / MANIFEST)
        sys.exit(1 if differing else 0)
    manifest = ship(args.runs, args.to, frozenset(args.half), frozenset(args.record_only))
    logger.info("%d files, %.1f MB in %s", len(manifest["files"]), manifest["total_bytes"] / 1e6, args.to)


if __name__ == "__main__":
    main()
