"""The --quick preset's test accuracy, three seeds, in the simulated Zen 3 budget and on this
machine.

The simulated Zen 3 budget (issue 26): on a 2-core AMD EPYC Zen 3 (AVX2 only, no bf16) the quick
pipeline's training budget buys about 4 x 9,000 images of ``cnn`` in float32. On any machine, t
is the wall time of ``cifar-deploy train cnn --epochs 4 --mixed-precision off`` (start-up and
evaluation included); the preset then trains for t seconds in float32. "This machine" is the
preset as a user runs it: ``train MODEL --quick`` (its 10-minute budget, bf16 where the CPU has
it).

    python benchmarks/quick_accuracy.py --data-dir ../shared/cifar10 --out /tmp/quick
    python benchmarks/quick_accuracy.py --zen3-budget 285 --settings zen3 ...   # t known

Writes ``quick_accuracy_<settings>.json`` and ``.md`` under --out and prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def cli(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("cifar-deploy")), *args]


def measure_t(data_dir: Path, out: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        cli("train", "cnn", "--epochs", "4", "--mixed-precision", "off", "--data-dir",
            str(data_dir), "--runs-dir", str(out / "t"), "--json"),
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - started


def train(model: str, seed: int, data_dir: Path, runs: Path, extra: list[str]) -> dict:
    started = time.perf_counter()
    subprocess.run(
        cli("train", model, "--quick", "--seed", str(seed), "--data-dir", str(data_dir),
            "--runs-dir", str(runs), "--json", *extra),
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    run = json.loads((runs / model / "run.json").read_text())
    return {
        "seed": seed,
        "test_accuracy": run["test_accuracy"],
        "test_accuracy_flip_tta": run["test_accuracy_flip_tta"],
        "epochs": run["epochs_run"],
        "precision": run["precision_policy"],
        "wall_seconds": time.perf_counter() - started,
    }


def percents(values) -> str:
    return ", ".join(format(v, ".2%") for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="airbench")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("quick_accuracy"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--zen3-budget", type=float, help="t in seconds (default: measure it)")
    parser.add_argument(
        "--settings", nargs="+", choices=("zen3", "machine"), default=["zen3", "machine"]
    )
    args = parser.parse_args()

    from cifar_deploy.cpu import cpu_info

    args.out.mkdir(parents=True, exist_ok=True)
    measured = args.zen3_budget is None and "zen3" in args.settings
    t = measure_t(args.data_dir, args.out) if measured else args.zen3_budget
    settings = []
    if "zen3" in args.settings:
        settings.append(
            (
                f"simulated Zen 3 budget (t = {t:.0f} s{' measured' if measured else ', given'}, "
                "float32)",
                ["--time-budget", f"{t:.0f}s", "--mixed-precision", "off"],
            )
        )
    if "machine" in args.settings:
        settings.append(("this machine, --quick as shipped", []))
    groups = []
    for label, extra in settings:
        runs = []
        for seed in args.seeds:
            where = args.out / f"{'zen3' if extra else 'machine'}-seed{seed}"
            runs.append(train(args.model, seed, args.data_dir, where, extra))
            print(label, runs[-1], flush=True)
        groups.append(
            {
                "setting": label,
                "runs": runs,
                "median": statistics.median(r["test_accuracy"] for r in runs),
                "median_flip_tta": statistics.median(r["test_accuracy_flip_tta"] for r in runs),
            }
        )
    cpu = cpu_info()
    result = {"model": args.model, "cpu": cpu.label(), "t_seconds": t, "groups": groups}
    name = "quick_accuracy_" + "_".join(args.settings)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"`{args.model} --quick` test accuracy (10,000 test images) on {cpu.label()}",
        "",
        "| setting | seeds | test accuracy | with flip TTA | median | median, flip TTA "
        "| epochs | precision |",
        "|" + " --- |" * 8,
    ]
    for g in groups:
        rs = g["runs"]
        lines.append(
            f"| {g['setting']} | {', '.join(str(r['seed']) for r in rs)} "
            f"| {percents(r['test_accuracy'] for r in rs)} "
            f"| {percents(r['test_accuracy_flip_tta'] for r in rs)} "
            f"| **{g['median']:.2%}** | {g['median_flip_tta']:.2%} "
            f"| {', '.join(str(r['epochs']) for r in rs)} | {rs[0]['precision']} |"
        )
    table = "\n".join(lines) + "\n"
    (args.out / f"{name}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
