"""Specification of how an interrupt that a native library mangled is kept quiet."""

from __future__ import annotations

import types

from cifar_deploy import interrupts


def unraisable(exc: BaseException):
    return types.SimpleNamespace(exc_value=exc, exc_type=type(exc), exc_traceback=None, object=None)


def mangled() -> SystemError:
    """What TensorFlow's C++ raises when our KeyboardInterrupt lands inside its call."""
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise SystemError(  # noqa: B904 (the implicit context is what C code leaves)
                "<built-in function __import__> returned a result with an exception set"
            )
    except SystemError as exc:
        return exc


def test_an_error_raised_while_our_interrupt_was_pending_is_not_printed(monkeypatch):
    printed = []
    monkeypatch.setattr(interrupts.sys, "__unraisablehook__", printed.append)
    monkeypatch.setattr(interrupts, "_received", [15])
    interrupts._unraisable(unraisable(mangled()))
    interrupts._unraisable(unraisable(KeyboardInterrupt()))
    assert printed == []
    interrupts._unraisable(unraisable(ValueError("unrelated")))
    assert len(printed) == 1  # anything else is still printed


def test_without_a_signal_even_a_mangled_interrupt_is_printed(monkeypatch):
    printed = []
    monkeypatch.setattr(interrupts.sys, "__unraisablehook__", printed.append)
    monkeypatch.setattr(interrupts, "_received", [])
    interrupts._unraisable(unraisable(mangled()))
    assert len(printed) == 1
