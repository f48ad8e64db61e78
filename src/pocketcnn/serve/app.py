"""The ASGI app: ``create_app(model.onnx, ...)`` -> a Starlette app with the routes below.

``POST /v1/predict``  images -> ``{model, runtime, predictions: [records of predict --json], latency_ms}``
``GET  /v1/model``    what the model is and how it preprocesses
``GET  /v1/model.onnx`` the model file itself (the browser page runs it on the visitor's device)
``GET  /healthz``     ``{"status": "ok"}``
``GET  /metrics``     Prometheus text format
``GET  /``            ``static_dir/index.html``, else a small page naming the model and routes
``/v2/...``            the Open Inference Protocol (KServe v2, Triton's clients): :mod:`.v2`

Every response carries the COOP/COEP headers of cross-origin isolation (:mod:`.isolation`).
"""
from __future__ import annotations

import asyncio
import contextlib
import html
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import PocketCNNError, first_line
from ..runtime.onnx import default_threads
from ..runtime.predictor import Prediction, Predictor, open_model
from ..validate import is_int
from .batching import DynamicBatcher
from .bodies import (REQUEST_FAILURES, HTTPProblem, ParsedRequest, Upload, error_response, failure_response,
                     parse_request, parse_topk)
from .isolation import CrossOriginIsolation
from .metrics import MetricsMiddleware, ServeMetrics
from .page import page_routes
from .settings import MB, ServeSettings
from .v2 import score_batch, v2_routes


class ModelService:
    """The model behind the routes: predictor, batcher, thread pools and metrics of one app."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        # idle ONNX Runtime threads sleep: decoding and the event loop need the CPUs between runs
        threads, runs = settings.resolved_threads()
        self.predictor: Predictor = open_model(settings.model_path, threads=threads, spinning=False)
        self.path = Path(settings.model_path)
        self.name = self.predictor.model or self.path.stem
        self.metrics = ServeMetrics()
        self.decode_workers = max(2, default_threads())
        self.decode_pool = ThreadPoolExecutor(self.decode_workers, thread_name_prefix="pocketcnn-decode")
        self.model_pool = ThreadPoolExecutor(runs, thread_name_prefix="pocketcnn-model")
        self.batcher = DynamicBatcher(score_batch(self.predictor), max_batch=settings.max_batch,
                                      max_wait_s=settings.max_wait_ms / 1000.0, executor=self.model_pool,
                                      on_batch=self.metrics.observe_batch, parallel=runs)
        self._info: dict[str, Any] | None = None

    def decode(self, uploads: tuple[Upload, ...]) -> list[np.ndarray | str]:
        """Each upload -> float32 ``(C, S, S)`` or the one-line error (runs in the decode pool)."""
        return self.decode_named((up.data, up.name) for up in uploads)

    def decode_named(self, images: Iterable[tuple[bytes, str]]) -> list[np.ndarray | str]:
        """Each ``(encoded image, the name its error gives)`` -> float32 ``(C, S, S)`` or that one-line error:
        one image's failure never fails the others (``/v1`` and ``/v2`` alike)."""
        out: list[np.ndarray | str] = []
        for data, name in images:
            try:
                out.append(self.predictor.preprocess(data, name=name))
            except PocketCNNError as exc:
                out.append(str(exc))
        return out

    def info(self) -> dict[str, Any]:
        if self._info is None:
            from ..runtime.onnx import count_onnx_params

            p, meta = self.predictor, self.predictor.runner.metadata
            spec = p.spec
            params = meta.get("params")
            if not is_int(params):
                params = count_onnx_params(self.path)
            self._info = {
                "name": self.name, "file": self.path.name, "file_bytes": self.path.stat().st_size,
                "runtime": p.runtime, "precision": getattr(p.runner, "precision", "fp32"), "params": params,
                "dataset": spec.name, "input_size": [spec.in_chans, spec.image_size, spec.image_size],
                "channels": spec.in_chans, "num_classes": len(spec.classes), "labels": list(spec.classes),
                "preprocessing": {"resize": spec.resize_size, "crop": spec.image_size, "interpolation": "bilinear",
                                  "mean": list(spec.mean), "std": list(spec.std)},
                "batching": {"max_batch": self.settings.max_batch, "max_wait_ms": self.settings.max_wait_ms,
                             "parallel_runs": self.batcher.parallel,
                             "threads_per_run": getattr(p.runner, "threads", None),
                             "model_batch": getattr(p.runner, "max_batch", None)},
                "pocketcnn_version": meta.get("pocketcnn_version"),
            }
        return self._info

    async def close(self) -> None:
        await self.batcher.close()
        self.decode_pool.shutdown(wait=False, cancel_futures=True)
        self.model_pool.shutdown(wait=False, cancel_futures=True)


