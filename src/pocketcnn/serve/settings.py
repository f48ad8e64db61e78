"""The server's settings: one frozen record, checked once, passed to worker processes as JSON
in an environment variable (``uvicorn --workers N`` imports the app factory in each worker)."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..validate import check_int, check_number

ENV_VAR = "POCKETCNN_SERVE_SETTINGS"
MB = 1_000_000


@dataclass(frozen=True)
class ServeSettings:
    """``model_path``: the ``.onnx`` file. ``max_batch``: images per ONNX Runtime run.
    ``max_wait_ms``: how long a batch waits for more images after its first one.
    ``max_body_bytes``: the largest request body. ``threads``: ONNX Runtime intra-op threads
    of one model run; ``runs``: model runs at the same time (see :meth:`resolved_threads`
    for the defaults). ``static_dir``: a folder served at ``/`` (``index.html``) and
    ``/static/``. ``body_timeout_s``: the time a client has to send its whole body (else 408).
    ``max_images``: the most images in one request."""

    model_path: str
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_body_bytes: int = 10 * MB
    threads: int | None = None
    static_dir: str | None = None
    body_timeout_s: float = 30.0
    max_images: int = 256
    runs: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_path", str(self.model_path))
        if self.static_dir is not None:
            object.__setattr__(self, "static_dir", str(self.static_dir))
            if not Path(self.static_dir).is_dir():
                raise ConfigError(f"static_dir must be a folder, received static_dir={self.static_dir!r}")
        for key in ("max_batch", "max_body_bytes", "max_images"):
            check_int(key, getattr(self, key))
        check_number("max_wait_ms", self.max_wait_ms, 0, 1e6, high_open=True)
        check_number("body_timeout_s", self.body_timeout_s, 0, 1e6, low_open=True, high_open=True)
        for key in ("threads", "runs"):  # 0 or None: the default of resolved_threads
            check_int(key, getattr(self, key), 0, optional=True)

    def resolved_threads(self, cpus: int | None = None) -> tuple[int, int]:
        """``(intra-op threads per run, runs at the same time)``.

        Default: one thread per run and one run per CPU. Measured with
        ``benchmarks/serve_load.py`` (SqueezeNet 1.1 at 224x224, 2 CPUs, concurrency 32): two
        single-threaded runs side by side served 1.3x the images/s of one two-threaded run,
        because decoding and the event loop need the CPUs too and a two-threaded run stalls
        at every layer's barrier when one of its threads is preempted. Giving only one of
        the two fills the other so that ``threads * runs`` is about the CPU count.
        """
        from ..runtime.onnx import default_threads

        cpus = cpus or default_threads()
        threads, runs = self.threads or None, self.runs or None
        if threads is None and runs is None:
            return 1, cpus
        if runs is None:
            return threads, max(1, cpus // threads)
        if threads is None:
            return max(1, cpus // runs), runs
        return threads, runs

    def to_env(self) -> dict[str, str]:
        """``{ENV_VAR: json}`` for worker processes."""
        return {ENV_VAR: json.dumps(asdict(self))}

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ServeSettings:
        raw = (environ if environ is not None else os.environ).get(ENV_VAR)
        if not raw:
            raise ConfigError(f"{ENV_VAR} is not set: start the server with 'pocketcnn serve MODEL.onnx'")
        try:
            values: dict[str, Any] = json.loads(raw)
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{ENV_VAR} is not a settings record: {exc}; received {raw[:200]!r}") from None
