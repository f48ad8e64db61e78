"""LiteRT (``.tflite``) files in the LiteRT interpreter (``ai-edge-litert``, XNNPACK), without PyTorch.

:class:`LiteRtRunner` takes float32 ``(N, C, H, W)`` like every pocketcnn runner and returns
float32 ``(N, num_classes)`` logits. What it does to get there comes from the file:

* **layout**: pocketcnn writes ``.tflite`` inputs channels-last, ``(N, H, W, C)`` (the
  metadata's ``layout`` says ``"NHWC"``): LiteRT's kernels and an Android app's pixel
  buffers are NHWC, so the file needs no transpose; the runner transposes numpy batches.
* **int8**: a full-integer file takes and gives int8 tensors; inputs are quantized with the
  input tensor's scale and zero point, outputs dequantized with the output's.
* **batch**: files are written for batch 1; the interpreter is resized to the batch it is
  given. A graph that cannot be resized (a reshape fixed at export, e.g. AlexNet's
  classifier) is run in chunks of its own batch size instead.

The pocketcnn metadata (:func:`~pocketcnn.artifacts.metadata.build_metadata`) is a TFLite
metadata entry named ``pocketcnn_metadata`` whose buffer holds the JSON text; it is read and
written with ``ai-edge-litert``'s flatbuffer schema (:func:`read_tflite_metadata`,
:func:`add_tflite_metadata`).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError, ExportError, MissingDependencyError, first_line
from .onnx import check_threads

TFLITE_METADATA_NAME = "pocketcnn_metadata"  # the TFLite metadata entry holding pocketcnn's JSON
INSTALL = "pip install 'pocketcnn[litert]'"


@contextlib.contextmanager
def quiet_native_logs() -> Iterator[None]:
    """Native (C++) log lines written to file descriptor 2 while the block runs are dropped.

    LiteRT and its converter log INFO lines from C++ (absl, TFLite's logger) that no Python
    setting reaches; Python exceptions are unaffected.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no file descriptor 2: nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _schema() -> Any:
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError as exc:
        raise MissingDependencyError(f"reading .tflite files needs ai-edge-litert ({first_line(exc)}): {INSTALL}") from None
    return schema_py_generated


def read_tflite_metadata(content: bytes, source: str = "<.tflite bytes>") -> dict[str, Any]:
    """The pocketcnn metadata of a ``.tflite`` flatbuffer (``{}`` when it carries none)."""
    fb = _schema()
    try:
        model = fb.Model.GetRootAs(content, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if (entry.Name() or b"").decode("utf-8", "replace") != TFLITE_METADATA_NAME:
                continue
            buf = model.Buffers(entry.Buffer())
            raw = bytes(content[buf.Offset():buf.Offset() + buf.Size()]) if buf.Offset() else buf.DataAsNumpy().tobytes()
            meta = json.loads(raw.decode("utf-8"))
            return meta if isinstance(meta, dict) else {}
    except (ValueError, TypeError, AttributeError, IndexError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{source}: not a readable .tflite file ({first_line(exc)})") from None
    return {}


def add_tflite_metadata(content: bytes, metadata: Mapping[str, Any]) -> bytes:
    """``content`` with the pocketcnn metadata entry set to ``metadata`` (as JSON); other entries are kept."""
    fb = _schema()
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    buffer = fb.BufferT()
    buffer.data = np.frombuffer(json.dumps(dict(metadata)).encode("utf-8"), np.uint8)
    model.buffers.append(buffer)
    entries = [m for m in (model.metadata or []) if _name(m.name) != TFLITE_METADATA_NAME]
    entry = fb.MetadataT()
    entry.name, entry.buffer = TFLITE_METADATA_NAME, len(model.buffers) - 1
    model.metadata = [*entries, entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _name(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)


class LiteRtRunner:
    """A ``.tflite`` file in the LiteRT interpreter: ``run`` float32 ``(N, C, H, W)`` -> float32 ``(N, classes)``.

    Attributes: ``runtime`` ("litert"), ``path``, ``metadata``, ``layout`` ("NHWC" or "NCHW"),
    ``int8`` (the input is integer), ``precision`` ("int8" for a quantized file, also one with a
    float32 interface), ``threads``, ``max_batch`` (None while the interpreter resizes to any
    batch; the file's batch size once it has refused to).
    Calls are serialized: one interpreter runs one batch at a time.
    """

    runtime = "litert"

    def __init__(self, path: str | Path, threads: int | None = None, *, spinning: bool = True) -> None:
        # spinning: ONNX Runtime's setting (its idle threads spin); XNNPACK's thread pool has none
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: {'is a folder, not' if self.path.is_dir() else 'no such'} .tflite file")
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise MissingDependencyError(f"{self.path}: running .tflite files needs ai-edge-litert "
                                         f"({first_line(exc)}): {INSTALL}") from None
        self._make = Interpreter
        self.threads = check_threads(threads)
        self._content = self.path.read_bytes()
        self.metadata = read_tflite_metadata(self._content, str(self.path))
        self.layout = str(self.metadata.get("layout", "NCHW")).upper()
        if self.layout not in ("NCHW", "NHWC"):
            raise CheckpointError(f"{self.path}: unknown input layout {self.layout!r} in its metadata (NCHW or NHWC)")
        self._lock = threading.Lock()
        self._interpreter = self._new()
        inp = self._interpreter.get_input_details()[0]
        self.input_shape = [int(d) for d in inp["shape"]]
        self.file_batch = max(1, self.input_shape[0]) if self.input_shape else 1
        self.int8 = np.dtype(inp["dtype"]) in (np.dtype(np.int8), np.dtype(np.uint8))
        # a quantized file says so in its metadata, whatever its interface (the page's INT8 file takes float32)
        self.precision = "int8" if self.int8 or self.metadata.get("quantization") else "fp32"
        self.max_batch: int | None = None

    def _new(self) -> Any:
        try:
            with quiet_native_logs():  # the C++ side announces its XNNPACK delegate on stderr
                interpreter = self._make(model_content=self._content, num_threads=self.threads)
                interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{self.path}: not a readable .tflite model ({first_line(exc)})") from None
        return interpreter

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 ``(N, C, H, W)`` -> float32 ``(N, num_classes)`` logits (N may be any size)."""
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4:
            raise ExportError(f"{self.path}: expected an (N, C, H, W) batch, received shape {batch.shape}")
        if self.layout == "NHWC":
            batch = batch.transpose(0, 2, 3, 1)
        expected = self.input_shape[1:]
        if list(batch.shape[1:]) != expected:
            shown = "x".join(map(str, expected if self.layout == "NCHW" else [expected[2], *expected[:2]]))
            raise ExportError(f"{self.path}: the model takes {shown} inputs, received shape {tuple(batch.shape)} "
                              f"(in {self.layout})")
        with self._lock:
            if self.max_batch is None and len(batch):
                try:
                    return self._invoke(batch)
                except RuntimeError:  # the graph cannot take this batch size: run it in its own
                    self.max_batch = self.file_batch
                    self._interpreter = self._new()
            step = self.max_batch or self.file_batch
            outs = []
            for i in range(0, len(batch), step):
                chunk = batch[i:i + step]
                n = len(chunk)
                if n < step:  # pad with zeros, drop their rows
                    chunk = np.concatenate([chunk, np.zeros((step - n, *chunk.shape[1:]), np.float32)])
                outs.append(self._invoke(chunk)[:n])
            return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)

    __call__ = run

    def _invoke(self, batch: np.ndarray) -> np.ndarray:
        it = self._interpreter
        inp = it.get_input_details()[0]
        if list(inp["shape"]) != list(batch.shape):
            it.resize_tensor_input(inp["index"], list(batch.shape))
            it.allocate_tensors()
            inp = it.get_input_details()[0]
        it.set_tensor(inp["index"], _quantize(batch, inp))
        it.invoke()
        out = it.get_output_details()[0]
        y = it.get_tensor(out["index"])
        if y.ndim != 2 or len(y) != len(batch):  # a resize the graph did not follow
            raise RuntimeError(f"output shape {y.shape} for a batch of {len(batch)}")
        return _dequantize(y, out)


def _quantize(x: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    """float32 -> the tensor's dtype: ``round(x / scale) + zero_point``, clipped to its range."""
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return np.ascontiguousarray(x)
    scale, zero = detail["quantization"]
    if not scale:
        raise ExportError(f"the model's input {detail['name']!r} is {dtype} without a quantization scale")
    info = np.iinfo(dtype)
    return np.clip(np.round(x / np.float32(scale)) + zero, info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    """The tensor's dtype -> float32: ``(y - zero_point) * scale``."""
    if np.dtype(detail["dtype"]) == np.float32:
        return np.array(y, dtype=np.float32)
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - np.float32(zero)) * np.float32(scale or 1.0)).astype(np.float32)
