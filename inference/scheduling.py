"""A latency hint to Linux's scheduler: a short slice for the serving threads.

Linux's fair scheduler (EEVDF) gives each runnable thread a virtual deadline one *slice*
after it becomes eligible and runs the eligible thread whose deadline is earliest. Since
Linux 6.12 a thread may ask for its own slice through ``sched_setattr``'s
``sched_runtime`` (clamped to 0.1-100 ms; no privilege needed). A shorter slice does not
change the thread's share of the CPU (its nice value does that); it makes its deadlines
earlier, so a thread woken by a frame preempts batch work on the same core (the trainer
in ``drivestream up``, a co-located broker) sooner, instead of waiting out that work's
slice. Threads inherit it from the thread that starts them.

Elsewhere (another OS or CPU, an older kernel that ignores the field, a seccomp filter
that refuses the call) nothing changes, and :func:`request_slice` says so.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275)}
"""Machine -> (sched_setattr, sched_getattr) system call numbers."""


class _SchedAttr(ctypes.Structure):
    """``struct sched_attr`` (include/uapi/linux/sched/types.h), first two versions."""

    _fields_ = [
        ("size", ctypes.c_uint32),
        ("sched_policy", ctypes.c_uint32),
        ("sched_flags", ctypes.c_uint64),
        ("sched_nice", ctypes.c_int32),
        ("sched_priority", ctypes.c_uint32),
        ("sched_runtime", ctypes.c_uint64),
        ("sched_deadline", ctypes.c_uint64),
        ("sched_period", ctypes.c_uint64),
        ("sched_util_min", ctypes.c_uint32),
        ("sched_util_max", ctypes.c_uint32),
    ]


def _syscalls() -> tuple[ctypes.CDLL, int, int] | None:
    numbers = _SYSCALLS.get(platform.machine())
    if platform.system() != "Linux" or numbers is None:
        return None
    return ctypes.CDLL(None, use_errno=True), *numbers


def _read_attr(tid: int) -> _SchedAttr | None:
    """Thread ``tid``'s (0: the calling thread's) ``sched_attr``; None where it cannot be
    read (the errno says why)."""
    calls = _syscalls()
    if calls is None:
        return None
    libc, _, getattr_nr = calls
    attr = _SchedAttr()
    if libc.syscall(getattr_nr, tid, ctypes.byref(attr), ctypes.sizeof(attr), 0) != 0:
        return None
    return attr


def slice_ns(tid: int = 0) -> int | None:
    """The scheduler's slice for thread ``tid`` (0: the calling thread), ns; None where it
    cannot be read (a kernel before 6.12 may read 0)."""
    attr = _read_attr(tid)
    return None if attr is None else int(attr.sched_runtime)


def request_slice(slice_us: int) -> bool:
    """Ask for a ``slice_us`` slice for the calling thread (and the threads it starts
    from now on), keeping its policy and nice value. True if the kernel took it."""
    calls = _syscalls()
    if calls is None:
        log.info("scheduler slice: not on %s %s", platform.system(), platform.machine())
        return False
    libc, setattr_nr, _ = calls
    attr = _read_attr(0)
    if attr is None:
        log.info("scheduler slice: sched_getattr failed: %s", os.strerror(ctypes.get_errno()))
        return False
    if attr.sched_policy not in (os.SCHED_OTHER, os.SCHED_BATCH):
        log.info("scheduler slice: kept policy %d as it is", attr.sched_policy)
        return False
    attr.size = ctypes.sizeof(attr)
    attr.sched_runtime = slice_us * 1000
    if libc.syscall(setattr_nr, 0, ctypes.byref(attr), 0) != 0:
        log.info("scheduler slice: sched_setattr failed: %s", os.strerror(ctypes.get_errno()))
        return False
    took = slice_ns() == slice_us * 1000
    log.info(
        "scheduler slice: %s",
        f"{slice_us} µs" if took else "not supported by this kernel (needs Linux 6.12+)",
    )
    return took
