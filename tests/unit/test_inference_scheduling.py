"""The serving threads' scheduler slice: asked for, inherited, validated."""

from __future__ import annotations

import platform
import threading

import pytest

from inference import scheduling
from inference.config import ServeConfig
from schemas.errors import ConfigError


def _kernel() -> tuple[int, int]:
    major, minor = platform.release().split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


CUSTOM_SLICES = (
    platform.system() == "Linux"
    and platform.machine() in ("x86_64", "aarch64")
    and _kernel() >= (6, 12)
)
needs_custom_slices = pytest.mark.skipif(
    not CUSTOM_SLICES, reason="custom EEVDF slices need Linux 6.12+ on x86_64 or aarch64"
)


def _in_thread(fn):
    """``fn()``'s value, run on a fresh thread (the test's own thread keeps its slice)."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


@needs_custom_slices
def test_a_requested_slice_is_the_threads_and_the_threads_it_starts() -> None:
    def ask() -> tuple[bool, int | None, int | None]:
        took = scheduling.request_slice(250)
        return took, scheduling.slice_ns(), _in_thread(scheduling.slice_ns)

    before = scheduling.slice_ns()
    assert _in_thread(ask) == (True, 250_000, 250_000)
    assert scheduling.slice_ns() == before  # only the asking thread (and its children) changed


@needs_custom_slices
def test_the_shortest_slice_the_kernel_allows_is_taken() -> None:
    def ask() -> tuple[bool, int | None]:
        return scheduling.request_slice(100), scheduling.slice_ns()

    assert _in_thread(ask) == (True, 100_000)


def test_without_the_system_call_nothing_changes(monkeypatch) -> None:
    monkeypatch.setattr(scheduling.platform, "machine", lambda: "sparc64")
    assert scheduling.request_slice(100) is False
    assert scheduling.slice_ns() is None


@pytest.mark.parametrize("bad", [-1, 1, 99, 100_001])
def test_serve_refuses_a_slice_the_kernel_would_not_keep(bad: int) -> None:
    with pytest.raises(ConfigError, match="sched_slice_us"):
        ServeConfig(sched_slice_us=bad)


def test_serve_asks_for_a_short_slice_unless_told_not_to() -> None:
    assert ServeConfig().sched_slice_us == 100
    assert ServeConfig(sched_slice_us=0).sched_slice_us == 0
