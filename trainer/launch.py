"""``drivestream train --nproc N``: a thin wrapper that starts N ranks under torchrun.

torchrun gives each rank RANK/WORLD_SIZE/LOCAL_RANK, a rendezvous on a free port
(--standalone) and elastic restarts (--max-restarts); ranks resume from the trainer
checkpoint after a restart. SIGTERM/SIGINT are forwarded so every rank stops cleanly.
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
from pathlib import Path

from trainer.config import TrainConfig

log = logging.getLogger("trainer.launch")

_LAUNCHER_ONLY = ("nproc", "max_restarts")
STOP_GRACE_S = 30.0


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
        f"--max-restarts={cfg.max_restarts}",
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
    """Run torchrun in the foreground; return 0 after a requested stop.

    ``stop`` is the startup signal handler's event: a stop asked before the ranks exist
    starts nothing, or is forwarded as soon as they do.
    """
    if stop is not None and stop.is_set():
        return 0
    proc = subprocess.Popen(torchrun_command(cfg))
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        _stop(proc)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    if stop is not None and stop.is_set():  # arrived while torchrun was starting
        forward(signal.SIGTERM, None)
    try:
        while True:
            try:
                rc = proc.wait(timeout=STOP_GRACE_S if stopping else None)
                break
            except subprocess.TimeoutExpired:  # ranks did not stop in time: stop torchrun
                log.warning(
                    "ranks still running %.0f s after SIGTERM; stopping torchrun", STOP_GRACE_S
                )
                proc.send_signal(signal.SIGTERM)
                rc = proc.wait(timeout=STOP_GRACE_S)
                break
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if rc != 0 and not stopping:
        log.error("torchrun exited with %d", rc)
        return rc
    return 0
