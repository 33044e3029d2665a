"""Training throughput (images/s) per model, and what the input pipeline costs.

For each model, two timed runs of ``model.fit`` over the same number of optimizer steps:
- compute only: one augmented batch cached in memory and repeated (no input work per step);
- full pipeline: the recipe's tf.data pipeline (shuffle, crop/flip, one-hot, MixUp where the
  recipe uses it) exactly as ``cifar-deploy train`` runs it.
The ratio full / compute-only shows the pipeline's cost (target: at most 10%, i.e. >= 0.90).
This VM's speed drifts between two levels (the same epoch takes 25 s or 41 s), so the two runs
alternate for ``--rounds`` rounds and the medians are compared.

Images are random uint8 pixels: throughput does not depend on pixel values. Run by hand:

    python benchmarks/train_throughput.py [--models cnn,mobilenetv2,wrn-28-10] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from cifar_deploy import _tf  # noqa: E402
from cifar_deploy.training import get_model_spec  # noqa: E402
from cifar_deploy.training.recipes import make_loss, make_optimizer, train_dataset  # noqa: E402
from cifar_deploy.training.trainer import resolve_precision  # noqa: E402


def time_fit(model, dataset, steps: int) -> float:
    """Seconds for ``steps`` optimizer steps, after an untimed warm-up epoch of 3 steps."""
    model.fit(dataset, steps_per_epoch=3, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return time.perf_counter() - start


def measure(name: str, steps: int, batch_size: int | None, precision: str, rounds: int) -> dict:
    keras = _tf.keras()
    spec = get_model_spec(name)
    recipe = spec.recipe.with_overrides(batch_size=batch_size, mixed_precision=precision)
    policy = resolve_precision(recipe.mixed_precision)
    keras.mixed_precision.set_global_policy(policy)
    kwargs = {"weights": None} if spec.accepts_weights else {}
    model = spec.build(weight_decay=recipe.weight_decay, **kwargs)
    keras.mixed_precision.set_global_policy("float32")
    phase = recipe.phases[-1]
    model.compile(make_optimizer(phase, 100), make_loss(recipe), jit_compile=False)
    n = recipe.batch_size * 4
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=n)
    full = train_dataset(x, y, recipe, seed=0).repeat()
    cached = full.take(1).cache().repeat()
    compute, whole = [], []
    for _ in range(rounds):
        compute.append(time_fit(model, cached, steps))
        whole.append(time_fit(model, full, steps))
    compute_s, full_s = float(np.median(compute)), float(np.median(whole))
    images = steps * recipe.batch_size
    return {
        "model": name,
        "parameters": int(model.count_params()),
        "precision": policy,
        "batch_size": recipe.batch_size,
        "steps": steps,
        "rounds": rounds,
        "compute_only_img_s": round(images / compute_s, 1),
        "full_pipeline_img_s": round(images / full_s, 1),
        "pipeline_ratio": round(compute_s / full_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn,mobilenetv2,wrn-28-10")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=None, help="default: each recipe's")
    parser.add_argument("--precision", default="auto", choices=["off", "auto", "bf16", "fp16"])
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed pairs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tf = _tf.tf()
    rows = []
    for name in args.models.split(","):
        steps = args.steps if name == "cnn" else max(3, args.steps // 4)  # big models: fewer steps
        rounds = args.rounds if name == "cnn" else 1  # the big models: one pair (minutes each)
        rows.append(measure(name, steps, args.batch_size, args.precision, rounds))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    machine = {
        "cpu": next(
            (
                line.split(":", 1)[1].strip()
                for line in open("/proc/cpuinfo")
                if line.startswith("model name")
            ),
            platform.machine(),
        ),
        "cores": os.cpu_count(),
        "tensorflow": tf.__version__,
        "gpus": len(tf.config.list_physical_devices("GPU")),
    }
    if args.json:
        print(json.dumps({"machine": machine, "rows": rows}, indent=2))
        return
    print(f"machine: {machine}")
    print(
        "| model | parameters | precision | batch | compute-only img/s | full pipeline img/s "
        "| full / compute |"
    )
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['model']} | {r['parameters']:,} | {r['precision']} | {r['batch_size']} "
            f"| {r['compute_only_img_s']} | {r['full_pipeline_img_s']} | {r['pipeline_ratio']} |"
        )


if __name__ == "__main__":
    main()
