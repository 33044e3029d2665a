"""Figures for README's "Bring your own model": a model trained the way the original project's
scripts train (normalization outside the model, `(x/255 - mean)/std`), taken through the CLI as a
new user would.

    python benchmarks/byom.py --data-dir ../shared/cifar10 --out /tmp/byom [--epochs 4]

1. Trains a seed-style CNN (three conv blocks) on `data_batch_1`, normalized outside the model,
   and scores it on the test images normalized and on raw pixels.
2. `cifar-deploy export --format all` without the flags: the exit code, the error line, and
   whether anything was written.
3. The same export with `--preprocess unit --mean ... --std ...`, then `cifar-deploy verify
   --consumer mediapipe` on the test images: each artifact's accuracy against the normalized
   Keras model, and MediaPipe's ImageClassifier (fed raw pixels) against LiteRT.

Prints one JSON record (``--json``), or a Markdown table with the CPU named.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cifar_deploy.contract import CIFAR10_MEAN, CIFAR10_STD, Preprocess  # noqa: E402

DECLARED = Preprocess("unit", CIFAR10_MEAN, CIFAR10_STD)
CAPABILITIES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu() -> str:
    """The CPU's name and the capabilities that change int8 and bf16 results."""
    name, flags = platform.processor(), set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
    return f"{name} ({', '.join(c for c in CAPABILITIES if c in flags) or 'no AVX2'})"


def seed_style_cnn():
    """Three conv blocks with batch norm, as the seed's scripts build, and no normalization
    layer: the scripts normalize outside the model."""
    import keras

    layers = keras.layers
    inputs = keras.Input((32, 32, 3))
    x = inputs
    for filters in (32, 64, 128):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(10, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="seed_cnn")


def train(data_dir: Path, path: Path, epochs: int, seed: int) -> dict:
    import keras
    import numpy as np

    from cifar_deploy.data import load_cifar10

    data = load_cifar10(data_dir, download=False)
    keras.utils.set_random_seed(seed)
    model = seed_style_cnn()
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    started = time.perf_counter()
    x = DECLARED(data.x_train.astype(np.float32))
    model.fit(x, data.y_train, epochs=epochs, batch_size=64, verbose=0)
    seconds = time.perf_counter() - started
    model.save(path)

    def accuracy(images) -> float:
        return float(model.evaluate(images, data.y_test, batch_size=500, verbose=0)[1])

    test = data.x_test.astype(np.float32)
    return {
        "train_images": len(data.y_train),
        "epochs": epochs,
        "train_seconds": round(seconds, 1),
        "normalized_accuracy": accuracy(DECLARED(test)),
        "raw_accuracy": accuracy(test),
    }


def cli(*args) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cifar_deploy", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True)


def error_line(stderr: str) -> str:
    return next((line for line in stderr.splitlines() if line.startswith("error: ")), "")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="an empty working directory")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=None, help="verify on N test images")
    parser.add_argument("--json", action="store_true", help="print the JSON record only")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    model = args.out / "seed.keras"
    record = {"cpu": cpu(), "declared": DECLARED.flags()}
    record["model"] = train(args.data_dir, model, args.epochs, args.seed)

    refused_dir = args.out / "undeclared"
    common = ("export", "--model", model, "--format", "all", "--data-dir", args.data_dir)
    refused = cli(*common, "--out", refused_dir)
    record["without_flags"] = {
        "exit_code": refused.returncode,
        "error": error_line(refused.stderr),
        "written": refused_dir.exists(),
    }
    out = args.out / "exports"
    exported = cli(*common, "--out", out, *DECLARED.flags().split(), "--json")
    if exported.returncode != 0:
        raise SystemExit(f"export with the flags failed:\n{exported.stderr}")
    record["artifacts"] = len(json.loads(exported.stdout))
    samples = ("--samples", args.samples) if args.samples else ()
    verified = cli("verify", out, "--data-dir", args.data_dir, "--consumer", "mediapipe",
                   *samples, "--json")  # fmt: skip
    if verified.returncode not in (0, 1):
        raise SystemExit(f"verify failed to run:\n{verified.stderr}")
    rows = json.loads(verified.stdout)
    record["verify_exit_code"] = verified.returncode
    record["rows"] = [
        {k: r[k] for k in ("name", "runtime", "status", "accuracy", "accuracy_diff", "agreement")}
        for r in rows
    ]
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print(markdown(record))
    return record


def markdown(record: dict) -> str:
    m, refused = record["model"], record["without_flags"]
    lines = [
        f"CPU: {record['cpu']}",
        f"seed-style CNN, {m['epochs']} epochs on {m['train_images']:,} images "
        f"({m['train_seconds']} s): {m['normalized_accuracy']:.2%} normalized, "
        f"{m['raw_accuracy']:.2%} on raw pixels",
        f"export without flags: exit {refused['exit_code']}, written: {refused['written']}",
        f"  {refused['error']}",
        f"export with {record['declared']}: {record['artifacts']} artifacts; verify exit "
        f"{record['verify_exit_code']}",
        "",
        "| artifact | runtime | accuracy | diff (pts) | agreement | status |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in record["rows"]:
        diff = "" if r["accuracy_diff"] is None else f"{r['accuracy_diff']:+.2f}"
        agreement = "" if r["agreement"] is None else f"{r['agreement']:.2%}"
        lines.append(
            f"| {r['name']} | {r['runtime']} | {r['accuracy']:.2%} | {diff} | {agreement} "
            f"| {r['status']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
