"""Latency and throughput benchmarks: every artifact, runtime, device, batch size and thread count.

Timing follows TFLite's ``benchmark_model`` and ``onnxruntime_perf_test``: a monotonic nanosecond
clock, warm-up runs, then as many runs as fit ``min_time`` (never fewer than ``min_runs``), with
fresh input data for each run (a pool of distinct random batches, not zeros); percentiles come
from the per-run latencies. The Keras model is the baseline, through ``model.predict`` and
through a direct call, and every row shows its speed-up over ``model.predict`` at the same batch.
One failing or unavailable cell becomes a row with a status and a reason; the sweep goes on.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import _tf
from ..contract import Signature, library_versions
from ..cpu import cpu_info
from ..errors import CifarDeployError, InvalidOptionError, one_line
from ..export.metadata import Metadata
from ..runtime.artifacts import (
    collect_artifacts,
    declare,
    load_metadata,
    reference_metadata,
    resolve_reference,
)
from ..runtime.predictors import DEVICES, PREDICTORS, load_predictor

POOL = 4  # distinct input batches cycled through the timed runs


@dataclass
class BenchConfig:
    batch_sizes: tuple[int, ...] = (1, 8, 32, 128)
    threads: tuple[int | None, ...] = (None,)  # None: all cores
    devices: tuple[str, ...] = ("cpu",)
    warmup: int = 5  # untimed runs per cell
    min_time: float = 1.0  # seconds of timed runs per cell
    min_runs: int = 10  # timed runs per cell at least
    baseline: bool = True  # Keras model.predict and direct-call rows

    def validate(self) -> None:
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise InvalidOptionError(f"batch sizes must be >= 1, received {self.batch_sizes}")
        if any(t is not None and t < 1 for t in self.threads):
            raise InvalidOptionError(f"thread counts must be >= 1, received {self.threads}")
        unknown = [d for d in self.devices if d not in DEVICES]
        if unknown:
            raise InvalidOptionError(f"unknown device {unknown[0]!r}; expected cpu, gpu or all")
        if self.min_time < 0 or self.min_runs < 1 or self.warmup < 0:
            raise InvalidOptionError("expected --min-time >= 0, --warmup >= 0 and min runs >= 1")


@dataclass
class BenchRow:
    artifact: str
    format: str
    quantization: str
    runtime: str  # predictor, io-binding, model.predict, direct call
    provider: str
    device: str
    batch_size: int
    threads: int | None
    status: str = "ok"  # ok, failed, skipped
    reason: str | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    throughput: float | None = None  # images per second at the median latency
    runs: int = 0
    load_ms: float | None = None
    first_inference_ms: float | None = None
    peak_rss_added_mb: float | None = None
    size_bytes: int | None = None
    speedup_vs_predict: float | None = None  # Keras model.predict p50 / this p50, same batch

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class PeakRss:
    """Samples this process's resident memory every ``interval`` seconds in a thread; ``added_mb``
    is the highest sample minus the level at entry. (``ru_maxrss`` cannot be reset between
    artifacts, so it would carry the largest earlier artifact into every later row.)"""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.before = self.peak = 0.0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_mb())

    def __enter__(self) -> PeakRss:
        self.before = self.peak = _rss_mb()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())

    @property
    def added_mb(self) -> float:
        return round(max(self.peak - self.before, 0.0), 1)


def time_runs(
    fn: Callable[[np.ndarray], object],
    pool: Sequence[np.ndarray],
    warmup: int,
    min_time: float,
    min_runs: int,
) -> np.ndarray:
    """Per-run latencies in milliseconds (monotonic ns clock), after ``warmup`` untimed runs."""
    for i in range(warmup):
        fn(pool[i % len(pool)])
    latencies = []
    deadline = time.perf_counter_ns() + int(min_time * 1e9)
    i = 0
    while len(latencies) < min_runs or time.perf_counter_ns() < deadline:
        batch = pool[i % len(pool)]
        start = time.perf_counter_ns()
        fn(batch)
        latencies.append(time.perf_counter_ns() - start)
        i += 1
    return np.asarray(latencies, dtype=np.float64) / 1e6


def fill_timing(row: BenchRow, latencies: np.ndarray) -> BenchRow:
    row.p50_ms, row.p90_ms, row.p99_ms = (float(np.percentile(latencies, q)) for q in (50, 90, 99))
    row.mean_ms, row.std_ms = float(latencies.mean()), float(latencies.std())
    row.throughput = row.batch_size * 1000.0 / row.p50_ms
    row.runs = int(len(latencies))
    return row


def input_pool(
    batch_size: int, seed: int = 0, signature: Signature = Signature()
) -> list[np.ndarray]:
    rng = np.random.default_rng(seed + batch_size)
    shape = signature.batch_shape(batch_size)
    return [rng.integers(0, 256, size=shape, dtype=np.uint8) for _ in range(POOL)]


def has_gpu() -> bool:
    return bool(_tf.tf().config.list_physical_devices("GPU"))


def _cells(
    predict: Callable, base: BenchRow, config: BenchConfig, signature: Signature
) -> list[BenchRow]:
    rows = []
    for batch in config.batch_sizes:
        row = dataclasses.replace(base, batch_size=batch)
        try:
            pool = input_pool(batch, signature=signature)
            fill_timing(
                row, time_runs(predict, pool, config.warmup, config.min_time, config.min_runs)
            )
        except Exception as exc:  # one failing cell is a row, never an aborted sweep
            row.status, row.reason = "failed", one_line(exc, with_type=True)
        rows.append(row)
    return rows


def _untimed(base: BenchRow, config: BenchConfig, status: str, reason: str, runtimes=(None,)):
    """One row per batch size (and runtime) for cells that are skipped or cannot run."""
    return [
        dataclasses.replace(
            base, runtime=r or base.runtime, batch_size=b, status=status, reason=reason
        )
        for r in runtimes
        for b in config.batch_sizes
    ]


def bench_artifact(
    path: Path, device: str, threads: int | None, config: BenchConfig, meta: Metadata
) -> list[BenchRow]:
    """All batch sizes of one artifact on one device with one thread count (``meta``: its
    record, read and hash-checked by the caller)."""
    base = BenchRow(
        artifact=Path(path).name,
        format=meta.format,
        quantization=meta.quantization,
        runtime="predictor",
        provider="",
        device=device,
        batch_size=0,
        threads=threads,
        size_bytes=meta.artifact.size_bytes,
    )
    if device == "gpu" and not has_gpu():
        return _untimed(base, config, "skipped", "no GPU")
    with PeakRss() as rss:
        try:
            start = time.perf_counter_ns()
            predictor = load_predictor(path, device=device, threads=threads, metadata=meta)
            base.load_ms = (time.perf_counter_ns() - start) / 1e6
            base.provider = predictor.provider
            start = time.perf_counter_ns()
            signature = predictor.signature
            predictor.predict(input_pool(1, signature=signature)[0])
            base.first_inference_ms = (time.perf_counter_ns() - start) / 1e6
        except Exception as exc:
            return _untimed(base, config, "failed", one_line(exc, with_type=True))
        predict = lambda x: predictor.predict(x, batch_size=len(x))  # noqa: E731
        rows = _cells(predict, base, config, signature)
    for row in rows:
        row.peak_rss_added_mb = rss.added_mb
    if device == "gpu" and predictor.kind == "onnx":
        rows += _io_binding_rows(predictor, base, config)
    return rows


def _io_binding_rows(predictor, base: BenchRow, config: BenchConfig) -> list[BenchRow]:
    """ONNX Runtime CUDA with tensors resident on the device (I/O binding): compute only."""
    import onnxruntime as ort

    session = predictor.session
    rows = []
    for batch in config.batch_sizes:
        row = dataclasses.replace(base, runtime="io-binding", batch_size=batch)
        try:
            pool = [
                ort.OrtValue.ortvalue_from_numpy(x.astype(np.float32), "cuda", 0)
                for x in input_pool(batch, signature=predictor.signature)
            ]
            binding = session.io_binding()
            binding.bind_output("probabilities", "cuda")

            def run(value, binding=binding):
                binding.bind_ortvalue_input("images", value)
                session.run_with_iobinding(binding)

            fill_timing(row, time_runs(run, pool, config.warmup, config.min_time, config.min_runs))
        except Exception as exc:
            row.status, row.reason = "failed", one_line(exc, with_type=True)
        rows.append(row)
    return rows


def bench_keras_baseline(
    reference: Path, device: str, config: BenchConfig, metadata: Metadata | None = None
) -> list[BenchRow]:
    """The two ways a Keras user runs the model: ``model.predict`` and a direct call (after
    the preprocessing its artifacts declare, in ``metadata``)."""
    base = BenchRow(
        artifact=Path(reference).name,
        format="keras",
        quantization="none",
        runtime="",
        provider="",
        device=device,
        batch_size=0,
        threads=None,
        size_bytes=Path(reference).stat().st_size if Path(reference).exists() else None,
    )
    runtimes = ("model.predict", "direct call")
    if device == "gpu" and not has_gpu():
        return _untimed(base, config, "skipped", "no GPU", runtimes)
    with PeakRss() as rss:
        try:
            start = time.perf_counter_ns()
            predictor = load_predictor(reference, device=device, metadata=metadata)
            base.load_ms = (time.perf_counter_ns() - start) / 1e6
            base.provider = predictor.provider
            model, tf, signature = predictor.model, _tf.tf(), predictor.signature
            preprocess = predictor.metadata.declared_preprocess
            tf_device = "/GPU:0" if device == "gpu" else "/CPU:0"
            start = time.perf_counter_ns()
            model(preprocess(input_pool(1, signature=signature)[0].astype(np.float32)))
            base.first_inference_ms = (time.perf_counter_ns() - start) / 1e6
        except Exception as exc:
            return _untimed(base, config, "failed", one_line(exc, with_type=True), runtimes)

        def via_predict(x):
            with tf.device(tf_device):
                x = preprocess(x.astype(np.float32))
                return model.predict(x, batch_size=len(x), verbose=0)

        def via_call(x):
            with tf.device(tf_device):
                return np.asarray(model(preprocess(x.astype(np.float32)), training=False))

        as_predict = dataclasses.replace(base, runtime="model.predict")
        rows = _cells(via_predict, as_predict, config, signature)
        rows += _cells(
            via_call, dataclasses.replace(base, runtime="direct call"), config, signature
        )
    for row in rows:
        row.peak_rss_added_mb = rss.added_mb
    return rows


def add_speedups(rows: list[BenchRow]) -> None:
    """Each row's p50 speed-up over Keras ``model.predict`` on the same device and batch."""
    base = {
        (r.device, r.batch_size): r.p50_ms
        for r in rows
        if r.runtime == "model.predict" and r.status == "ok"
    }
    for r in rows:
        ref = base.get((r.device, r.batch_size))
        if ref and r.status == "ok":
            r.speedup_vs_predict = ref / r.p50_ms


