"""Running the app under uvicorn: one process, or N workers sharing the port.

One worker runs the app object built here (a bad model file fails before anything
listens). ``workers > 1`` hands uvicorn the factory import string
``pocketcnn.serve.app:app_from_env`` and the settings in ``POCKETCNN_SERVE_SETTINGS``; each
worker opens the model itself, and their metrics meet in a temporary
``PROMETHEUS_MULTIPROC_DIR`` removed at exit. SIGTERM (and Ctrl-C) shut down gracefully:
requests in flight are answered, then the process exits; after SIGTERM with status 0.
"""
from __future__ import annotations

import shutil
import signal
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from ..envvars import environ
from ..validate import check_int
from .settings import ServeSettings

FACTORY = "pocketcnn.serve.app:app_from_env"
GRACEFUL_SHUTDOWN_S = 10


def _exit_zero(signum, frame) -> None:  # noqa: ANN001 - signal handler signature
    raise SystemExit(0)


@contextmanager
def _sigterm_exits_zero() -> Iterator[None]:
    """uvicorn re-raises a captured SIGTERM after its graceful shutdown; with this handler in
    place that ends the process with status 0 instead of death by signal."""
    previous = signal.signal(signal.SIGTERM, _exit_zero)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_server(settings: ServeSettings, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
               log_level: str = "info") -> None:
    """Serve until SIGTERM / Ctrl-C. Blocks; logs through uvicorn's loggers, prints nothing."""
    import uvicorn
    from PIL import Image

    check_int("workers", workers)
    check_int("port", port, 0, 65535)
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)  # such images are refused anyway
    common = dict(host=host, port=port, log_level=log_level, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                  server_header=False, proxy_headers=False)
    with _sigterm_exits_zero():
        if workers == 1:
            from .app import app_from_settings

            app = app_from_settings(settings)  # a bad model file: a PocketCNNError here, nothing listens
            uvicorn.Server(uvicorn.Config(app, lifespan="on", **common)).run()
            return
        from ..runtime.predictor import open_model

        open_model(settings.model_path, threads=1)  # fail in one line before starting workers
        prom_dir = tempfile.mkdtemp(prefix="pocketcnn-prometheus-")
        try:
            with environ({**settings.to_env(), "PROMETHEUS_MULTIPROC_DIR": prom_dir}):
                uvicorn.run(FACTORY, factory=True, workers=workers, lifespan="on", **common)
        finally:
            shutil.rmtree(prom_dir, ignore_errors=True)
