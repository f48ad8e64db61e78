"""The Open Inference Protocol's (KServe v2) inference bodies: requests in, responses out.

Pure functions on bytes, without HTTP: :func:`parse_infer` reads ``POST .../infer`` bodies
(JSON, or the binary tensor data extension: a JSON header of ``Inference-Header-Content-Length``
bytes followed by each input's raw data) into an :class:`InferRequest`;
:func:`encode_response` writes the answer the same two ways. Every problem with a request
is an :class:`~pocketcnn.serve.bodies.HTTPProblem` (400, or 413 past the image limit),
answered as the protocol's error object ``{"error": message}``.

Tensors on the wire (as the protocol defines them):

* ``FP32``: little-endian float32 in row-major order; in JSON a flat or nested list.
* ``BYTES``: each element a 4-byte little-endian length then its bytes; in JSON a string
  (UTF-8), or base64 when the input's ``parameters`` say ``"content_type": "base64"``.
* Classification extension: an output asked for with ``"parameters": {"classification": k}``
  comes back as ``BYTES [N, k]``, each element ``"value:index:label"``, best first.
"""
from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..validate import check_int, is_int
from .bodies import HTTPProblem

HEADER = "inference-header-content-length"
BINARY_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class Signature:
    """What the model takes and gives, by protocol name: an FP32 ``(N, C, H, W)`` tensor input,
    a BYTES input of encoded images (one element per image), and two FP32 ``(N, K)`` outputs."""

    tensor_input: str
    image_input: str
    chw: tuple[int, int, int]
    logits: str
    probabilities: str
    labels: tuple[str, ...]

    def inputs(self) -> list[dict[str, Any]]:
        return [{"name": self.tensor_input, "datatype": "FP32", "shape": [-1, *self.chw]},
                {"name": self.image_input, "datatype": "BYTES", "shape": [-1]}]

    def outputs(self) -> list[dict[str, Any]]:
        k = len(self.labels)
        return [{"name": self.logits, "datatype": "FP32", "shape": [-1, k]},
                {"name": self.probabilities, "datatype": "FP32", "shape": [-1, k]}]


@dataclass(frozen=True)
class RequestedOutput:
    """One output of a request: ``binary`` (raw data after the JSON header), ``classes`` (> 0:
    the classification extension's top-k labels instead of the tensor)."""

    name: str
    binary: bool
    classes: int = 0


@dataclass(frozen=True)
class InferRequest:
    """A parsed request: ``tensor`` float32 ``(N, C, H, W)`` or ``images`` (N encoded images)."""

    id: str | None
    input_name: str
    tensor: np.ndarray | None
    images: tuple[bytes, ...]
    outputs: tuple[RequestedOutput, ...]

    @property
    def count(self) -> int:
        return len(self.tensor) if self.tensor is not None else len(self.images)


def _bad(message: str, status: int = 400) -> HTTPProblem:
    return HTTPProblem(status, message)


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(f"{what} must be true or false, received {value!r}")
    return value


def _count(value: Any, name: str, where: str) -> int:
    """``value`` when it is an integer >= 0 (:func:`~pocketcnn.validate.check_int`), else 400
    naming the input or output ``where`` it came from."""
    try:
        return check_int(name, value, 0)
    except ConfigError as exc:
        raise _bad(f"{where}: {exc}") from None


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(f"{what} must be a JSON object, received {type(value).__name__}")
    return value