def create_app(model_path: str | Path, *, max_batch: int = 32, max_wait_ms: float = 5.0,
               max_body_bytes: int = 10 * MB, threads: int | None = None, static_dir: str | Path | None = None,
               body_timeout_s: float = 30.0, max_images: int = 256, runs: int | None = None) -> Starlette:
    """A Starlette app serving one ONNX file (see the module docstring for the routes).

    The model is opened here: a bad file is a one-line PocketCNNError before anything listens.
    """
    settings = ServeSettings(str(model_path), max_batch, max_wait_ms, max_body_bytes, threads,
                             None if static_dir is None else str(static_dir), body_timeout_s, max_images, runs)
    return app_from_settings(settings)


def app_from_settings(settings: ServeSettings) -> Starlette:
    """The app of :func:`create_app` from a settings record (each uvicorn worker: :func:`app_from_env`)."""
    service = ModelService(settings)
    routes = [*V1Handlers(service).routes(),
              *v2_routes(service),  # the Open Inference Protocol (KServe v2)
              *page_routes(service.path, service.name, settings.static_dir)]  # the installable, offline page: .page
    if settings.static_dir is not None:
        routes.append(Mount("/static", StaticFiles(directory=settings.static_dir), name="static"))
    app = Starlette(routes=routes, middleware=[Middleware(CrossOriginIsolation),
                                               Middleware(MetricsMiddleware, metrics=service.metrics)],
                    exception_handlers={HTTPException: http_error, Exception: server_error},
                    lifespan=service_lifespan(service))
    app.state.service = service
    return app


