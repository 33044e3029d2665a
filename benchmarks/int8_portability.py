"""Int8 ONNX on every x86 CPU kind: the file `export --format onnx --quantize int8` writes today
(7-bit weights, ``reduce_range``) against the earlier file (8-bit weights), on this CPU and on an
emulated AVX2-only CPU.

Without VNNI, ONNX Runtime's U8S8 kernels add pairs of uint8 x int8 products in a saturating
16-bit lane (vpmaddubsw); with VNNI or AMX they accumulate in 32 bits. The emulated CPU is QEMU's
user-mode emulator with ``-cpu EPYC-Milan`` (AMD Zen 3: AVX2, no AVX-512, no VNNI); ONNX Runtime
picks its kernels from CPUID, which QEMU answers for that model, so the AVX2 kernels really run
(slowly: only the results count there, latency is measured on the host alone). The child prints
the CPU features it saw, which the table quotes.

    apt-get install qemu-user       # Debian: qemu-x86_64
    python benchmarks/int8_portability.py --model runs/cnn/best.keras \\
        --data-dir ../shared/cifar10 --images 1000 --out /tmp/int8

Writes ``int8_portability.json`` and ``int8_portability.md`` under --out and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, sys, time
import numpy as np
import onnxruntime as ort
try:
    from numpy._core._multiarray_umath import __cpu_features__ as features
except ImportError:
    from numpy.core._multiarray_umath import __cpu_features__ as features
files, images_path, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
images = np.load(images_path).astype(np.float32)
seen = {k: bool(features.get(k)) for k in ("AVX2", "AVX512F", "AVX512VNNI", "AVX512_SPR")}
probs = {}
options = ort.SessionOptions()
options.intra_op_num_threads = 2
for name, path in files.items():
    s = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    probs[name] = np.concatenate(
        [s.run(None, {"images": images[i : i + 50]})[0] for i in range(0, len(images), 50)]
    )
np.savez(out, **probs)
print(json.dumps({"features": seen, "onnxruntime": ort.__version__}))
"""