def split_header(body: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    """``(JSON header, binary data after it)``; without ``header_length`` the whole body is JSON."""
    view = memoryview(body)
    if header_length is None:
        head, rest = view, view[len(view):]
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise _bad(f"Inference-Header-Content-Length must be an integer, received {header_length[:50]!r}") from None
        if not 0 <= n <= len(body):
            raise _bad(f"Inference-Header-Content-Length {n} is not within the body of {len(body)} bytes")
        head, rest = view[:n], view[n:]
    try:
        doc = json.loads(bytes(head))
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(f"the inference request is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _bad(f"the inference request must be a JSON object, received {type(doc).__name__}")
    return doc, rest


def _shape(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or not all(is_int(d) and d >= 0 for d in value):
        raise _bad(f"input '{name}': shape must be a list of integers >= 0, received {value!r}")
    return value


def split_bytes(raw: bytes | memoryview, count: int, name: str) -> list[bytes]:
    """A BYTES tensor's binary data -> its ``count`` elements (4-byte little-endian length, then bytes)."""
    view = memoryview(raw)
    out: list[bytes] = []
    pos = 0
    while pos < len(view):
        if pos + 4 > len(view):
            raise _bad(f"input '{name}': BYTES data ends inside an element's 4-byte length")
        n = int.from_bytes(view[pos:pos + 4], "little")
        pos += 4
        if pos + n > len(view):
            raise _bad(f"input '{name}': BYTES element {len(out)} of {n} bytes runs past its data")
        out.append(bytes(view[pos:pos + n]))
        pos += n
    if len(out) != count:
        raise _bad(f"input '{name}': shape holds {count} elements, its BYTES data {len(out)}")
    return out


def join_bytes(elements: Sequence[bytes]) -> bytes:
    """The inverse of :func:`split_bytes`."""
    return b"".join(len(e).to_bytes(4, "little") + e for e in elements)


def _binary_slice(params: dict[str, Any], rest: memoryview, offset: int, name: str) -> tuple[memoryview | None, int]:
    size = params.get("binary_data_size")
    if size is None:
        return None, offset
    _count(size, "binary_data_size", f"input '{name}'")
    if offset + size > len(rest):
        raise _bad(f"input '{name}': binary_data_size {size} runs past the {len(rest) - offset} bytes left in the "
                   "body (send Inference-Header-Content-Length with binary data)")
    return rest[offset:offset + size], offset + size


def _tensor(entry: dict[str, Any], shape: list[int], data: memoryview | None, sig: Signature) -> np.ndarray:
    name = sig.tensor_input
    if entry.get("datatype") != "FP32":
        raise _bad(f"input '{name}' has datatype FP32, received {entry.get('datatype')!r}")
    if len(shape) != 4 or tuple(shape[1:]) != sig.chw or shape[0] < 1:
        raise _bad(f"input '{name}' has shape [N, {', '.join(map(str, sig.chw))}] with N >= 1, received {shape}")
    count = int(np.prod(shape))
    if data is not None:
        if len(data) != 4 * count:
            raise _bad(f"input '{name}': shape {shape} needs {4 * count} bytes of FP32 data, received {len(data)}")
        return np.frombuffer(data, dtype="<f4").reshape(shape).astype(np.float32, copy=False)
    if "data" not in entry:
        raise _bad(f"input '{name}' has neither data nor parameters.binary_data_size")
    try:
        array = np.asarray(entry["data"], dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise _bad(f"input '{name}': data is not a list of numbers ({exc})") from None
    if array.size != count:
        raise _bad(f"input '{name}': shape {shape} holds {count} elements, data {array.size}")
    return array.reshape(shape)


def _images(entry: dict[str, Any], shape: list[int], data: memoryview | None, name: str) -> list[bytes]:
    if entry.get("datatype") != "BYTES":
        raise _bad(f"input '{name}' has datatype BYTES (one encoded image per element), "
                   f"received {entry.get('datatype')!r}")
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 1:
        raise _bad(f"input '{name}' has shape [N] (or [N, 1]) with N >= 1, received {shape}")
    if data is not None:
        return split_bytes(data, shape[0], name)
    values = entry.get("data")
    if not isinstance(values, list):
        raise _bad(f"input '{name}' has neither data nor parameters.binary_data_size")
    flat = [v for row in values for v in (row if isinstance(row, list) else [row])]
    if len(flat) != shape[0] or not all(isinstance(v, str) for v in flat):
        raise _bad(f"input '{name}': data must hold {shape[0]} strings, received {len(flat)} elements")
    if _object(entry.get("parameters"), f"input '{name}' parameters").get("content_type") == "base64":
        try:
            return [base64.b64decode(v, validate=True) for v in flat]
        except (binascii.Error, ValueError) as exc:
            raise _bad(f"input '{name}': data is not base64 ({exc})") from None
    return [v.encode("utf-8", "surrogateescape") for v in flat]


def _outputs(doc: dict[str, Any], sig: Signature, default_binary: bool) -> tuple[RequestedOutput, ...]:
    wanted = doc.get("outputs")
    known = (sig.logits, sig.probabilities)
    if wanted is None:
        return tuple(RequestedOutput(n, default_binary) for n in known)
    if not isinstance(wanted, list) or not wanted:
        raise _bad(f"outputs must be a non-empty list, received {wanted!r}"[:300])
    out = []
    for entry in wanted:
        entry = _object(entry, "each output")
        name = entry.get("name")
        if name not in known:
            raise _bad(f"unknown output {name!r}: this model gives {' and '.join(repr(k) for k in known)}")
        params = _object(entry.get("parameters"), f"output '{name}' parameters")
        binary = _flag(params.get("binary_data", default_binary), f"output '{name}' binary_data")
        classes = _count(params.get("classification", 0), "classification", f"output '{name}'")
        out.append(RequestedOutput(name, binary, min(classes, len(sig.labels))))
    return tuple(out)


def parse_infer(body: bytes, header_length: str | None, sig: Signature, *, max_images: int) -> InferRequest:
    """An ``infer`` body -> :class:`InferRequest` (HTTPProblem 400 for anything malformed, 413
    for more than ``max_images`` images or rows)."""
    doc, rest = split_header(body, header_length)
    params = _object(doc.get("parameters"), "parameters")
    default_binary = _flag(params.get("binary_data_output", False), "parameters.binary_data_output")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        got = f"{len(inputs)} inputs" if isinstance(inputs, list) else f"inputs={inputs!r}"[:100]
        raise _bad(f"send exactly one input, '{sig.tensor_input}' (FP32 [N, {', '.join(map(str, sig.chw))}]) or "
                   f"'{sig.image_input}' (BYTES [N], encoded images); received {got}")
    entry = _object(inputs[0], "each input")
    name = entry.get("name")
    if name not in (sig.tensor_input, sig.image_input):
        raise _bad(f"unknown input {name!r}: this model takes '{sig.tensor_input}' (FP32) or "
                   f"'{sig.image_input}' (BYTES)"[:300])
    shape = _shape(entry.get("shape"), name)
    if shape and shape[0] > max_images:
        raise _bad(f"input '{name}': {shape[0]} images in one request, over the limit of {max_images}", 413)
    data, used = _binary_slice(_object(entry.get("parameters"), f"input '{name}' parameters"), rest, 0, name)
    if used != len(rest):
        raise _bad(f"{len(rest) - used} bytes of binary data after the inputs' binary_data_size")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad(f"id must be a string, received {request_id!r}"[:200])
    outputs = _outputs(doc, sig, default_binary)
    if name == sig.tensor_input:
        return InferRequest(request_id, name, _tensor(entry, shape, data, sig), (), outputs)
    return InferRequest(request_id, name, None, tuple(_images(entry, shape, data, name)), outputs)


def classification(scores: np.ndarray, k: int, labels: Sequence[str]) -> list[bytes]:
    """``(N, K)`` scores -> ``N * k`` elements ``b"value:index:label"``, each row best first
    (ties in index order, as ``predict``)."""
    out = []
    for row in scores:
        for j in np.argsort(-row, kind="stable")[:k]:
            label = labels[j] if j < len(labels) else str(j)
            out.append(f"{float(row[j])!r}:{int(j)}:{label}".encode())
    return out


def encode_response(model: str, version: str, request: InferRequest, tensors: dict[str, np.ndarray],
                    labels: Sequence[str]) -> tuple[bytes, dict[str, str]]:
    """``(body, headers)`` of an infer answer: each requested output from ``tensors`` (by name,
    ``(N, K)``; FP32 on the wire), JSON or binary as asked."""
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for want in request.outputs:
        scores = tensors[want.name]
        if want.classes:
            elements = classification(scores, want.classes, labels)
            entry: dict[str, Any] = {"name": want.name, "datatype": "BYTES", "shape": [len(scores), want.classes]}
            raw = join_bytes(elements) if want.binary else None
            data: Any = [e.decode() for e in elements]
        else:
            array = np.ascontiguousarray(scores, dtype="<f4")
            entry = {"name": want.name, "datatype": "FP32", "shape": list(array.shape)}
            raw = array.tobytes() if want.binary else None
            data = array.ravel().tolist() if not want.binary else None
        if raw is not None:
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = data
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": model, "model_version": version}
    if request.id is not None:
        doc["id"] = request.id
    doc["outputs"] = outputs
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {"content-type": BINARY_TYPE, HEADER: str(len(head))}
