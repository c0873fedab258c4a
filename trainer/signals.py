"""SIGTERM/SIGINT -> a stop request, installed first thing in every entry point.

Imports only the standard library, so an entry point can install it before its heavy
imports (torch, kafka): a signal that lands during startup then asks for a clean stop
instead of killing the process with -15.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

_stop: threading.Event | None = None
_grace_s = 2.0


def install_stop_handler() -> threading.Event:
    """Route SIGTERM/SIGINT to the returned event (idempotent: always the same event)."""
    global _stop
    if _stop is None:
        event = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: event.set())
        _stop = event
    return _stop


_PR_SET_PDEATHSIG = 1


def die_with_launcher() -> None:
    """SIGTERM this rank when its launcher (torchrun) dies, even by SIGKILL (Linux).

    torchrun starts every rank in a session of its own, so a signal to the launcher's
    process group never reaches the ranks: without this a killed launcher leaves them
    running. A launcher that died before the request took effect: exit now.
    """
    if sys.platform != "linux":
        return
    launcher = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != launcher:
        raise SystemExit("the launcher is gone; not starting")


def exit_when_stuck(stop: threading.Event) -> None:
    """After a stop request, give this process its grace (:func:`set_stop_grace`) to end
    cleanly, then exit hard with 143: a rank blocked on a dead peer (in a collective, or
    building the process group) never reads ``stop``, and its launcher would wait for it."""

    def watch() -> None:
        stop.wait()
        time.sleep(_grace_s)
        print(f"no clean stop {_grace_s:.0f} s after the stop request: exiting", file=sys.stderr)
        sys.stderr.flush()
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, name="stop-watchdog", daemon=True).start()


def set_stop_grace(seconds: float) -> None:
    """How long :func:`exit_when_stuck` waits (short while starting, longer while a clean
    stop has work to do, such as the trainer's final push)."""
    global _grace_s
    _grace_s = seconds
