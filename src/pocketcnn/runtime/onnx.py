"""ONNX Runtime: the one home of pocketcnn's session recipe, and the runner for ``.onnx`` files.

:func:`ort_session` is the recipe every pocketcnn runtime, reference and benchmark uses:
all graph optimizations (``ORT_ENABLE_ALL``: constant folding, Conv+BN and Conv+activation
fusion, NCHWc layouts), sequential execution, ``threads`` intra-op threads (default: the
CPUs this process may run on), one inter-op thread, errors-only logging, optional profiling.

:class:`OnnxRunner` wraps a session with the file's pocketcnn metadata: float32
``(N, C, H, W)`` in, float32 ``(N, num_classes)`` logits out, for any ``N`` (a file
exported with a fixed batch size is fed in chunks of that size, the last one padded).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts.metadata import parse_metadata
from ..errors import CheckpointError, ExportError, first_line
from ..validate import check_int


def default_threads() -> int:
    """Intra-op threads when none are asked for: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def check_threads(threads: int | None) -> int:
    """``None`` or ``0`` -> :func:`default_threads`; else a positive integer (ConfigError otherwise)."""
    check_int("threads", threads, 0, optional=True)  # 0 or None: one per CPU
    return threads or default_threads()


def ort_session(model: str | Path | bytes, *, threads: int | None = None, profile_prefix: str | None = None,
                name: str | None = None, spinning: bool = True) -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU with the recipe above.

    ``model``: a file path or the serialized model. ``profile_prefix``: turn ONNX Runtime's
    profiler on, writing ``<prefix>_<date>.json`` at ``end_profiling()``. ``spinning=False``:
    idle intra-op threads sleep instead of spinning (a server, whose other threads need the
    CPUs between runs). A missing or unreadable model is a one-line CheckpointError naming
    the file (or ``name``).
    """
    import onnxruntime as ort

    threads = check_threads(threads)
    label = name or ("<ONNX bytes>" if isinstance(model, (bytes, bytearray)) else str(model))
    if not isinstance(model, (bytes, bytearray)):
        path = Path(model)
        if not path.is_file():
            raise CheckpointError(f"{label}: no such ONNX file")
        source: str | bytes = str(path)
    else:
        source = bytes(model)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile_prefix)
    try:
        return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # InvalidProtobuf, Fail, NoSuchFile...: one line naming the file
        raise CheckpointError(f"{label}: not a readable ONNX model ({first_line(exc)})") from None


def session_metadata(session: Any) -> dict[str, Any]:
    """The pocketcnn metadata of a session's model (``{}`` when it carries none)."""
    return parse_metadata(dict(session.get_modelmeta().custom_metadata_map))


def count_onnx_params(path: str | Path) -> int | None:
    """Elements of every initializer of an ONNX file (in an int8 file: quantized weights,
    scales and zero points), counting again the ones the exporter shared between layers
    through ``Identity`` nodes (equal tensors, such as zero biases, are stored once);
    None without the ``onnx`` package or for an unreadable file."""
    try:
        import onnx
    except ImportError:
        return None
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:
        return None
    sizes = {init.name: int(np.prod(init.dims, dtype=np.int64)) for init in proto.graph.initializer}
    shared = sum(sizes[node.input[0]] for node in proto.graph.node
                 if node.op_type == "Identity" and node.input and node.input[0] in sizes)
    return sum(sizes.values()) + shared


class OnnxRunner:
    """An ONNX file in ONNX Runtime: ``run`` float32 ``(N, C, H, W)`` -> float32 ``(N, classes)``.

    Attributes: ``runtime`` ("onnxruntime"), ``path``, ``metadata`` (parsed), ``input_name``,
    ``input_shape`` (as the file declares it, a dynamic axis as its name), ``max_batch``
    (the fixed batch size, None when dynamic), ``int8`` (the metadata says it is quantized),
    ``precision`` ("int8" or "fp32"), ``threads``. ``spinning``: see :func:`ort_session`.
    """

    runtime = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None, *, spinning: bool = True) -> None:
        self.path = Path(path)
        self.threads = check_threads(threads)
        self.session = ort_session(self.path, threads=self.threads, spinning=spinning)
        self.metadata = session_metadata(self.session)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = list(inp.shape)
        first = inp.shape[0] if inp.shape else None
        self.max_batch: int | None = first if isinstance(first, int) and first > 0 else None
        self.int8 = bool(self.metadata.get("quantization"))
        self.precision = "int8" if self.int8 else "fp32"

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 ``(N, C, H, W)`` -> float32 ``(N, num_classes)`` logits (N may be any size)."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4:
            raise ExportError(f"{self.path}: expected an (N, C, H, W) batch, received shape {batch.shape}")
        if self.max_batch is None:
            return self._run(batch)
        step = self.max_batch
        outs = []
        for i in range(0, len(batch), step):
            chunk = batch[i:i + step]
            n = len(chunk)
            if n < step:  # a fixed-batch file takes exactly `step` images: pad with zeros, drop their rows
                chunk = np.concatenate([chunk, np.zeros((step - n, *chunk.shape[1:]), np.float32)])
            outs.append(self._run(chunk)[:n])
        return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)

    __call__ = run

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: batch})[0], dtype=np.float32)
