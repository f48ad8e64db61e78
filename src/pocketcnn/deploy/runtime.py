"""Running exported models: one small ``run(batch) -> logits`` wrapper per runtime.

* :class:`OnnxRunner`: an ONNX Runtime session (CPU provider, all graph optimizations,
  optional intra-op thread count) and the file's pocketcnn metadata.
* :class:`ExecuTorchRunner`: a ``.pte`` program through ``executorch.runtime``.
* :class:`TorchRunner`: an ``nn.Module`` (a checkpoint, a ``.pcz`` model, a ``.pt2``
  program's module) under ``torch.no_grad``.

Every runner takes a float32 ``(N, C, H, W)`` numpy array (or tensor) of any ``N`` and
returns float32 ``(N, num_classes)`` logits; a file exported with a fixed batch size is
fed in chunks of that size.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, ExportError

RUNTIMES = ("onnxruntime", "executorch", "torch")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


class Runner:
    """The uniform surface: ``runtime``, ``metadata``, ``max_batch`` and ``run(batch) -> logits``."""

    runtime: str = ""
    metadata: dict[str, Any]
    max_batch: int | None = None  # None: any batch size in one call

    def _run(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def run(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        """float32 ``(N, C, H, W)`` -> float32 ``(N, num_classes)`` logits."""
        if isinstance(batch, torch.Tensor):
            batch = batch.detach().cpu().numpy()
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4:
            raise ExportError(f"{self.runtime}: expected an (N, C, H, W) batch, received shape {batch.shape}")
        step = self.max_batch or len(batch)
        if len(batch) <= step:
            return self._run(batch)
        return np.concatenate([self._run(batch[i:i + step]) for i in range(0, len(batch), step)])

    __call__ = run


# ------------------------------------------------------------------------------ ONNX Runtime
def create_session(path: str | Path, *, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session with every graph optimization; a bad file is a CheckpointError."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such ONNX file")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 0):
        raise ExportError(f"threads must be an integer >= 0 (0: ONNX Runtime's default), received threads={threads!r}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # InvalidProtobuf, Fail, ...: one line naming the file
        raise CheckpointError(f"{path}: not a readable ONNX model ({_first_line(exc)})") from None


def parse_metadata(props: Mapping[str, str]) -> dict[str, Any]:
    """``metadata_props`` (JSON strings) -> values; a value that is not JSON stays a string."""
    out: dict[str, Any] = {}
    for key, value in props.items():
        try:
            out[key] = json.loads(value)
        except (TypeError, ValueError):
            out[key] = value
    return out


def read_onnx_metadata(path_or_session: str | Path | Any) -> dict[str, Any]:
    """The pocketcnn metadata of an ONNX file or session (``{}`` when it has none)."""
    if isinstance(path_or_session, (str, Path)):
        import onnx

        try:
            proto = onnx.load(str(path_or_session), load_external_data=False)
        except Exception as exc:
            raise CheckpointError(f"{path_or_session}: not a readable ONNX model ({_first_line(exc)})") from None
        return parse_metadata({p.key: p.value for p in proto.metadata_props})
    return parse_metadata(dict(path_or_session.get_modelmeta().custom_metadata_map))


class OnnxRunner(Runner):
    runtime = "onnxruntime"

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        self.path = Path(path)
        self.session = create_session(self.path, threads=threads)
        self.metadata = read_onnx_metadata(self.session)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = list(inp.shape)
        self.max_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]


# ------------------------------------------------------------------------------ ExecuTorch
class ExecuTorchRunner(Runner):
    runtime = "executorch"

    def __init__(self, path: str | Path) -> None:
        from .export import PTE_METADATA_METHOD

        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: no such .pte file")
        try:
            from executorch.runtime import Runtime
        except ImportError as exc:
            raise ExportError(f"running .pte files needs ExecuTorch ({_first_line(exc)}): "
                              "install 'pocketcnn[mobile]'") from None
        try:
            program = Runtime.get().load_program(self.path)
            self.method = program.load_method("forward")
        except Exception as exc:
            raise CheckpointError(f"{self.path}: not a readable ExecuTorch program ({_first_line(exc)})") from None
        self.metadata = {}
        if PTE_METADATA_METHOD in program.method_names:
            try:
                self.metadata = json.loads(program.load_method(PTE_METADATA_METHOD).execute([])[0])
            except (ValueError, TypeError, IndexError, RuntimeError):
                self.metadata = {}
        try:  # the planned (upper-bound) input size; a dynamic batch may be bounded below PTE_MAX_BATCH
            self.max_batch = max(1, int(self.method.metadata.input_tensor_meta(0).sizes()[0]))
        except (AttributeError, IndexError, RuntimeError, TypeError):
            self.max_batch = 1

    def _run(self, batch: np.ndarray) -> np.ndarray:
        out = self.method.execute([torch.from_numpy(batch)])[0]
        return out.detach().numpy().astype(np.float32, copy=True)


# ------------------------------------------------------------------------------ PyTorch
class TorchRunner(Runner):
    runtime = "torch"

    def __init__(self, model: nn.Module, metadata: Mapping[str, Any] | None = None, *, runtime: str = "torch") -> None:
        try:
            model.eval()
        except NotImplementedError:  # a torch.export module is in eval mode already and says so
            pass
        self.model = model
        self.metadata = dict(metadata or {})
        self.runtime = runtime

    @torch.no_grad()
    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.model(torch.from_numpy(batch)).float().numpy()


def load_pt2(path: str | Path) -> TorchRunner:
    """A ``.pt2`` archive from :func:`~pocketcnn.deploy.export.export_pt2`, with its metadata."""
    from .export import PT2_METADATA_FILE

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such .pt2 file")
    extra = {PT2_METADATA_FILE: ""}
    try:
        program = torch.export.load(str(path), extra_files=extra)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable torch.export archive ({_first_line(exc)})") from None
    try:
        meta = json.loads(extra[PT2_METADATA_FILE] or "{}")
    except ValueError:
        meta = {}
    runner = TorchRunner(program.module(), meta, runtime="torch.export")
    runner.max_batch = meta.get("max_batch") if isinstance(meta, dict) else None
    return runner


def open_runtime(path: str | Path, *, threads: int | None = None) -> Runner:
    """The runner for an exported file, chosen by suffix: ``.onnx``, ``.pte`` or ``.pt2``."""
    path = Path(path)
    if path.suffix == ".onnx":
        return OnnxRunner(path, threads=threads)
    if path.suffix == ".pte":
        return ExecuTorchRunner(path)
    if path.suffix == ".pt2":
        return load_pt2(path)
    raise ExportError(f"{path}: unknown exported format {path.suffix!r} (expected .onnx, .pte or .pt2)")
