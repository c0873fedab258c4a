"""ONNX Runtime sessions: provider choice, quiet logs, I/O binding on CUDA, warm-up.

CUDA is requested only when a GPU is actually usable (torch says so if it is already
imported, else a cheap libcuda probe), because onnxruntime-gpu logs an error for every
session that asks for CUDA on a machine without it.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from schemas.envelope import ModelEnvelope
from schemas.model_spec import INPUT_NAME, OUTPUT_NAME, InputSpec

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


@functools.cache
def cuda_usable() -> bool:
    """True when ONNX Runtime has the CUDA EP and a CUDA device answers."""
    if CUDA not in ort.get_available_providers():
        return False
    torch = sys.modules.get("torch")
    if torch is not None:
        return bool(torch.cuda.is_available())
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
        count = ctypes.c_int(0)
        if libcuda.cuInit(0) != 0 or libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return False
        return count.value > 0
    except OSError:
        return False


def choose_providers(device: str) -> list[str]:
    """Providers to request for ``device`` (auto | cpu | cuda), CPU always last."""
    if device == "cpu" or (device == "auto" and not cuda_usable()):
        return [CPU]
    return [CUDA, CPU]


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = intra_op_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only: no per-node warnings on CPU machines
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # save the 2 cores
    return so


@dataclass(eq=False)
class LoadedModel:
    """A validated, warmed session and the envelope it came from; immutable once serving."""

    envelope: ModelEnvelope
    session: ort.InferenceSession
    provider: str
    warm_ms: dict[int, float] = field(default_factory=dict)
    bind_output_to: str | None = None
    """Device for I/O binding ("cuda" on the CUDA EP: output stays on the GPU until one
    copy); None runs plain ``session.run``, which is faster on the CPU EP."""

    def __post_init__(self) -> None:
        if self.bind_output_to is None and self.provider == CUDA:
            self.bind_output_to = "cuda"

    @property
    def version(self) -> int:
        return self.envelope.version

    @property
    def name(self) -> str:
        return self.envelope.name

    @property
    def spec(self) -> InputSpec:
        return self.envelope.input_spec

    def run(self, windows: np.ndarray) -> np.ndarray:
        """``[B, T, 7]`` float32 -> ``[B, K, 2]`` float32 positions."""
        windows = np.ascontiguousarray(windows, dtype=np.float32)
        if self.bind_output_to is not None:
            binding = self.session.io_binding()
            binding.bind_cpu_input(INPUT_NAME, windows)
            binding.bind_output(OUTPUT_NAME, self.bind_output_to)
            self.session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()[0]
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: windows})[0]

    def warm_up(self, shapes: tuple[int, ...], rounds: int = 3) -> None:
        """Run every batch shape a few times so the first real batch pays no setup."""
        spec = self.spec
        for b in shapes:
            x = np.zeros((b, spec.history, len(spec.features)), np.float32)
            x[:, :, 0] = np.linspace(-(spec.history - 1) / spec.rate_hz, 0, spec.history)
            t0 = time.perf_counter()
            for _ in range(rounds):
                self.run(x)
            self.warm_ms[b] = (time.perf_counter() - t0) * 1e3 / rounds


def build_session(
    onnx_bytes: bytes, device: str = "auto", intra_op_threads: int = 1
) -> tuple[ort.InferenceSession, str]:
    """Create a session and return it with the provider actually in use."""
    providers = choose_providers(device)
    session = ort.InferenceSession(
        onnx_bytes, sess_options=session_options(intra_op_threads), providers=providers
    )
    used = session.get_providers()[0]
    if used != providers[0]:
        log.warning("requested %s but ONNX Runtime uses %s", providers[0], used)
    return session, used


def quiet_ort() -> None:
    """Keep ONNX Runtime's global logger to errors (CUDA probing noise included)."""
    ort.set_default_logger_severity(3)