def service_lifespan(service: ModelService):
    """The app's lifespan: nothing to start (the model is open), the service closed at shutdown."""
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        await service.close()

    return lifespan


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own HTTP errors (404, 405, ...) as JSON ``{"error": ...}``."""
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def server_error(request: Request, exc: Exception) -> Response:
    """Any other exception: a 500 naming it in one line."""
    return error_response(500, f"internal error: {type(exc).__name__}: {first_line(exc)}")


class V1Handlers:
    """The handlers of ``/v1``, ``/healthz``, ``/metrics`` and ``/``, bound to one :class:`ModelService`."""

    def __init__(self, service: ModelService) -> None:
        self.service = service
        self.settings = service.settings

    def routes(self) -> list[BaseRoute]:
        return [Route("/v1/predict", self.predict, methods=["POST"]), Route("/v1/model", self.model_info),
                Route("/v1/model.onnx", self.model_file),
                Route("/healthz", self.healthz), Route("/metrics", self.metrics), Route("/", self.index)]

    async def predict(self, request: Request) -> Response:
        start = time.perf_counter()
        try:
            parsed, topk = await self.read(request)
            decoded, probs = await self.score(parsed)
        except REQUEST_FAILURES as exc:
            return failure_response(exc)
        good = any(isinstance(x, np.ndarray) for x in decoded)
        body = {"model": self.service.name, "runtime": self.service.predictor.runtime,
                "predictions": self.records(parsed.uploads, decoded, probs, topk),
                "latency_ms": round((time.perf_counter() - start) * 1000.0, 3)}
        return JSONResponse(body, status_code=200 if good else 422)

    async def read(self, request: Request) -> tuple[ParsedRequest, int]:
        """The request's images and its topk: the query's (checked before the body is read), else the form's."""
        topk = parse_topk(request.query_params.get("topk"))
        parsed = await parse_request(request, limit=self.settings.max_body_bytes,
                                     timeout_s=self.settings.body_timeout_s, max_images=self.settings.max_images)
        if parsed.topk is not None and "topk" not in request.query_params:
            topk = parse_topk(parsed.topk)
        return parsed, topk

    async def score(self, parsed: ParsedRequest) -> tuple[list[np.ndarray | str], list[np.ndarray]]:
        """``(each upload decoded or its error, the probabilities of the decoded ones)``: decoded in
        the pool, counted in the metrics, run in the batcher; 422 for a raw body that does not decode."""
        service = self.service
        decoded = await asyncio.get_running_loop().run_in_executor(service.decode_pool, service.decode,
                                                                   parsed.uploads)
        good = [x for x in decoded if isinstance(x, np.ndarray)]
        service.metrics.count_images(len(good), len(decoded) - len(good))
        if parsed.raw and not good:
            raise HTTPProblem(422, str(decoded[0]))
        scores = await service.batcher.submit(good) if good else []  # v2.Scores
        return decoded, [s.probs for s in scores]

    def records(self, uploads: tuple[Upload, ...], decoded: list[np.ndarray | str], probs: list[np.ndarray],
                topk: int) -> list[dict[str, Any]]:
        """One ``predict --json`` record per upload: its top ``topk`` classes, or its error."""
        rows = iter(probs)
        return [(self.service.predictor.top(up.name, next(rows), topk) if isinstance(x, np.ndarray)
                 else Prediction(up.name, error=x)).to_dict() for up, x in zip(uploads, decoded)]

    async def model_info(self, request: Request) -> Response:
        info = await asyncio.get_running_loop().run_in_executor(self.service.decode_pool, self.service.info)
        return JSONResponse(info)

    async def model_file(self, request: Request) -> Response:
        return FileResponse(self.service.path, media_type="application/octet-stream")

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": self.service.name})

    async def metrics(self, request: Request) -> Response:
        return Response(self.service.metrics.render(), media_type=self.service.metrics.content_type)

    async def index(self, request: Request) -> Response:
        if self.settings.static_dir is not None and (Path(self.settings.static_dir) / "index.html").is_file():
            return FileResponse(Path(self.settings.static_dir) / "index.html")
        return HTMLResponse(landing_page(self.service.name, self.service.predictor.spec.classes, str(request.base_url)))


def landing_page(name: str, classes: tuple[str, ...], base_url: str = "http://127.0.0.1:8000/") -> str:
    """The page at ``/`` when no static folder is served: the model's name and the API routes."""
    e = html.escape
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pocketcnn: {e(name)}</title></head>
<body>
<h1>pocketcnn serves {e(name)}</h1>
<p>{len(classes)} classes: {e(", ".join(classes[:20]))}{" ..." if len(classes) > 20 else ""}</p>
<ul>
<li><code>POST /v1/predict</code>: image files as multipart/form-data, or one image as the body
(image/* or application/octet-stream); optional <code>?topk=5</code></li>
<li><code>GET <a href="/v1/model">/v1/model</a></code>: the model and its preprocessing</li>
<li><code>GET <a href="/healthz">/healthz</a></code>: health</li>
<li><code>GET <a href="/metrics">/metrics</a></code>: Prometheus metrics</li>
</ul>
<pre>curl -F image=@cat.png {e(base_url.rstrip("/"))}/v1/predict</pre>
</body></html>
"""


def app_from_env() -> Starlette:
    """The factory each uvicorn worker calls: settings from ``POCKETCNN_SERVE_SETTINGS``."""
    import warnings

    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)  # such images are refused anyway
    return app_from_settings(ServeSettings.from_env())
