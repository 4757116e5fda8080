"""Where a weights folder's components live: a folder with one subfolder per component, or a JSON file naming
each component's folder. Light to import (no model library), so requests are checked before any loads."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from magic141.utils import InputError


@dataclass(frozen=True)
class WeightPaths:
    """Where each component's weights live."""

    transformer: Path
    vae: Path
    text_encoder: Path
    text_encoder_2: Path
    tokenizer: Path
    tokenizer_2: Path
    image_processor: Path
    prior: Path | None = None

    @classmethod
    def from_folder(cls, folder: str | Path) -> WeightPaths:
        root = Path(folder)
        if not root.is_dir():
            raise InputError(f"weights folder {str(root)!r} does not exist; give a folder with transformer/, vae/, ...")
        paths = {f.name: root / f.name for f in fields(cls)}
        if not paths["prior"].is_dir():
            paths["prior"] = None
        return cls(**paths).checked()

    @classmethod
    def from_config(cls, config_file: str | Path) -> WeightPaths:
        """Per-component paths from a JSON file; relative paths are relative to the file."""
        file = Path(config_file)
        try:
            data = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"weights config {str(file)!r} is not readable JSON: {exc}") from None
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"weights config {str(file)!r} has unknown component(s) {', '.join(unknown)}; use {', '.join(sorted(known))}")
        missing = sorted(known - {"prior"} - set(data))
        if missing:
            raise InputError(f"weights config {str(file)!r} lacks component(s) {', '.join(missing)}")
        return cls(**{name: file.parent / value for name, value in data.items()}).checked()

    @classmethod
    def resolve(cls, weights: str | Path) -> WeightPaths:
        """A weights folder, or a JSON file naming each component's folder."""
        return cls.from_config(weights) if Path(weights).is_file() else cls.from_folder(weights)

    def checked(self) -> WeightPaths:
        for f in fields(self):
            path = getattr(self, f.name)
            if path is not None and not Path(path).is_dir():
                raise InputError(f"{f.name} weights folder {str(path)!r} does not exist")
        return self
