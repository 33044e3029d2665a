"""``serve --workers N``: N server processes on the same ports, each with its own event loop,
its own copy of every model and its own batchers, so that the front end (HTTP parsing, gRPC
framing, validation, answers) runs on several cores instead of one.

The supervisor (the process the user started) binds N sockets to each port with ``SO_REUSEPORT``,
one per worker, which listens once its models are loaded: the kernel spreads new connections
over the listening ones, and a connection stays with the worker that accepted it
(perf_analyzer's 32 HTTP clients are 32 connections; its gRPC clients share 2 connections at
concurrency 8, 6 at 32). Workers are started fresh (``spawn``: nothing native is inherited
half-initialised), load the models, say so over a pipe, and serve. The supervisor prints what
the first one serves once all are up, forwards SIGINT and SIGTERM as a graceful stop (in-flight
requests finish), and stops everything with an error if a worker ends on its own.
``/metrics`` sums every worker's values (prometheus_client's multiprocess mode, in a scratch
folder removed at exit), whichever worker answers the scrape.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..errors import CifarDeployError, InvalidOptionError, WorkerError
from .launch import ServeOptions, Started, serve_here

STOP_GRACE_S = 40.0  # a worker's graceful stop (uvicorn allows 30 s for in-flight requests)


def reuseport_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` TCP sockets bound to ``host:port`` with ``SO_REUSEPORT`` (port 0: one free
    port, the same for all), not yet listening: each worker's event loop listens once its
    models answer, and the kernel hands connections only to listening sockets, so none waits
    on a worker that is still loading."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise InvalidOptionError(
            f"--workers {count}: this system has no SO_REUSEPORT to share a port between "
            "processes; expected Linux or a BSD, or --workers 1"
        )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((host, port))
            port = s.getsockname()[1]
    except OSError as exc:
        for s in sockets:
            s.close()
        raise InvalidOptionError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
    return sockets


@dataclass(frozen=True)
class _Failed:
    """A worker's project error, sent to the supervisor to be raised there as the same type."""

    kind: str
    message: str
    hint: str | None
    exit_code: int


def _worker(options: ServeOptions, http_socket, grpc_socket, pipe, metrics_dir: str) -> None:
    from .. import _tf, console
    from .server import MULTIPROC_ENV  # server.py loads prometheus_client only when used

    os.environ[MULTIPROC_ENV] = metrics_dir  # before prometheus_client loads

    _tf.set_verbose(options.verbose)
    console.setup_logging(options.verbose)
    try:
        serve_here(options, pipe.send, http_socket, grpc_socket)
    except CifarDeployError as exc:
        pipe.send(_Failed(type(exc).__name__, exc.message, exc.hint, exc.exit_code))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:  # stopped while loading
        sys.exit(130)


def _raise_failure(failed: _Failed) -> None:
    from .. import errors

    cls = getattr(errors, failed.kind, None)
    if not (isinstance(cls, type) and issubclass(cls, CifarDeployError)):
        cls = CifarDeployError
    exc = cls.__new__(cls)
    CifarDeployError.__init__(exc, failed.message, failed.hint)
    exc.exit_code = failed.exit_code
    raise exc


def serve_workers(options: ServeOptions, workers: int, announce: Callable[[Started], None]):
    """Run ``workers`` server processes on ``options.port`` (and ``grpc_port``) until SIGINT or
    SIGTERM; returns once every worker has stopped. Raises the first worker's error if one
    cannot start (the others are stopped), and :class:`~..errors.WorkerError` if one ends on its
    own while serving."""
    http = reuseport_sockets(options.host, options.port, workers)
    grpc = []
    try:
        if options.grpc_port is not None:
            grpc = reuseport_sockets(options.host, options.grpc_port, workers)
    except BaseException:
        for s in http:
            s.close()
        raise
    # Port 0 became a real port: every worker and the announcement use it.
    options = _with_ports(options, http[0], grpc[0] if grpc else None)
    metrics_dir = tempfile.mkdtemp(prefix="cifar-deploy-metrics.")
    context = multiprocessing.get_context("spawn")
    processes = []
    serving = False
    try:
        pipes = []
        for k in range(workers):
            reader, writer = context.Pipe(duplex=False)
            process = context.Process(
                target=_worker,
                args=(options, http[k], grpc[k] if grpc else None, writer, metrics_dir),
                name=f"cifar-deploy-worker-{k + 1}",
            )
            process.start()
            writer.close()
            processes.append(process)
            pipes.append(reader)
        started = _wait_started(processes, pipes)
        for s in http + grpc:  # the workers hold them now: a worker that ends takes its own away
            s.close()
        announce(started)
        serving = True
        _watch(processes)
    except KeyboardInterrupt:
        if not serving:
            raise  # stopped while loading: "interrupted", as with one process
        # asked to stop while serving: the workers finish their in-flight requests below
    finally:
        for s in http + grpc:
            s.close()
        _stop(processes)
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _with_ports(options: ServeOptions, http_socket, grpc_socket) -> ServeOptions:
    grpc_port = grpc_socket.getsockname()[1] if grpc_socket is not None else None
    return replace(options, port=http_socket.getsockname()[1], grpc_port=grpc_port)


def _wait_started(processes, pipes) -> Started:
    """The first worker's announcement, once every worker has made its own."""
    announced: dict[int, Started] = {}
    while len(announced) < len(processes):
        waiting = [k for k in range(len(processes)) if k not in announced]
        handles = [pipes[k] for k in waiting] + [processes[k].sentinel for k in waiting]
        multiprocessing.connection.wait(handles)
        for k in waiting:
            if pipes[k].poll():  # a message first: a worker that failed says why, then ends
                try:
                    message = pipes[k].recv()
                except EOFError:
                    message = None
                if isinstance(message, _Failed):
                    _raise_failure(message)
                if isinstance(message, Started):
                    announced[k] = message
                    continue
            if not processes[k].is_alive():
                processes[k].join()
                if processes[k].exitcode == 130:
                    raise KeyboardInterrupt
                raise WorkerError(
                    f"worker {k + 1} (pid {processes[k].pid}) exited with code "
                    f"{processes[k].exitcode} while loading the models"
                )
    return announced[0]


def _watch(processes) -> None:
    """Return never while every worker serves: a worker that ends on its own stops them all."""
    sentinels = {p.sentinel: k for k, p in enumerate(processes)}
    ended = multiprocessing.connection.wait(list(sentinels))
    k = sentinels[ended[0]]
    processes[k].join()
    raise WorkerError(
        f"worker {k + 1} (pid {processes[k].pid}) exited with code {processes[k].exitcode} "
        f"while serving; stopped the other {len(processes) - 1}",
        hint="its own messages above say why; --workers 1 serves in this process",
    )


def _stop(processes) -> None:
    """SIGTERM to every live worker (a graceful stop), then wait; a second interrupt, or a
    worker still running after the grace period, is killed."""
    for p in processes:
        if p.is_alive():
            os.kill(p.pid, signal.SIGTERM)
    try:
        for p in processes:
            p.join(STOP_GRACE_S)
    except KeyboardInterrupt:
        pass
    for p in processes:
        if p.is_alive():
            p.kill()
            p.join()
