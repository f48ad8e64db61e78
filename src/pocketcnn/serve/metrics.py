"""Prometheus metrics of one app, in a registry of its own (never the global one).

With several worker processes (``PROMETHEUS_MULTIPROC_DIR`` set before they start,
as ``pocketcnn serve --workers N`` does), every worker writes its values to that folder
and ``/metrics`` on any worker reads all of them (prometheus-client's multiprocess mode).
"""
from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

ROUTES = ("/v1/predict", "/v1/model", "/v1/model.onnx", "/healthz", "/metrics", "/")
V2_ROUTES = ("/v2", "/v2/health/live", "/v2/health/ready")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def route_label(path: str) -> str:
    """A bounded label for a request path: a known route, ``/static`` or ``other``."""
    if path in ROUTES:
        return path
    if path == "/v2" or path.startswith("/v2/"):  # the Open Inference Protocol: one label per route
        parts = path.split("/")
        if len(parts) < 4 or parts[2] != "models":
            return path if path in V2_ROUTES else "other"
        tail = parts[-1] if len(parts) > 4 and parts[-1] in ("infer", "ready", "config") else ""
        return "/v2/models/{name}" + (f"/{tail}" if tail else "")
    return "/static" if path.startswith("/static/") else "other"


class ServeMetrics:
    """Request count by route and status, request latency, batch sizes, model run time, images."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("pocketcnn_http_requests", "HTTP requests by route and status code",
                                ("route", "status"), registry=r)
        self.latency = Histogram("pocketcnn_http_request_duration_seconds", "HTTP request latency by route",
                                 ("route",), buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("pocketcnn_batch_size", "Images per model run (dynamic batching)",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.inference = Histogram("pocketcnn_inference_duration_seconds", "Time of one batched model run",
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.images = Counter("pocketcnn_images", "Images received, by outcome (ok: predicted, error: refused)",
                              ("outcome",), registry=r)
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        if self.multiprocess:
            from prometheus_client import multiprocess

            self.exposition = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.exposition)
        else:
            self.exposition = self.registry

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(seconds)

    def count_images(self, ok: int, error: int) -> None:
        if ok:
            self.images.labels("ok").inc(ok)
        if error:
            self.images.labels("error").inc(error)

    def render(self) -> bytes:
        """The Prometheus text format of every metric (of every worker in multiprocess mode)."""
        return generate_latest(self.exposition)


Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class MetricsMiddleware:
    """Pure ASGI middleware counting every HTTP request by route and status, with its latency."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]  # an exception before the response is a 500

        async def send_status(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = route_label(scope.get("path", ""))
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
