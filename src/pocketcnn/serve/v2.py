"""The Open Inference Protocol (KServe "v2", also spoken by NVIDIA Triton, OpenVINO Model Server
and Seldon MLServer) beside ``/v1``, so that their clients (``tritonclient[http]``, KServe's
``InferenceRESTClient``, ``perf_analyzer``) work against ``pocketcnn serve`` unchanged.

``GET  /v2``                           server metadata: name, version, extensions
``GET  /v2/health/live``, ``/v2/health/ready``
``GET  /v2/models/{name}``             model metadata: inputs, outputs, datatypes, shapes
``GET  /v2/models/{name}/ready``
``GET  /v2/models/{name}/config``      Triton's model configuration (batching, instances)
``POST /v2/models/{name}/infer``       JSON tensors or the binary tensor data extension
(each ``/v2/models/{name}/...`` route also under ``/v2/models/{name}/versions/1/...``)

The model takes one of two inputs: ``input`` (the ONNX file's input name), an FP32
``[N, C, H, W]`` tensor already preprocessed, or ``image``, BYTES ``[N]``, one encoded image
per element, decoded and preprocessed exactly as ``/v1`` does (in the decode pool, off the
event loop). It gives ``logits`` (the file's output name) and ``probabilities``, FP32
``[N, K]``; the classification extension turns either into top-k ``"value:index:label"``
strings. Rows and images join the same dynamic batches as ``/v1`` images, under the same body
limits and metrics. Errors are the protocol's ``{"error": message}`` with a 4xx status
(:mod:`.v2_codec`), 500 only when the model itself fails, 503 while shutting down.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .. import __version__
from ..errors import ExportError, PocketCNNError, first_line
from ..runtime.predictor import Predictor, softmax
from .batching import BatcherClosed
from .bodies import HTTPProblem, read_body
from .v2_codec import HEADER, InferRequest, Signature, encode_response, parse_infer

if TYPE_CHECKING:
    from .app import ModelService

VERSION = "1"  # the one version of the one model a server holds
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration"]
IMAGE_INPUT = "image"
PROBABILITIES = "probabilities"
SEQUENTIAL_IMAGES = 4  # a request with more images is decoded in several pool threads at once


class Scores(NamedTuple):
    """One image's result from the batcher: float32 logits and float64 probabilities, ``(K,)``."""

    logits: np.ndarray
    probs: np.ndarray


def score_batch(predictor: Predictor):
    """The batcher's model run: float32 ``(N, C, S, S)`` -> N :class:`Scores` (the probabilities
    are ``Predictor.probabilities``'s, computed from the same logits)."""
    def run(batch: np.ndarray) -> list[Scores]:
        logits = _logits(predictor, batch)
        return [Scores(a, p) for a, p in zip(logits, softmax(logits))]

    return run


def _logits(predictor: Predictor, batch: np.ndarray) -> np.ndarray:
    try:
        return np.asarray(predictor.runner.run(np.ascontiguousarray(batch, dtype=np.float32)), np.float32)
    except PocketCNNError:
        raise
    except Exception as exc:  # as Predictor.probabilities: a model that does not run is not the client's fault
        raise ExportError(f"{predictor.source or 'model'}: {predictor.runtime} failed to run: {first_line(exc)}") from None


