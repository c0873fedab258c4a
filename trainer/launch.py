"""``drivestream train --nproc N``: a thin wrapper that starts N ranks under torchrun.

torchrun gives each rank RANK/WORLD_SIZE/LOCAL_RANK and a rendezvous on a free port
(--standalone). When a rank dies, torchrun stops the others and exits; the launcher then
starts a fresh torchrun (a new rendezvous: torchrun's own in-place restarts could not
rebuild the gloo mesh) and the ranks resume from the trainer checkpoint. SIGTERM/SIGINT
are forwarded so every rank stops cleanly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from trainer.config import TrainConfig

log = logging.getLogger("trainer.launch")

_LAUNCHER_ONLY = ("nproc", "max_restarts")
STOP_GRACE_S = 30.0
RESTART_PAUSES_S = (1.0, 2.0, 4.0, 8.0)
"""Pause before the n-th restart in a row (the last one repeats)."""
HEALTHY_RUN_S = 60.0
"""A group that ran this long before failing starts a fresh restart count."""


def worker_argv(cfg: TrainConfig) -> list[str]:
    """Flags that rebuild ``cfg`` inside each rank (``python -m trainer.worker``)."""
    out: list[str] = []
    for f in dataclasses.fields(cfg):
        if f.name in _LAUNCHER_ONLY:
            continue
        value = getattr(cfg, f.name)
        text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        out += ["--" + f.name.replace("_", "-"), text]
    return out


def torchrun_command(cfg: TrainConfig) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={cfg.nproc}",
        "--max-restarts=0",  # restarts are ours: a fresh rendezvous each time
        "-m",
        "trainer.worker",
        *worker_argv(cfg),
    ]


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc); empty where that is not available."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the ranks themselves: they stop together at the next lockstep step and
    exit 0, so torchrun ends cleanly (signalling torchrun makes it dump a traceback)."""
    ranks = _children(proc.pid)
    for pid in ranks:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if not ranks and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)


def launch(cfg: TrainConfig, stop: threading.Event | None = None) -> int:
    """Run the group under torchrun in the foreground; restart it when it fails.

    A group whose rank died (killed, out of memory, a peer it lost) is started again as a
    fresh torchrun, up to ``max_restarts`` times in a row with a growing pause; a group that
    ran ``HEALTHY_RUN_S`` before failing starts a new count. Ranks resume from the trainer
    checkpoint. Returns 0 after a requested stop or the configured duration.
    ``stop`` is the startup signal handler's event: a stop asked before the ranks exist
    starts nothing, or is forwarded as soon as they do.
    """
    stop = stop or threading.Event()
    current: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, _frame: object) -> None:
        stop.set()
        for proc in current:
            _stop(proc)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    failures = 0
    try:
        while not stop.is_set():
            started = time.monotonic()
            proc = subprocess.Popen(torchrun_command(cfg))
            current[:] = [proc]
            if stop.is_set():  # arrived while torchrun was starting
                _stop(proc)
            rc = _wait(proc, stop)
            current.clear()
            if rc == 0 or stop.is_set():
                return 0
            failures = 1 if time.monotonic() - started >= HEALTHY_RUN_S else failures + 1
            if failures > cfg.max_restarts:
                log.error("trainer group exited with %d; %d restarts failed", rc, failures - 1)
                return rc
            pause = RESTART_PAUSES_S[min(failures, len(RESTART_PAUSES_S)) - 1]
            log.warning(
                "trainer group exited with %d; restart %d/%d in %.0f s (ranks resume from "
                "the checkpoint)",
                rc,
                failures,
                cfg.max_restarts,
                pause,
            )
            stop.wait(pause)
        return 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _wait(proc: subprocess.Popen[bytes], stop: threading.Event) -> int:
    """torchrun's exit code; after a stop request it gets ``STOP_GRACE_S``, then SIGTERM,
    then SIGKILL."""
    try:
        while not stop.is_set():
            try:
                return proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
        try:
            return proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:  # ranks did not stop in time: stop torchrun
            log.warning("ranks still running %.0f s after SIGTERM; stopping torchrun", STOP_GRACE_S)
            proc.send_signal(signal.SIGTERM)
            return proc.wait(timeout=STOP_GRACE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
