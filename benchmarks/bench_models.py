"""Latency of every model family (untrained weights: latency does not depend on them).

Builds each model, saves it as ``.keras``, exports float32 ONNX, float32 and int8 TFLite, and runs
``cifar-deploy bench``'s library with the Keras baseline. Run by hand:

    python benchmarks/bench_models.py [--models mobilenetv2,wrn-28-10] [--batch-sizes 1,8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from cifar_deploy.checks.bench import BenchConfig, benchmark  # noqa: E402
from cifar_deploy.export import ExportOptions, export_model  # noqa: E402
from cifar_deploy.render import bench_markdown  # noqa: E402
from cifar_deploy.training import get_model_spec  # noqa: E402
from cifar_deploy.training.flops import model_flops  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenetv2,wrn-28-10")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--min-time", type=float, default=1.0)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_models_"))
    calibration = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    config = BenchConfig(
        batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")),
        warmup=2,
        min_time=args.min_time,
        min_runs=3,
    )
    for name in args.models.split(","):
        spec = get_model_spec(name)
        model = spec.build(weights=None) if spec.accepts_weights else spec.build()
        run = root / name
        run.mkdir()
        model.save(run / "best.keras")
        (run / "run.json").write_text(json.dumps({"model": name}))
        out = root / "exports" / name
        arts = []
        for fmt, q in (("onnx", "none"), ("tflite", "none"), ("tflite", "int8")):
            options = ExportOptions(quantization=q, calibration_images=calibration)
            arts += export_model(run / "best.keras", fmt, options, out)
        rows, machine = benchmark([a.path for a in arts], config)
        print(
            f"\n### {name}: {model.count_params():,} parameters, "
            f"{model_flops(model) / 1e9:.2f} GFLOPs per image, {machine['cpu']}, "
            f"{machine['cores']} cores\n"
        )
        print(bench_markdown(rows))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