def signature(predictor: Predictor) -> Signature:
    """The protocol names and shapes of a predictor's model (from the file and its metadata)."""
    runner = predictor.runner
    spec = predictor.spec
    tensor_input = str(getattr(runner, "input_name", "input"))
    outputs = getattr(getattr(runner, "session", None), "get_outputs", lambda: [])()
    logits = str(outputs[0].name) if outputs else "logits"
    image = IMAGE_INPUT if tensor_input != IMAGE_INPUT else IMAGE_INPUT + "_bytes"
    probabilities = PROBABILITIES if logits != PROBABILITIES else PROBABILITIES + "_softmax"
    return Signature(tensor_input, image, (spec.in_chans, spec.image_size, spec.image_size), logits, probabilities,
                     tuple(spec.classes))


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def v2_routes(service: ModelService) -> list[BaseRoute]:
    """The protocol's routes for the app's :class:`~pocketcnn.serve.app.ModelService`."""
    settings = service.settings
    sig = signature(service.predictor)
    workers = max(1, getattr(service.decode_pool, "_max_workers", 1))

    def unknown(request: Request) -> JSONResponse | None:
        name = request.path_params["model"]
        version = request.path_params.get("version", VERSION)
        if name != service.name:
            return _error(404, f"unknown model {name!r}: this server serves {service.name!r}")
        if version != VERSION:
            return _error(404, f"unknown version {version!r} of model {name!r}: the one version is {VERSION!r}")
        return None

    async def server_metadata(request: Request) -> Response:
        return JSONResponse({"name": "pocketcnn", "version": __version__, "extensions": EXTENSIONS})

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": not service.batcher.closed})

    async def model_metadata(request: Request) -> Response:
        if (missing := unknown(request)) is not None:
            return missing
        return JSONResponse({"name": service.name, "versions": [VERSION], "platform": "onnxruntime_onnx",
                             "inputs": sig.inputs(), "outputs": sig.outputs()})

    async def model_ready(request: Request) -> Response:
        if (missing := unknown(request)) is not None:
            return missing
        return JSONResponse({"name": service.name, "ready": not service.batcher.closed})

    async def model_config(request: Request) -> Response:
        if (missing := unknown(request)) is not None:
            return missing
        dims = lambda d: [str(x) for x in d]  # noqa: E731 - Triton writes int64 dims as strings
        k = len(sig.labels)
        return JSONResponse({
            "name": service.name, "platform": "onnxruntime_onnx", "backend": "onnxruntime",
            "max_batch_size": settings.max_batch,
            "input": [{"name": sig.tensor_input, "data_type": "TYPE_FP32", "dims": dims(sig.chw)},
                      {"name": sig.image_input, "data_type": "TYPE_STRING", "dims": ["1"]}],
            "output": [{"name": sig.logits, "data_type": "TYPE_FP32", "dims": dims([k])},
                       {"name": sig.probabilities, "data_type": "TYPE_FP32", "dims": dims([k])}],
            "dynamic_batching": {"max_queue_delay_microseconds": str(int(settings.max_wait_ms * 1000))},
            "instance_group": [{"count": service.batcher.parallel, "kind": "KIND_CPU"}],
            "parameters": {"labels": {"string_value": ",".join(sig.labels)}}})

    def prepare(body: bytes, header: str | None) -> tuple[InferRequest, list[np.ndarray | str] | None]:
        """In the decode pool: parse, and decode the images of a small request."""
        req = parse_infer(body, header, sig, max_images=settings.max_images)
        if req.images and len(req.images) <= SEQUENTIAL_IMAGES:
            return req, decode(req.images, 0)
        return req, None

    def decode(images: tuple[bytes, ...], first: int) -> list[np.ndarray | str]:
        out: list[np.ndarray | str] = []
        for i, data in enumerate(images, first):
            try:
                out.append(service.predictor.preprocess(data, name=f"{sig.image_input}[{i}]"))
            except PocketCNNError as exc:
                out.append(str(exc))
        return out

    async def infer(request: Request) -> Response:
        if (missing := unknown(request)) is not None:
            return missing
        loop = asyncio.get_running_loop()
        try:
            body = await read_body(request, limit=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
            req, decoded = await loop.run_in_executor(service.decode_pool, prepare, body, request.headers.get(HEADER))
            if req.tensor is not None:
                rows: list[np.ndarray] = list(req.tensor)
                service.metrics.count_images(len(rows), 0)
            else:
                if decoded is None:  # many images: one slice per pool thread
                    step = -(-len(req.images) // workers)
                    parts = await asyncio.gather(*(loop.run_in_executor(
                        service.decode_pool, decode, req.images[i:i + step], i) for i in range(0, len(req.images), step)))
                    decoded = [x for part in parts for x in part]
                bad = [x for x in decoded if isinstance(x, str)]
                service.metrics.count_images(len(decoded) - len(bad), len(bad))
                if bad:
                    raise HTTPProblem(400, bad[0] if len(bad) == 1 else f"{bad[0]} (and {len(bad) - 1} more images)")
                rows = decoded  # type: ignore[assignment]
            scores = await service.batcher.submit(rows)
        except HTTPProblem as exc:
            return _error(exc.status, exc.message)
        except BatcherClosed as exc:
            return _error(503, str(exc))
        except PocketCNNError as exc:  # the model failed to run: not the client's fault
            return _error(500, str(exc))
        tensors = {sig.logits: np.stack([s.logits for s in scores]),
                   sig.probabilities: np.stack([s.probs for s in scores])}
        content, headers = encode_response(service.name, VERSION, req, tensors, sig.labels)
        return Response(content, headers=headers)

    routes: list[BaseRoute] = [Route("/v2", server_metadata), Route("/v2/health/live", live),
                               Route("/v2/health/ready", ready)]
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        routes += [Route(base, model_metadata), Route(base + "/ready", model_ready),
                   Route(base + "/config", model_config), Route(base + "/infer", infer, methods=["POST"])]
    return routes
