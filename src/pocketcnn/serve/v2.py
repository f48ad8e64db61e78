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
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .. import __version__
from ..errors import ExportError, PocketCNNError, first_line
from ..runtime.predictor import Predictor, softmax
from .bodies import REQUEST_FAILURES, HTTPProblem, error_response, failure_response, read_body
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


def triton_config(service: ModelService, sig: Signature) -> dict[str, Any]:
    """Triton's model configuration of the served model: inputs, outputs, batching, instances."""
    dims = lambda d: [str(x) for x in d]  # noqa: E731 - Triton writes int64 dims as strings
    k = len(sig.labels)
    return {
        "name": service.name, "platform": "onnxruntime_onnx", "backend": "onnxruntime",
        "max_batch_size": service.settings.max_batch,
        "input": [{"name": sig.tensor_input, "data_type": "TYPE_FP32", "dims": dims(sig.chw)},
                  {"name": sig.image_input, "data_type": "TYPE_STRING", "dims": ["1"]}],
        "output": [{"name": sig.logits, "data_type": "TYPE_FP32", "dims": dims([k])},
                   {"name": sig.probabilities, "data_type": "TYPE_FP32", "dims": dims([k])}],
        "dynamic_batching": {"max_queue_delay_microseconds": str(int(service.settings.max_wait_ms * 1000))},
        "instance_group": [{"count": service.batcher.parallel, "kind": "KIND_CPU"}],
        "parameters": {"labels": {"string_value": ",".join(sig.labels)}}}


def v2_routes(service: ModelService) -> list[BaseRoute]:
    """The protocol's routes for the app's :class:`~pocketcnn.serve.app.ModelService`."""
    return V2Handlers(service).routes()


class V2Handlers:
    """The protocol's request handlers, bound to one :class:`~pocketcnn.serve.app.ModelService`."""

    def __init__(self, service: ModelService) -> None:
        self.service = service
        self.settings = service.settings
        self.sig = signature(service.predictor)
        self.workers = service.decode_workers

    def routes(self) -> list[BaseRoute]:
        """Server routes, then each model route under ``/v2/models/{model}`` and ``.../versions/{version}``."""
        routes: list[BaseRoute] = [Route("/v2", self.server_metadata), Route("/v2/health/live", self.live),
                                   Route("/v2/health/ready", self.ready)]
        for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            routes += [Route(base, self.model_metadata), Route(base + "/ready", self.model_ready),
                       Route(base + "/config", self.model_config), Route(base + "/infer", self.infer, methods=["POST"])]
        return routes

    def unknown(self, request: Request) -> JSONResponse | None:
        """404 for a model name or version this server does not serve, else None."""
        name = request.path_params["model"]
        version = request.path_params.get("version", VERSION)
        if name != self.service.name:
            return error_response(404, f"unknown model {name!r}: this server serves {self.service.name!r}")
        if version != VERSION:
            return error_response(404, f"unknown version {version!r} of model {name!r}: the one version is {VERSION!r}")
        return None

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": "pocketcnn", "version": __version__, "extensions": EXTENSIONS})

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        return JSONResponse({"ready": not self.service.batcher.closed})

    async def model_metadata(self, request: Request) -> Response:
        if (missing := self.unknown(request)) is not None:
            return missing
        return JSONResponse({"name": self.service.name, "versions": [VERSION], "platform": "onnxruntime_onnx",
                             "inputs": self.sig.inputs(), "outputs": self.sig.outputs()})

    async def model_ready(self, request: Request) -> Response:
        if (missing := self.unknown(request)) is not None:
            return missing
        return JSONResponse({"name": self.service.name, "ready": not self.service.batcher.closed})

    async def model_config(self, request: Request) -> Response:
        if (missing := self.unknown(request)) is not None:
            return missing
        return JSONResponse(triton_config(self.service, self.sig))

    async def infer(self, request: Request) -> Response:
        if (missing := self.unknown(request)) is not None:
            return missing
        loop = asyncio.get_running_loop()
        try:
            body = await read_body(request, limit=self.settings.max_body_bytes, timeout_s=self.settings.body_timeout_s)
            req, decoded = await loop.run_in_executor(self.service.decode_pool, self.prepare, body,
                                                      request.headers.get(HEADER))
            scores = await self.service.batcher.submit(await self.rows(req, decoded))
        except REQUEST_FAILURES as exc:
            return failure_response(exc)
        tensors = {self.sig.logits: np.stack([s.logits for s in scores]),
                   self.sig.probabilities: np.stack([s.probs for s in scores])}
        content, headers = encode_response(self.service.name, VERSION, req, tensors, self.sig.labels)
        return Response(content, headers=headers)

    def prepare(self, body: bytes, header: str | None) -> tuple[InferRequest, list[np.ndarray | str] | None]:
        """In the decode pool: parse, and decode the images of a small request."""
        req = parse_infer(body, header, self.sig, max_images=self.settings.max_images)
        if req.images and len(req.images) <= SEQUENTIAL_IMAGES:
            return req, self.decode(req.images, 0)
        return req, None

    def decode(self, images: tuple[bytes, ...], first: int) -> list[np.ndarray | str]:
        """Images ``first, first + 1, ...`` -> float32 ``(C, S, S)`` each, or its one-line error."""
        return self.service.decode_named((data, f"{self.sig.image_input}[{i}]") for i, data in enumerate(images, first))

    async def decode_in_parallel(self, images: tuple[bytes, ...]) -> list[np.ndarray | str]:
        """Many images: one slice per decode pool thread, all at the same time."""
        loop = asyncio.get_running_loop()
        step = -(-len(images) // self.workers)
        parts = await asyncio.gather(*(loop.run_in_executor(self.service.decode_pool, self.decode, images[i:i + step], i)
                                       for i in range(0, len(images), step)))
        return [x for part in parts for x in part]

    async def rows(self, req: InferRequest, decoded: list[np.ndarray | str] | None) -> list[np.ndarray]:
        """The model inputs of a request, counted in the metrics: its tensor's rows, or its images
        (decoded here when :meth:`prepare` did not); 400 when an image could not be decoded."""
        if req.tensor is not None:
            rows: list[np.ndarray] = list(req.tensor)
            self.service.metrics.count_images(len(rows), 0)
            return rows
        if decoded is None:
            decoded = await self.decode_in_parallel(req.images)
        bad = [x for x in decoded if isinstance(x, str)]
        self.service.metrics.count_images(len(decoded) - len(bad), len(bad))
        if bad:
            raise HTTPProblem(400, bad[0] if len(bad) == 1 else f"{bad[0]} (and {len(bad) - 1} more images)")
        return decoded  # type: ignore[return-value]
