"""int8 / int4 weight bytes of the transformer against bf16, and the quantized output error.

Sizes are those of the full-540p (HunyuanVideo-13B) geometry, measured on the meta device (exact
shapes and quanto's storage, no values); the relative output error is probed on the tiny preset's
random weights, where the forward pass can run on this machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_section  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    from magic141.presets import get_preset
    from magic141.report import model_report

    lines = [
        "## quantization: transformer weight bytes and output error",
        "",
        "`python bench/quantization.py`",
        "",
        "| level | full-540p transformer bf16 bytes | quantized bytes | ratio (target <= 0.52) | tiny relative output error |",
        "|---|---|---|---|---|",
    ]
    for level in ("int8", "int4"):
        full = model_report(get_preset("full-540p"), quantize=level)["components"][0]
        probe = model_report(get_preset("tiny"), quantize=level, probe=True)["probe"]
        lines.append(
            f"| {level} | {full['weight_bytes']:,} | {full['quantized_weight_bytes']:,} | "
            f"{full['quantized_ratio']:.3f} | {probe['relative_output_error']:.4f} |"
        )
    report = "\n".join(lines)
    print(report)
    if not args.no_write:
        write_section("quantization", report)


if __name__ == "__main__":
    main()
