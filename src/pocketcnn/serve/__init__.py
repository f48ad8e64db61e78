"""``pocketcnn serve``: an HTTP server for one ONNX model, without PyTorch.

Starlette on uvicorn rather than FastAPI: FastAPI is Starlette plus pydantic models,
dependency injection and generated OpenAPI pages. We need five routes, multipart uploads
and our own JSON records (the ones ``pocketcnn predict --json`` prints), so pydantic would
add a dependency and a second schema for nothing; Starlette alone keeps the light install
small (no pydantic and pydantic-core wheels) and starts faster.

* :mod:`~pocketcnn.serve.app`: :func:`create_app` and the routes.
* :mod:`~pocketcnn.serve.batching`: dynamic batching of concurrent requests.
* :mod:`~pocketcnn.serve.bodies`: request bodies, limits and status codes.
* :mod:`~pocketcnn.serve.metrics`: Prometheus metrics (one registry per app; multiprocess mode).
* :mod:`~pocketcnn.serve.server`: :func:`run_server` under uvicorn, one or N worker processes.
* :mod:`~pocketcnn.serve.settings`: :class:`ServeSettings`.

Status codes of ``POST /v1/predict``: 200 (at least one image predicted; a bad image gets
its own ``{"image", "error"}`` record), 400 (no image, malformed form, bad ``topk``),
408 (body not received within the timeout), 413 (body over the limit), 415 (content type),
422 (no image could be decoded), 503 (shutting down).
"""
from __future__ import annotations

from ..lazy import lazy_getattr

_LAZY = {"create_app": "app", "app_from_env": "app", "run_server": "server", "ServeSettings": "settings"}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
