"""SIGTERM/SIGINT -> a stop request, installed first thing in every entry point.

Imports only the standard library, so an entry point can install it before its heavy
imports (torch, kafka): a signal that lands during startup then asks for a clean stop
instead of killing the process with -15.
"""

from __future__ import annotations

import signal
import threading

_stop: threading.Event | None = None


def install_stop_handler() -> threading.Event:
    """Route SIGTERM/SIGINT to the returned event (idempotent: always the same event)."""
    global _stop
    if _stop is None:
        event = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: event.set())
        _stop = event
    return _stop
