"""Issue-5 targets, measured side by side in one run (figures, not tests):

1. int8 TFLite at batch 1 vs Keras ``model.predict`` at batch 1 (target: >= 10x faster);
2. the project's predictor vs calling the runtime directly at batch 1 (target: within 5%),
   for LiteRT and ONNX Runtime;
3. at batch 64, the best float32 path's FLOP/s vs the machine's float32 matrix-multiply FLOP/s
   measured in the same run (target: >= 70%).

    python benchmarks/latency_targets.py --exports exports/cnn [--min-time 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from cifar_deploy import _tf  # noqa: E402
from cifar_deploy.checks.bench import input_pool, time_runs  # noqa: E402
from cifar_deploy.export.metadata import read_sidecar  # noqa: E402
from cifar_deploy.runtime import load_predictor  # noqa: E402
from cifar_deploy.training.flops import model_flops  # noqa: E402


def p50(fn, batch: int, min_time: float) -> float:
    return float(np.median(time_runs(fn, input_pool(batch), 10, min_time, 30)))


def matmul_gflops(min_time: float) -> dict:
    """float32 GEMM throughput of numpy and TensorFlow (oneDNN) on 1024-2048 squares."""
    tf = _tf.tf()
    out = {}
    for n in (1024, 2048):
        a = np.random.default_rng(0).random((n, n), dtype=np.float32)
        b = np.random.default_rng(1).random((n, n), dtype=np.float32)
        ms = p50(lambda _, a=a, b=b: a @ b, 1, min_time)
        out[f"numpy_{n}"] = 2 * n**3 / (ms / 1e3) / 1e9
        ta, tb = tf.constant(a), tf.constant(b)
        ms = p50(lambda _, ta=ta, tb=tb: tf.linalg.matmul(ta, tb).numpy(), 1, min_time)
        out[f"tensorflow_{n}"] = 2 * n**3 / (ms / 1e3) / 1e9
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exports", default="exports/cnn")
    parser.add_argument("--min-time", type=float, default=2.0)
    args = parser.parse_args()
    exports = Path(args.exports)
    name = exports.name
    tflite_int8 = exports / f"{name}_int8.tflite"
    onnx_fp32 = exports / f"{name}_float32.onnx"
    tflite_fp32 = exports / f"{name}_float32.tflite"
    reference = Path(read_sidecar(onnx_fp32).source.path)
    keras_pred = load_predictor(reference)
    model = keras_pred.model
    results = {"cores": os.cpu_count(), "model": name}

    # 1. int8 TFLite vs Keras model.predict, batch 1.
    t_predict = p50(lambda x: model.predict(x.astype(np.float32), verbose=0), 1, args.min_time)
    int8 = load_predictor(tflite_int8)
    t_int8 = p50(lambda x: int8.predict(x), 1, args.min_time)
    results["keras_predict_b1_ms"] = t_predict
    results["tflite_int8_b1_ms"] = t_int8
    results["int8_speedup_vs_predict"] = t_predict / t_int8

    # 2. Predictor overhead vs the raw runtime call, batch 1.
    it, inp, out = int8._it, int8._in, int8._out
    it.resize_tensor_input(inp["index"], [1, 32, 32, 3])
    it.allocate_tensors()
    int8._batch = 1

    def raw_tflite(x):
        it.set_tensor(inp["index"], x)
        it.invoke()
        return it.get_tensor(out)

    onnx_pred = load_predictor(onnx_fp32)
    session = onnx_pred.session

    def raw_onnx(x):
        return session.run(None, {"images": x.astype(np.float32)})[0]

    for label, wrapped, raw in (
        ("tflite_int8", int8.predict, raw_tflite),
        ("onnx_float32", onnx_pred.predict, raw_onnx),
    ):
        # Interleave the two measurements three times and keep the medians, so drift in the
        # machine's speed does not land on one side.
        w, r = [], []
        for _ in range(3):
            r.append(p50(raw, 1, args.min_time / 2))
            w.append(p50(wrapped, 1, args.min_time / 2))
        results[f"{label}_raw_b1_ms"] = float(np.median(r))
        results[f"{label}_predictor_b1_ms"] = float(np.median(w))
        results[f"{label}_predictor_overhead"] = float(np.median(w) / np.median(r) - 1)

    # 3. FLOP/s at batch 64 of the float32 paths vs the machine's GEMM.
    flops = model_flops(model)
    results["model_gflops_per_image"] = flops / 1e9
    best = {}
    for label, predictor in (
        ("onnx_float32", onnx_pred),
        ("tflite_float32", load_predictor(tflite_fp32)),
        ("keras_direct_call", keras_pred),
    ):
        ms = p50(lambda x, p=predictor: p.predict(x, batch_size=64), 64, args.min_time)
        best[label] = 64 * flops / (ms / 1e3) / 1e9
    results["batch64_gflops"] = best
    gemm = matmul_gflops(args.min_time)
    results["matmul_gflops"] = gemm
    results["best_path"] = max(best, key=best.get)
    results["best_path_share_of_gemm"] = max(best.values()) / max(gemm.values())
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