def machine_info(config: BenchConfig) -> dict:
    tf = _tf.tf()
    cpu = cpu_info()
    return {
        "machine": platform.machine(),
        "system": platform.platform(),
        "cpu": cpu.model,
        "cores": cpu.cores,
        "cpu_int8": cpu.int8,
        "cpu_bf16": cpu.bf16,
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "threads": [t or os.cpu_count() for t in config.threads],
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or "default",
        "versions": library_versions(),
        "config": {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
        },
    }


def benchmark(
    artifacts: Sequence[Path],
    config: BenchConfig | None = None,
    reference: Path | None = None,
    on_progress: Callable[[str], None] | None = None,
    declared=None,
) -> tuple[list[BenchRow], dict]:
    """Benchmark every artifact (and the Keras baseline); returns (rows, machine info).
    ``declared`` (a :class:`~cifar_deploy.contract.Declaration`) applies to Keras models."""
    config = config or BenchConfig()
    config.validate()
    paths = collect_artifacts(artifacts)
    metas: dict[Path, Metadata] = {}
    broken: dict[Path, str] = {}  # a sidecar that cannot be used fails that artifact's rows only
    for path in paths:  # each sidecar read and hashed once
        try:
            metas[path] = load_metadata(path)
            if metas[path].format == "keras":
                declare(metas[path], declared)
        except CifarDeployError as exc:
            broken[path] = exc.message
    if config.baseline:
        reference = resolve_reference(metas, reference)
    rows: list[BenchRow] = []
    for device in config.devices:
        if config.baseline and reference is not None:
            if on_progress:
                on_progress(f"keras baseline ({device})")
            rows += bench_keras_baseline(
                reference, device, config, reference_metadata(reference, metas, declared)
            )
        for path in paths:
            if path in broken:
                kind = Path(path).suffix[1:] or "?"
                base = BenchRow(Path(path).name, kind, "?", "predictor", "", device, 0, None)
                rows += _untimed(base, config, "failed", broken[path])
                continue
            meta = metas[path]
            takes_threads = PREDICTORS[meta.format].takes_threads
            # TensorFlow-run artifacts take no per-model thread count: one row set, threads None.
            for threads in config.threads if takes_threads else (None,):
                if on_progress:
                    on_progress(f"{Path(path).name} ({device}, {threads or 'all'} threads)")
                rows += bench_artifact(path, device, threads, config, meta)
    add_speedups(rows)
    return rows, machine_info(config)


__all__ = ["BenchConfig", "BenchRow", "benchmark"]
