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
    components: dict[str, list[dict]] = {}
    for level in ("int8", "int4"):
        components[level] = model_report(get_preset("full-540p"), quantize=level)["components"]
        full = next(c for c in components[level] if c["component"] == "transformer")
        probe = model_report(get_preset("tiny"), quantize=level, probe=True)["probe"]
        lines.append(
            f"| {level} | {full['weight_bytes']:,} | {full['quantized_weight_bytes']:,} | "
            f"{full['quantized_ratio']:.3f} | {probe['relative_output_error']:.4f} |"
        )
    lines += [
        "",
        "Every full-540p component, GB of weights (the VAE stays float32 and unquantized; the LLM's "
        "token embeddings and output head stay bf16):",
        "",
        "| component | parameters | bf16 | int8 | int4 |",
        "|---|---|---|---|---|",
    ]
    totals = {"bf16": 0, "int8": 0, "int4": 0}
    for int8, int4 in zip(components["int8"], components["int4"]):
        sizes = {
            "bf16": int8["weight_bytes"],
            "int8": int8.get("quantized_weight_bytes", int8["weight_bytes"]),
            "int4": int4.get("quantized_weight_bytes", int4["weight_bytes"]),
        }
        totals = {level: totals[level] + size for level, size in sizes.items()}
        lines.append(
            f"| {int8['component']} | {int8['parameters'] / 1e9:.3f} B | "
            + " | ".join(f"{size / 1e9:.2f}" for size in sizes.values())
            + " |"
        )
    lines.append("| **all** | | " + " | ".join(f"**{size / 1e9:.2f}**" for size in totals.values()) + " |")
    report = "\n".join(lines)
    print(report)
    if not args.no_write:
        write_section("quantization", report)


if __name__ == "__main__":
    main()
