"""Stopping work cleanly: SIGTERM is handled as Ctrl-C, and an interrupt that a native library
swallowed is noticed as soon as control returns.

The CLI calls :func:`install` once. Both signals then raise ``KeyboardInterrupt`` in the main
thread, so every ``finally`` and ``except BaseException`` cleanup runs for either (a default
SIGTERM would end the process with no cleanup at all). A signal that arrives while a converter
runs native code may be raised inside the library and lost there; :func:`check` after each
converter call raises it again. One that lands in a destructor or callback, where Python can only
print it as "Exception ignored" with a traceback, is not printed: it is recorded, and
:func:`check` raises it.

Scratch folders carry the creating process's id (:func:`scratch_prefix`), so a later run can
remove the ones a killed process left behind (:func:`remove_stale`).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

_received: list[int] = []  # signals seen since install()


def _handler(signum, frame) -> None:
    _received.append(signum)
    raise KeyboardInterrupt


def _caused_by_interrupt(exc: BaseException | None) -> bool:
    """Whether ``exc`` is a KeyboardInterrupt or was raised while handling one (a native
    library that got our interrupt mid-call can turn it into a SystemError: "returned a result
    with an exception set")."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _unraisable(args) -> None:
    if _received and _caused_by_interrupt(args.exc_value):
        return  # our own interrupt, raised where it could not propagate: check() raises it
    sys.__unraisablehook__(args)


def install() -> None:
    """Handle SIGINT and SIGTERM as ``KeyboardInterrupt`` (main thread only)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _handler)
    sys.unraisablehook = _unraisable


def check() -> None:
    """Raise ``KeyboardInterrupt`` if a signal arrived since :func:`install`, even one that the
    code running at that moment caught and dropped."""
    if _received:
        raise KeyboardInterrupt


def scratch_prefix(name: str) -> str:
    """``name`` tagged with this process's id, for a scratch folder's prefix."""
    return f"{name}.pid{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale(directory: Path, name: str) -> list[Path]:
    """Remove the scratch folders (and files) ``<name>.pid<N>.*`` in ``directory`` whose
    process is gone; returns what was removed."""
    removed = []
    for path in Path(directory).glob(f"{name}.pid*.*"):
        pid_text = path.name[len(name) + 4 :].split(".", 1)[0]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
