"""Export seconds and size of every format and quantization for one trained model.

Targets (issue 3): all formats together in under 60 s on 2 cores; int8 TFLite at most 30% of the
float32 TFLite size. Run by hand after training:

    python benchmarks/export_figures.py [--model runs/cnn/best.keras] [--data-dir ../shared/cifar10]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from cifar_deploy.export import ExportOptions, export_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/cnn/best.keras")
    parser.add_argument("--data-dir", default=os.environ.get("CIFAR10_DIR", "../shared/cifar10"))
    parser.add_argument("--out", default=None, help="default: a temporary directory")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="export_figures_"))
    options = ExportOptions(data_dir=args.data_dir, force=True)
    started = time.perf_counter()
    artifacts = export_model(Path(args.model), "all", options, out)
    total = time.perf_counter() - started
    print(f"model: {args.model}   cores: {os.cpu_count()}   output: {out}")
    print("| format | quantization | file | size (KiB) | seconds | status |")
    print("| --- | --- | --- | ---: | ---: | --- |")
    for a in artifacts:
        name = a.path.name if a.path else "-"
        print(
            f"| {a.format} | {a.quantization} | {name} | {a.size_bytes / 1024:.0f} "
            f"| {a.seconds:.1f} | {a.status}{': ' + a.error if a.error else ''} |"
        )
    sizes = {(a.format, a.quantization): a.size_bytes for a in artifacts if a.status == "ok"}
    print(
        f"\nall formats: {sum(a.seconds for a in artifacts):.1f} s of exports, "
        f"{total:.1f} s wall including model load and the scratch SavedModel"
    )
    if ("tflite", "int8") in sizes and ("tflite", "none") in sizes:
        ratio = sizes[("tflite", "int8")] / sizes[("tflite", "none")]
        print(f"int8 TFLite / float32 TFLite size: {ratio:.1%}")


if __name__ == "__main__":
    main()
