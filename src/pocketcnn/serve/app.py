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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import PocketCNNError, first_line
from ..runtime.onnx import default_threads
from ..runtime.predictor import Prediction, Predictor, open_model
from .batching import BatcherClosed, DynamicBatcher
from .bodies import HTTPProblem, Upload, parse_request, parse_topk
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
        self.decode_pool = ThreadPoolExecutor(max(2, default_threads()), thread_name_prefix="pocketcnn-decode")
        self.model_pool = ThreadPoolExecutor(runs, thread_name_prefix="pocketcnn-model")
        self.batcher = DynamicBatcher(score_batch(self.predictor), max_batch=settings.max_batch,
                                      max_wait_s=settings.max_wait_ms / 1000.0, executor=self.model_pool,
                                      on_batch=self.metrics.observe_batch, parallel=runs)
        self._info: dict[str, Any] | None = None

    def decode(self, uploads: tuple[Upload, ...]) -> list[np.ndarray | str]:
        """Each upload -> float32 ``(C, S, S)`` or the one-line error (runs in the decode pool)."""
        out: list[np.ndarray | str] = []
        for up in uploads:
            try:
                out.append(self.predictor.preprocess(up.data, name=up.name))
            except PocketCNNError as exc:
                out.append(str(exc))
        return out

    def info(self) -> dict[str, Any]:
        if self._info is None:
            from ..runtime.onnx import count_onnx_params

            p, meta = self.predictor, self.predictor.runner.metadata
            spec = p.spec
            params = meta.get("params")
            if not isinstance(params, int) or isinstance(params, bool):
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


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


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
    service = ModelService(settings)

    async def predict(request: Request) -> Response:
        start = time.perf_counter()
        try:
            topk = parse_topk(request.query_params.get("topk"))
            parsed = await parse_request(request, limit=settings.max_body_bytes, timeout_s=settings.body_timeout_s,
                                         max_images=settings.max_images)
            if parsed.topk is not None and "topk" not in request.query_params:
                topk = parse_topk(parsed.topk)
            loop = asyncio.get_running_loop()
            decoded = await loop.run_in_executor(service.decode_pool, service.decode, parsed.uploads)
            good = [x for x in decoded if isinstance(x, np.ndarray)]
            service.metrics.count_images(len(good), len(decoded) - len(good))
            if parsed.raw and not good:
                raise HTTPProblem(422, str(decoded[0]))
            probs = iter([s.probs for s in await service.batcher.submit(good)] if good else [])  # v2.Scores
        except HTTPProblem as exc:
            return _error(exc.status, exc.message)
        except BatcherClosed as exc:
            return _error(503, str(exc))
        except PocketCNNError as exc:  # the model failed to run: not the client's fault
            return _error(500, str(exc))
        records: list[dict[str, Any]] = []
        for up, x in zip(parsed.uploads, decoded):
            pred = service.predictor.top(up.name, next(probs), topk) if isinstance(x, np.ndarray) \
                else Prediction(up.name, error=x)
            records.append(pred.to_dict())
        body = {"model": service.name, "runtime": service.predictor.runtime, "predictions": records,
                "latency_ms": round((time.perf_counter() - start) * 1000.0, 3)}
        return JSONResponse(body, status_code=200 if good else 422)

    async def model_info(request: Request) -> Response:
        info = await asyncio.get_running_loop().run_in_executor(service.decode_pool, service.info)
        return JSONResponse(info)

    async def model_file(request: Request) -> Response:
        return FileResponse(service.path, media_type="application/octet-stream")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": service.name})

    async def metrics(request: Request) -> Response:
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    async def index(request: Request) -> Response:
        if settings.static_dir is not None and (Path(settings.static_dir) / "index.html").is_file():
            return FileResponse(Path(settings.static_dir) / "index.html")
        return HTMLResponse(landing_page(service.name, service.predictor.spec.classes, str(request.base_url)))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    async def server_error(request: Request, exc: Exception) -> Response:
        return _error(500, f"internal error: {type(exc).__name__}: {first_line(exc)}")

    routes = [Route("/v1/predict", predict, methods=["POST"]), Route("/v1/model", model_info),
              Route("/v1/model.onnx", model_file),
              Route("/healthz", healthz), Route("/metrics", metrics), Route("/", index),
              *v2_routes(service)]  # the Open Inference Protocol (KServe v2)
    routes += page_routes(service.path, service.name, settings.static_dir)  # the installable, offline page: .page
    if settings.static_dir is not None:
        routes.append(Mount("/static", StaticFiles(directory=settings.static_dir), name="static"))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        await service.close()

    app = Starlette(routes=routes, middleware=[Middleware(CrossOriginIsolation),
                                               Middleware(MetricsMiddleware, metrics=service.metrics)],
                    exception_handlers={HTTPException: http_error, Exception: server_error}, lifespan=lifespan)
    app.state.service = service
    return app


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
