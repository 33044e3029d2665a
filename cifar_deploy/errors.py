"""The exception types cifar-deploy raises on purpose, in one place.

Each error carries a one-line message that says what was received and what was expected, an
optional hint, and the exit code the CLI uses for it. The CLI prints ``error: <message>`` (and the
hint) and exits with ``exit_code``; it never shows a traceback for these; the server answers a
:class:`RequestError` with its HTTP status. (Library code also lets Python's own exceptions
through where they mean a bug, and ``KeyboardInterrupt`` where the user stopped the work.)
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

EXIT_USAGE = 2  # bad input: missing data, unknown names, invalid options, corrupt files
EXIT_FAILURE = 1  # the work ran and failed (a check failed, a stage failed)
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class CifarDeployError(Exception):
    """Base class: a message for people, a hint, and the CLI exit code."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class DataNotFoundError(CifarDeployError):
    """No CIFAR-10 data could be found or downloaded."""


class DataFormatError(CifarDeployError):
    """A CIFAR-10 file exists but is empty, truncated, corrupt or of the wrong shape."""


class UnsafePickleError(DataFormatError):
    """A data file asked the unpickler for a callable outside the allow-list."""


class UnknownNameError(CifarDeployError):
    """A name (model, format, ...) that no registry knows."""


class InvalidOptionError(CifarDeployError):
    """An option value out of range, or a combination of options that does not apply."""


class WeightsUnavailableError(CifarDeployError):
    """Pretrained weights were asked for but could not be downloaded or read."""


class TrainingInterrupted(CifarDeployError):
    """Training stopped by Ctrl-C; ``last.keras`` was saved."""

    exit_code = EXIT_INTERRUPTED


def one_line(exc: BaseException, limit: int = 200, with_type: bool = False) -> str:
    """An exception as one line for an error message or a table cell: a project error's own
    message; otherwise the first line of its text cut to ``limit`` characters, prefixed with its
    type when asked, or just its type when it has no text."""
    if isinstance(exc, CifarDeployError):
        return exc.message
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    first = text.splitlines()[0][:limit]
    return f"{type(exc).__name__}: {first}" if with_type else first


def unknown_name(kind: str, received: str, valid: Iterable[str]) -> UnknownNameError:
    """Build the error for an unknown name, listing the valid ones and the closest match."""
    valid = sorted(valid)
    close = difflib.get_close_matches(received, valid, n=1)
    hint = f"did you mean {close[0]!r}?" if close else None
    return UnknownNameError(
        f"unknown {kind} {received!r}; expected one of: {', '.join(valid)}", hint=hint
    )


class InvalidModelError(CifarDeployError):
    """A model file that is missing, empty, truncated, not a Keras model, or unsafe to load."""


class ExportError(CifarDeployError):
    """A converter failed; the message names the format. No partial artifact is left behind."""

    exit_code = EXIT_FAILURE


class ArtifactExistsError(CifarDeployError):
    """The target artifact exists and --force was not given."""


class DeviceUnavailableError(CifarDeployError):
    """A GPU was asked for and is not there (or the runtime cannot use it): never a silent CPU
    fallback."""


class WorkerError(CifarDeployError):
    """A worker process of ``serve --workers`` ended without being asked to; the others are
    stopped with it."""

    exit_code = EXIT_FAILURE


class RequestError(CifarDeployError):
    """A bad request or input file (an undecodable image, a malformed inference request): the
    server answers it with ``status`` and this message; ``predict`` reports it for that file."""

    def __init__(self, message: str, status: int = 400, hint: str | None = None):
        super().__init__(message, hint)
        self.status = status
