"""The retrieval model's own Prometheus metrics, served on Triton's metrics port (``/metrics``)
through the Python backend's custom-metrics API (``pb_utils.MetricFamily``).

Triton's ``nv_inference_request_success`` counts a request the model answers with an error
(a rejected one) as a success, so outcomes are counted here:

- ``retrieval_requests_total{outcome, reason}``: ``ok``, ``rejected`` (the request check that
  failed, e.g. ``negative_id``) or ``failed`` (the graph failed: feature store down, ...);
- ``retrieval_users_total{outcome}``: users ``ranked`` by the index, ``fallback`` (unknown:
  popular items) and, among the ranked, ``partial`` (some features missing);
- ``retrieval_stage_seconds{stage}``: time per stage of a batch (``features``, ``encode``,
  ``tower``, ``index``, ``item_features``), for the first batch and one in 8 after it (a
  sample: every metric call is a round trip from the backend process to the server; with
  every batch recorded, the calls were about a fifth of the backend's busy time at
  concurrency 1),
  a histogram (``_bucket``, ``_sum``, ``_count``); on a
  Triton without histogram metrics only ``_sum`` and ``_count`` (counters), which give the same
  mean: ``rate(retrieval_stage_seconds_sum[5m]) / rate(retrieval_stage_seconds_count[5m])``.

Every metric carries the labels ``model`` and ``version``.

Each metric call is a round trip from the backend process to the server, which under load cost
about a fifth of ``execute``'s time (py-spy, concurrency 1). So ``execute`` only adds to counts
held in the process, and a thread sends them within :data:`FLUSH_S` (Triton's vLLM backend
reports its metrics from a thread too; the stub serializes its messages to the server).
"""

from __future__ import annotations

import logging
import threading
import time

logger = logging.getLogger(__name__)

REQUESTS = "retrieval_requests_total"
USERS = "retrieval_users_total"
STAGE_SECONDS = "retrieval_stage_seconds"
FLUSH_S = 0.1  # what is counted reaches the server's /metrics within this
BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]


class ModelMetrics:
    """The metric families of one model version and their labelled series (created on first use).

    Args:
        pb_utils: Triton's ``triton_python_backend_utils``.
        model: model name.
        version: model version.
    """

    def __init__(self, pb_utils, model: str, version: str):
        family = pb_utils.MetricFamily
        self._labels = {"model": model, "version": str(version)}
        self._requests = family(name=REQUESTS, description="requests by outcome (ok, rejected, failed) and reason",
                                kind=family.COUNTER)
        self._users = family(name=USERS, description="users answered: ranked, fallback, partial", kind=family.COUNTER)
        self.histogram = hasattr(family, "HISTOGRAM")
        if self.histogram:
            self._stages = family(name=STAGE_SECONDS, description="seconds per graph stage of a batch",
                                  kind=family.HISTOGRAM)
        else:
            self._stage_sum = family(name=f"{STAGE_SECONDS}_sum", description="seconds per graph stage, summed",
                                     kind=family.COUNTER)
            self._stage_count = family(name=f"{STAGE_SECONDS}_count", description="graph stage runs",
                                       kind=family.COUNTER)
        self._series: dict = {}
        self._pending: dict = {}  # (family attribute, labels) -> count not yet sent
        self._pending_stages: list = []
        self._lock, self._sending = threading.Lock(), threading.Lock()
        self._wake, self._closed = threading.Event(), False
        self._thread = threading.Thread(target=self._send_loop, name="retrieval-metrics", daemon=True)
        self._thread.start()

    def _metric(self, family, **labels):
        key = (id(family), tuple(sorted(labels.items())))
        if key not in self._series:
            options = {"buckets": BUCKETS} if self.histogram and family is getattr(self, "_stages", None) else {}
            self._series[key] = family.Metric(labels={**self._labels, **labels}, **options)
        return self._series[key]

    def _count(self, family: str, count, **labels) -> None:
        key = (family, tuple(sorted(labels.items())))
        with self._lock:
            self._pending[key] = self._pending.get(key, 0) + count
        self._wake.set()

    def request(self, outcome: str, reason: str = "", count: int = 1) -> None:
        """Count ``count`` requests: ``ok``, ``rejected`` (with the check's ``reason``) or ``failed``."""
        if count:
            self._count("_requests", count, outcome=outcome, reason=reason)

    def users(self, ranked: int, fallback: int, partial: int) -> None:
        """Count the users of a batch by how they were answered."""
        for outcome, count in (("ranked", ranked), ("fallback", fallback), ("partial", partial)):
            if count:
                self._count("_users", count, outcome=outcome)

    def stages(self, seconds: dict) -> None:
        """Record the time of each stage of one batch (``{stage: seconds}``)."""
        with self._lock:
            self._pending_stages.append(dict(seconds))
        self._wake.set()

    def flush(self) -> None:
        """Send what was counted so far (and wait for a send under way)."""
        with self._sending:
            with self._lock:
                counts, stages = self._pending, self._pending_stages
                self._pending, self._pending_stages = {}, []
            for (family, labels), count in counts.items():
                self._metric(getattr(self, family), **dict(labels)).increment(count)
            for seconds in stages:
                for stage, value in seconds.items():
                    if self.histogram:
                        self._metric(self._stages, stage=stage).observe(value)
                    else:
                        self._metric(self._stage_sum, stage=stage).increment(value)
                        self._metric(self._stage_count, stage=stage).increment(1)

    def _send_loop(self) -> None:
        while True:
            self._wake.wait()
            if self._closed:
                return
            time.sleep(FLUSH_S)  # gather what the next batches count
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # noqa: BLE001  a server shutting down; the counts stay lost, serving goes on
                logger.exception("retrieval metrics could not be sent")

    def close(self) -> None:
        """Send what is left and stop the sending thread (the model's ``finalize``)."""
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=5)
        self.flush()
