"""Figures for README's "Embedding in a mobile app": for every exported .tflite, the embedded
metadata's size, MediaPipe Tasks vs LiteRT agreement on the test split, and inspect's batch-1
latency of the native CompiledModel runtime beside the Python predictor.

    python benchmarks/mobile_figures.py exports/cnn --data-dir ../shared/cifar10 [--threads 2]

Prints one JSON record per artifact, then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cifar_deploy.checks.consumers import MediaPipeConsumer  # noqa: E402
from cifar_deploy.checks.inspection import inspect_tflite  # noqa: E402
from cifar_deploy.data import load_cifar10  # noqa: E402
from cifar_deploy.export.metadata import read_sidecar  # noqa: E402
from cifar_deploy.runtime import load_predictor  # noqa: E402


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exports", type=Path)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", type=int, default=None, help="test images (default: all)")
    args = parser.parse_args()
    data = load_cifar10(args.data_dir, download=False)
    images = data.x_test[: args.samples] if args.samples else data.x_test
    rows = []
    for path in sorted(args.exports.glob("*.tflite")):
        meta = read_sidecar(path)
        row = {
            "artifact": path.name,
            "input": meta.input.dtype,
            "size_bytes": meta.artifact.size_bytes,
        }
        row["metadata_bytes"] = meta.extra.get("embedded_metadata", {}).get("bytes")
        if MediaPipeConsumer.accepts(meta) is None:
            ours = load_predictor(path, threads=args.threads).predict(images)
            consumer = MediaPipeConsumer(path, 10)
            started = time.perf_counter()
            out = consumer.run(images)
            row["mediapipe_seconds"] = round(time.perf_counter() - started, 1)
            consumer.close()
            row["agreement"] = float((out.probabilities.argmax(1) == ours.argmax(1)).mean())
            row["max_abs_diff"] = float(abs(out.probabilities - ours).max())
            row["names_match"] = out.category_names == list(meta.class_names)
        report = inspect_tflite(path, threads=args.threads)
        row["latency_ms"] = report.latency_ms
        row["not_delegated"] = report.not_delegated
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{cpu_name()}, {args.threads} threads, {len(images):,} test images\n")
    print(
        "| artifact | input | metadata bytes | MediaPipe = LiteRT top-1 | max abs diff | "
        "native p50 ms | Python p50 ms |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        agree = f"{r['agreement']:.2%}" if "agreement" in r else "not loadable"
        diff = f"{r['max_abs_diff']:.1e}" if "max_abs_diff" in r else "-"
        native = r["latency_ms"].get("native CompiledModel")
        native = "-" if native is None else f"{native:.3f}"
        print(
            f"| {r['artifact']} | {r['input']} | {r['metadata_bytes']:,} | {agree} | {diff} | "
            f"{native} | {r['latency_ms']['python predictor']:.3f} |"
        )


if __name__ == "__main__":
    main()
