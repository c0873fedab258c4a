"""Prometheus metrics of one serving instance, and the /metrics + /healthz HTTP server.

Each instance has its own registry, so several instances can live in one process (tests).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

#: Stage latency buckets, seconds: 100 µs .. 1 s.
LATENCY_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
STAGES = ("kafka_in", "queue", "infer", "publish", "service", "since_produce")
FOLD_EVERY = 512
"""Predictions buffered by the stage histogram before it buckets them."""


class StageHistogram(Collector):
    """The per-stage latency histogram, fed the stamps of each published batch.

    Same exposition as a prometheus_client Histogram labelled by ``stage``. A batch costs
    one list append (:meth:`observe_batch`); the stages of everything buffered are computed
    and bucketed in one vectorised pass once :data:`FOLD_EVERY` predictions wait, or when
    the histogram is read, instead of a dozen numpy calls per batch (BENCHMARKS.md).
    """

    name = "drivestream_inference_stage_seconds"
    documentation = "Latency of each stage of one prediction"
    stages = STAGES

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self._bounds = np.asarray(buckets, dtype=np.float64)
        self._counts = np.zeros((len(STAGES), len(buckets) + 1), np.int64)  # last: +Inf
        self._sums = np.zeros(len(STAGES), np.float64)
        self._pending: list[np.ndarray] = []
        self._waiting = 0
        self._lock = threading.Lock()

    def observe_batch(self, stamps: np.ndarray) -> None:
        """One published batch: ``stamps[i]`` is prediction i's (t_produce_ns,
        t_consumed_ns, t_infer_start_ns, t_infer_end_ns, t_published_ns). The array is kept
        until folded: the caller must not change it."""
        with self._lock:
            self._pending.append(stamps)
            self._waiting += len(stamps)
            if self._waiting < FOLD_EVERY:
                return
            pending, self._pending, self._waiting = self._pending, [], 0
        self._fold(pending)

    def _fold(self, pending: list[np.ndarray]) -> None:
        if not pending:
            return
        produce, consumed, t0, t1, t_pub = np.concatenate(pending).T
        ns = np.stack(
            [
                np.maximum(0, consumed - produce),  # kafka_in
                t0 - consumed,  # queue
                t1 - t0,  # infer
                t_pub - t1,  # publish
                t_pub - consumed,  # service
                np.maximum(0, t_pub - produce),  # since_produce
            ]
        )
        self.observe_many(ns / 1e9)

    def observe_many(self, seconds: np.ndarray) -> None:
        """``seconds[stage, i]``: latency of prediction i at each stage (rows in STAGES order)."""
        idx = np.searchsorted(self._bounds, seconds, side="left")  # le semantics: v <= bound
        width = len(self.buckets) + 1
        flat = (idx + np.arange(len(self.stages))[:, None] * width).ravel()
        counts = np.bincount(flat, minlength=self._counts.size).reshape(self._counts.shape)
        sums = seconds.sum(axis=1)
        with self._lock:
            self._counts += counts
            self._sums += sums

    def counts(self, stage: str) -> tuple[list[int], float]:
        """Cumulative bucket counts (last: +Inf = total) and the sum of one stage."""
        i = self.stages.index(stage)
        with self._lock:
            pending, self._pending, self._waiting = self._pending, [], 0
        self._fold(pending)
        with self._lock:
            return np.cumsum(self._counts[i]).tolist(), float(self._sums[i])

    def collect(self) -> Iterator[HistogramMetricFamily]:
        fam = HistogramMetricFamily(self.name, self.documentation, labels=["stage"])
        for stage in self.stages:
            cumulative, total = self.counts(stage)
            bounds = [*(str(b) for b in self.buckets), "+Inf"]
            fam.add_metric([stage], list(zip(bounds, cumulative, strict=True)), total)
        yield fam


class CountHistogram(Collector):
    """A histogram of small whole numbers (frames per batch) at the cost of a list index.

    Same exposition as a prometheus_client Histogram without labels, but :meth:`observe`
    takes no lock and walks no buckets: each count up to the largest bound has its bucket
    looked up in a table. The serving thread is its only writer; a scrape reads a copy.
    """

    def __init__(self, name: str, documentation: str, buckets: tuple[int, ...]) -> None:
        self.name, self.documentation, self.buckets = name, documentation, buckets
        self._bucket_of = [
            next(i for i, b in enumerate(buckets) if n <= b) for n in range(buckets[-1] + 1)
        ]
        self._counts = [0] * (len(buckets) + 1)  # last: +Inf
        self._sum = 0

    def observe(self, n: int) -> None:
        table = self._bucket_of
        self._counts[table[n] if 0 <= n < len(table) else -1] += 1
        self._sum += n

    def collect(self) -> Iterator[HistogramMetricFamily]:
        counts, total = list(self._counts), self._sum
        cumulative = np.cumsum(counts).tolist()
        bounds = [*(str(float(b)) for b in self.buckets), "+Inf"]
        yield HistogramMetricFamily(
            self.name,
            self.documentation,
            buckets=list(zip(bounds, cumulative, strict=True)),
            sum_value=total,
        )


class ServeMetrics:
    """Counters, gauges and histograms the serving loop updates."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.stage_latency = StageHistogram(LATENCY_BUCKETS)
        r.register(self.stage_latency)
        self.batch_size = CountHistogram(
            "drivestream_inference_batch_size", "Frames per model batch", BATCH_BUCKETS
        )
        r.register(self.batch_size)
        self.predictions = Counter(
            "drivestream_inference_predictions",
            "Predictions handed to the producer (a failed delivery stops the service)",
            ["source"],
            registry=r,
        )
        self.fallbacks = Counter(
            "drivestream_inference_fallbacks", "Fallback answers by reason", ["reason"], registry=r
        )
        self.deadletters = Counter(
            "drivestream_inference_deadletters",
            "Records handed to the producer for deadletter (a failed delivery stops the service)",
            registry=r,
        )
        self.budget_misses = Counter(
            "drivestream_inference_budget_misses",
            "Predictions published after their budget",
            ["source"],
            registry=r,
        )
        self.model_version = Gauge(
            "drivestream_inference_model_version", "Serving model version (-1: none)", registry=r
        )
        self.model_version.set(-1)
        self.model_trained_until = Gauge(
            "drivestream_inference_model_trained_until_seconds",
            "Label time (unix s) of the newest sample the serving model was trained on; "
            "time() minus it is the trainer's freshness (0: no model)",
            registry=r,
        )
        self.gate_predictor = Gauge(
            "drivestream_inference_gate_predictor",
            "1 for the predictor answering what the model could answer (model, cv or ctrv)",
            ["predictor"],
            registry=r,
        )
        self.gate_fde = Gauge(
            "drivestream_inference_gate_fde_meters",
            "Mean error at the longest horizon on recent ground truth, per predictor",
            ["predictor"],
            registry=r,
        )
        self.gate_samples = Gauge(
            "drivestream_inference_gate_truth_windows",
            "Ground-truth windows the last gate verdict was judged on",
            registry=r,
        )
        self.gate_switches = Counter(
            "drivestream_inference_gate_switches",
            "Changes of the answering predictor, by the new predictor and its reason",
            ["predictor", "reason"],
            registry=r,
        )
        self.swaps = Counter(
            "drivestream_inference_swaps", "Model swap outcomes", ["outcome", "reason"], registry=r
        )
        self.swap_pause = Histogram(
            "drivestream_inference_swap_pause_seconds",
            "Time the serving loop spent swapping the model reference",
            buckets=(1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1),
            registry=r,
        )
        self.provider = Gauge(
            "drivestream_inference_provider",
            "1 for the ONNX Runtime execution provider in use",
            ["provider"],
            registry=r,
        )
        self.lag = Gauge(
            "drivestream_inference_consumer_lag",
            "Records behind the partition end",
            ["partition"],
            registry=r,
        )
        self.vehicles = Gauge(
            "drivestream_inference_vehicles", "Vehicles with history here", registry=r
        )

        # children cached: labels() costs more than inc() on the hot path
        self.by_source = {s: self.predictions.labels(source=s) for s in ("model", "fallback")}

    def set_provider(self, provider: str) -> None:
        self.provider.clear()
        self.provider.labels(provider=provider).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """Serves /metrics and /healthz on a background thread; ``port`` 0 means off."""

    def __init__(self, metrics: ServeMetrics, health: Callable[[], dict], host: str, port: int):
        self._metrics, self._health = metrics, health
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.host, self.port = host, port

    def start(self) -> None:
        if self.port == 0:
            return
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/metrics"):
                    self._send(200, outer._metrics.render(), CONTENT_TYPE_LATEST)
                elif self.path.startswith("/healthz"):
                    state = outer._health()
                    body = json.dumps(state).encode()
                    self._send(200 if state.get("ok") else 503, body, "application/json")
                else:
                    self._send(404, b"try /metrics or /healthz\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
