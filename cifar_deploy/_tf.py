"""Lazy, quiet TensorFlow/Keras import.

Importing TensorFlow on a CPU machine prints a dozen log lines (oneDNN notices, cuInit errors).
Users should see only our output, so the environment variables that silence them are set before
the first import unless verbose mode was asked for. Importing lazily also keeps ``--help`` fast.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

_VERBOSE = False


def set_verbose(verbose: bool) -> None:
    """Show TensorFlow's own logs (call before the first TensorFlow import)."""
    global _VERBOSE
    _VERBOSE = verbose


def is_verbose() -> bool:
    return _VERBOSE


def _quiet_env() -> None:
    if _VERBOSE:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # C++ INFO/WARNING/ERROR lines
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # explicit, which also drops the notice
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")


@contextlib.contextmanager
def quiet_native():
    """Send file descriptor 2 to a temporary file; replay it if the block raises.

    TensorFlow's C++ runtime (start-up, the TFLite converter, LiteRT's delegate notice) writes
    straight to fd 2 where no log level applies, so redirecting ``sys.stderr`` is not enough.
    """
    if _VERBOSE:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def tf():
    """The ``tensorflow`` module, imported quietly (devices initialised inside the silence)."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    _quiet_env()
    with quiet_native():
        import tensorflow

        tensorflow.config.list_physical_devices()
    if not _VERBOSE:
        tensorflow.get_logger().setLevel("ERROR")
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    return tensorflow


def keras():
    """The ``keras`` (Keras 3) module, imported after TensorFlow so both are quiet."""
    tf()
    import keras as _keras

    return _keras


def quiet_native_exit() -> None:
    """Silence file descriptor 2 once Python exits (not in verbose mode): LiteRT's accelerator
    registry prints a notice per accelerator from C++ destructors that run after Python."""
    import atexit

    if _VERBOSE:
        return

    def silence() -> None:
        sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)

    atexit.register(silence)