def run_child(files: dict, images: Path, out: Path, qemu_cpu: str | None) -> dict:
    cmd = [sys.executable, "-c", CHILD, json.dumps({k: str(v) for k, v in files.items()})]
    cmd += [str(images), str(out)]
    if qemu_cpu:
        cmd = ["qemu-x86_64", "-cpu", qemu_cpu, *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child failed ({' '.join(cmd[:4])} ...):\n{done.stderr[-2000:]}")
    info = json.loads(done.stdout.strip().splitlines()[-1])
    with np.load(out) as data:
        info["probs"] = {k: data[k] for k in data.files}
    return info


def latency_ms(path: Path, repeats: int = 300) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3)).astype(np.float32)
    for _ in range(30):
        session.run(None, {"images": x})
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        session.run(None, {"images": x})
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def export_files(model: Path, data_dir: Path, out: Path) -> dict[str, Path]:
    """float32 and today's int8 through the CLI, then the earlier int8 (8-bit weights) from the
    same float file and the same calibration sample."""
    from cifar_deploy.export import ExportOptions
    from cifar_deploy.export.calibration import calibration_sample
    from cifar_deploy.export.onnx_format import quantize_int8

    exports = out / "exports"
    for quantization in ("none", "int8"):
        subprocess.run(
            [
                str(Path(sys.executable).with_name("cifar-deploy")),
                "export",
                "--format",
                "onnx",
                "--quantize",
                quantization,
                "--model",
                str(model),
                "--data-dir",
                str(data_dir),
                "--out",
                str(exports),
                "--force",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    float_file = next(exports.glob("*_float32.onnx"))
    today = next(exports.glob("*_int8.onnx"))
    earlier = out / "earlier_int8_8bit_weights.onnx"
    images, _ = calibration_sample(ExportOptions(data_dir=data_dir))
    quantize_int8(float_file, earlier, images, reduce_range=False)
    return {"int8, 8-bit weights (earlier)": earlier, "int8, 7-bit weights (today)": today}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--images", type=int, default=1000, help="test images (first N)")
    parser.add_argument("--out", type=Path, default=Path("int8_portability"))
    parser.add_argument("--qemu-cpu", default="EPYC-Milan", help="'' skips the emulated CPU")
    args = parser.parse_args()

    from cifar_deploy import _tf
    from cifar_deploy.checks.verify import compare, judge, tolerance_for
    from cifar_deploy.cpu import cpu_info
    from cifar_deploy.data import load_dataset

    args.out.mkdir(parents=True, exist_ok=True)
    files = export_files(args.model, args.data_dir, args.out)
    data = load_dataset(args.data_dir)
    x, y = data.x_test[: args.images], data.y_test[: args.images]
    images = args.out / "images.npy"
    np.save(images, x)
    keras_model = _tf.keras().models.load_model(args.model)
    reference = keras_model.predict(x.astype(np.float32), batch_size=100, verbose=0)

    host = cpu_info()
    cpus = [(f"this CPU: {host.model} (int8: {host.int8})", None)]
    if args.qemu_cpu and shutil.which("qemu-x86_64"):
        cpus.append((f"QEMU -cpu {args.qemu_cpu}", args.qemu_cpu))
    elif args.qemu_cpu:
        print("qemu-x86_64 not found (apt-get install qemu-user): emulated CPU skipped")

    rows = []
    for label, qemu_cpu in cpus:
        started = time.perf_counter()
        info = run_child(files, images, args.out / f"probs_{qemu_cpu or 'host'}.npz", qemu_cpu)
        seconds = time.perf_counter() - started
        f = info["features"]
        seen = (
            "AVX-512 VNNI"
            if f["AVX512VNNI"]
            else "AVX-512, no VNNI"
            if f["AVX512F"]
            else "AVX2, no VNNI"
            if f["AVX2"]
            else "no AVX2"
        )
        for name, path in files.items():
            figures = compare(info["probs"][name], reference, y)
            reasons = judge(figures, tolerance_for("int8"))
            rows.append(
                {
                    "cpu": label,
                    "cpu_features_seen": seen,
                    "file": name,
                    "accuracy": figures["accuracy"],
                    "accuracy_diff_points": figures["accuracy_diff"],
                    "agreement": figures["agreement"],
                    "max_abs_diff": figures["max_abs_diff"],
                    "parity": "fail: " + "; ".join(reasons) if reasons else "pass",
                    "size_bytes": path.stat().st_size,
                    "batch1_p50_ms": None if qemu_cpu else latency_ms(path),
                    "child_seconds": seconds,
                    "onnxruntime": info["onnxruntime"],
                }
            )
    result = {
        "model": str(args.model),
        "test_images": int(len(y)),
        "keras_accuracy": float((reference.argmax(1) == y).mean()),
        "host": host.label(),
        "rows": rows,
    }
    (args.out / "int8_portability.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"Int8 ONNX parity on {len(y):,} test images (Keras {result['keras_accuracy']:.2%}), "
        f"onnxruntime {rows[0]['onnxruntime']}, host {host.label()}",
        "",
        "| CPU | features seen | file | accuracy | diff (pts) | agreement | max abs diff | parity "
        "| size | batch-1 p50 (2 threads) |",
        "|" + " --- |" * 10,
    ]
    for r in rows:
        ms = "-" if r["batch1_p50_ms"] is None else f"{r['batch1_p50_ms']:.3f} ms"
        lines.append(
            f"| {r['cpu']} | {r['cpu_features_seen']} | {r['file']} | {r['accuracy']:.2%} "
            f"| {r['accuracy_diff_points']:+.2f} | {r['agreement']:.2%} | {r['max_abs_diff']:.3f} "
            f"| {r['parity']} | {r['size_bytes'] / 1024:,.0f} KiB | {ms} |"
        )
    table = "\n".join(lines) + "\n"
    (args.out / "int8_portability.md").write_text(table)
    print(table)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
