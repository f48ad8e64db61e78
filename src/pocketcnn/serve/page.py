"""The browser page's routes beside the API: the installable, offline page and its second model file.

``GET /v1/model.tflite``      the ``.tflite`` file beside the served ONNX file (same name, ``.tflite``
                              suffix, as ``pocketcnn export CKPT --format tflite`` writes it): the
                              file LiteRT.js runs on the visitor's device; 404 when there is none
                              (the page then offers ONNX Runtime Web only)
``GET /v1/model-int8.tflite`` the int8 ``.tflite`` beside it (``<stem>-int8.tflite``, as ``export
                              --format web`` writes ``model-int8.tflite``): the page times it against
                              the fp32 file on the visitor's device and runs the faster; 404 when
                              there is none
``GET /offline.json``         what the service worker stores and the cache it stores it in, named by
                              the model's SHA-256 (:func:`~pocketcnn.runtime.web.offline_plan`); never cached
``GET /manifest.webmanifest`` the web app manifest (name from the model, icons, standalone display)
``GET /sw.js``                the page's service worker (from the static folder), revalidated on every visit

A serve process serves one model, so the plan is computed once (hashing the files) and kept
while their sizes and modification times stay the same.
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from ..artifacts.formats import BY_NAME
from ..export.web import web_plan  # torch-free at import, as everything serve imports
from ..runtime.web import OFFLINE_PLAN, SERVICE_WORKER, WEB_MANIFEST, find_litert_js, find_ort_web, web_manifest

NO_STORE = {"cache-control": "no-store"}
REVALIDATE = {"cache-control": "no-cache"}

TFLITE = BY_NAME["tflite"]


def tflite_beside(model_path: str | Path) -> Path | None:
    """``model.tflite`` next to ``model.onnx``, if it is there."""
    path = Path(model_path).with_suffix(TFLITE.suffix)
    return path if path.is_file() else None


def int8_name(model_path: str | Path) -> str:
    """``model-int8.tflite`` for ``model.onnx``: the int8 file's name beside the model."""
    return f"{Path(model_path).stem}-int8{TFLITE.suffix}"


def int8_beside(model_path: str | Path) -> Path | None:
    """``model-int8.tflite`` next to ``model.onnx`` (and its fp32 ``model.tflite``), if both are there."""
    path = Path(model_path).with_name(int8_name(model_path))
    return path if path.is_file() and tflite_beside(model_path) else None


class PagePlan:
    """offline.json for one served model, recomputed when a file it hashes changes."""

    def __init__(self, model_path: Path, name: str, static_dir: Path | None) -> None:
        self.model_path, self.name, self.static_dir = model_path, name, static_dir
        self._key: tuple[Any, ...] | None = None
        self._plan: dict[str, Any] | None = None

    def _stamp(self) -> tuple[Any, ...]:
        files = [self.model_path, tflite_beside(self.model_path), int8_beside(self.model_path)]
        return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) if p else None for p in files)

    def get(self) -> dict[str, Any] | None:
        if self.static_dir is None or not (self.static_dir / SERVICE_WORKER).is_file():
            return None
        key = self._stamp()
        if key != self._key or self._plan is None:
            tflite, int8 = tflite_beside(self.model_path), int8_beside(self.model_path)
            self._plan = web_plan(self.name, ("v1/model.onnx", self.model_path),
                                  tflite=("v1/model.tflite", tflite) if tflite else None,
                                  int8=("v1/model-int8.tflite", int8) if int8 else None, page=self.static_dir,
                                  ort=find_ort_web(self.static_dir / "ort"),
                                  litert=find_litert_js(self.static_dir / "litert"), api="v1/")
            self._key = key
        return self._plan


def page_routes(model_path: str | Path, name: str, static_dir: str | Path | None) -> list[Route]:
    """The routes of the module docstring for the model at ``model_path`` and the page in ``static_dir``."""
    model_path = Path(model_path)
    static = Path(static_dir) if static_dir is not None else None
    plan = PagePlan(model_path, name, static)

    async def tflite_file(request: Request) -> Response:
        path = tflite_beside(model_path)
        if path is None:
            return JSONResponse({"error": f"no {model_path.with_suffix(TFLITE.suffix).name} beside {model_path.name}: "
                                          "export one with 'pocketcnn export CKPT --format tflite' for LiteRT.js"},
                                status_code=404)
        return FileResponse(path, media_type="application/octet-stream")

    async def int8_file(request: Request) -> Response:
        path = int8_beside(model_path)
        if path is None:
            return JSONResponse({"error": f"no {int8_name(model_path)} beside {model_path.name} and its "
                                          f"{model_path.with_suffix(TFLITE.suffix).name}: 'pocketcnn export CKPT "
                                          "--format web' writes both"}, status_code=404)
        return FileResponse(path, media_type="application/octet-stream")

    async def offline(request: Request) -> Response:
        got = await asyncio.get_running_loop().run_in_executor(None, plan.get)
        if got is None:
            return JSONResponse({"error": "this static folder has no service worker (sw.js)"}, status_code=404,
                                headers=NO_STORE)
        return JSONResponse(got, headers=NO_STORE)

    async def manifest(request: Request) -> Response:
        return JSONResponse(web_manifest(name), media_type="application/manifest+json", headers=REVALIDATE)

    async def worker(request: Request) -> Response:
        if static is None or not (static / SERVICE_WORKER).is_file():
            return JSONResponse({"error": "no service worker in the static folder"}, status_code=404)
        return FileResponse(static / SERVICE_WORKER, media_type="text/javascript", headers=REVALIDATE)

    return [Route("/v1/model.tflite", tflite_file), Route("/v1/model-int8.tflite", int8_file),
            Route(f"/{OFFLINE_PLAN}", offline),
            Route(f"/{WEB_MANIFEST}", manifest), Route(f"/{SERVICE_WORKER}", worker)]
