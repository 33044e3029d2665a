"""The most images/s any server can get from a TFLite file on this machine: LiteRT alone, no
server, no load generator, in the configurations servers use.

Each configuration runs back to back for ``--seconds``, in alternating rounds (this VM's speed
drifts): one interpreter with all the threads (one server process, one Triton instance), and
several 1-thread interpreters side by side on their own Python threads (``serve --workers N``,
Triton's ``instance_group`` count N), at the given batch sizes. Prints images/s and the CPU time
per image (process CPU over images, so the threads' waiting counts too).

    python benchmarks/litert_ceiling.py exports/cnn/cnn_int8.tflite [--threads 2]
        [--batches 8,32] [--seconds 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import numpy as np


def interpreter_step(path: Path, threads: int, batch: int):
    """A function that runs one batch of random pixels through its own interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=threads)
    detail = it.get_input_details()[0]
    out = it.get_output_details()[0]["index"]
    it.resize_tensor_input(detail["index"], [batch, 32, 32, 3])
    it.allocate_tensors()
    rng = np.random.default_rng(0)
    if detail["dtype"] == np.float32:
        x = rng.uniform(0, 255, (batch, 32, 32, 3)).astype(np.float32)
    else:
        x = rng.integers(0, 255, (batch, 32, 32, 3)).astype(detail["dtype"])

    def step():
        it.set_tensor(detail["index"], x)
        it.invoke()
        it.get_tensor(out)

    step()  # XNNPACK prepares on the first call
    return step


def run(path: Path, layout: list[tuple[int, int]], seconds: float) -> tuple[float, float]:
    """(images/s, CPU ms per image) of ``layout``, [(threads, batch), ...] interpreters at once."""
    steps = [(interpreter_step(path, t, b), b) for t, b in layout]
    counts = [0] * len(steps)
    stop = time.perf_counter() + seconds

    def loop(k: int) -> None:
        step, batch = steps[k]
        while time.perf_counter() < stop:
            step()
            counts[k] += batch

    workers = [threading.Thread(target=loop, args=(k,)) for k in range(len(steps))]
    cpu, wall = time.process_time(), time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    images = sum(counts)
    return images / wall, cpu / images * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batches", default="8,32")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    layouts = {}
    for b in (int(x) for x in args.batches.split(",")):
        layouts[f"1 interpreter x {args.threads} threads, batch {b}"] = [(args.threads, b)]
        layouts[f"{args.threads} interpreters x 1 thread, batch {b} each"] = [(1, b)] * args.threads
    from serve_peers import cpu_name  # benchmarks/ is this script's own folder

    print(f"{cpu_name()}, {os.cpu_count()} cores; {args.artifact.name}")
    for r in range(args.rounds):
        for name, layout in layouts.items():
            images, cpu_ms = run(args.artifact, layout, args.seconds)
            print(f"round {r + 1}  {name:42s} {images:8.1f} img/s  {cpu_ms:.2f} ms CPU/img")


if __name__ == "__main__":
    main()
