"""``pocketcnn serve``: an HTTP server for one ONNX model (no PyTorch needed)."""
from __future__ import annotations

import click


@click.command()
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; 0.0.0.0 makes the server reachable from other machines.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Server processes sharing the port, each with its own model session.")
@click.option("--max-batch", type=click.IntRange(1), default=32, show_default=True,
              help="Most images per model run (dynamic batching of concurrent requests).")
@click.option("--max-wait-ms", type=click.FloatRange(0), default=5.0, show_default=True,
              help="How long a batch waits for more images after its first one.")
@click.option("--max-body-mb", type=click.FloatRange(0, min_open=True), default=10.0, show_default=True,
              help="Largest request body, in MB (1 MB = 1,000,000 bytes); larger ones get 413.")
@click.option("--threads", type=click.IntRange(0), default=None,
              help="ONNX Runtime intra-op threads of one model run (default: 1, or CPUs / --runs).")
@click.option("--runs", type=click.IntRange(0), default=None,
              help="Model runs at the same time in each worker (default: CPUs / workers / threads).")
@click.option("--static-dir", type=click.Path(file_okay=False), default=None,
              help="A folder served at / (its index.html) and /static/ (default: the packaged browser page).")
@click.option("--log-level", type=click.Choice(("critical", "error", "warning", "info", "debug")),
              default="info", show_default=True)
def serve(model, host, port, workers, max_batch, max_wait_ms, max_body_mb, threads, runs, static_dir,
          log_level) -> None:
    """Serve MODEL (an .onnx file from 'pocketcnn export') over HTTP.

    \b
    POST /v1/predict   image files as multipart/form-data, or one image body
                       (image/* or application/octet-stream); ?topk=5
    GET  /v1/model     model, labels, input size, preprocessing
    GET  /             the browser page: classify photos on the server or on the device
    GET  /healthz      health check
    GET  /metrics      Prometheus metrics
    /v2/...            the Open Inference Protocol (KServe v2): Triton's and
                       KServe's clients, JSON or binary tensors, image bytes

    Answers are the records of 'pocketcnn predict --json'. Binds 127.0.0.1 unless --host
    says otherwise; SIGTERM or Ctrl-C stop it gracefully.
    """
    from dataclasses import replace
    from pathlib import Path

    from ..errors import CheckpointError
    from ..runtime.onnx import default_threads
    from ..artifacts.formats import BY_NAME, format_of
    from ..runtime.web import packaged_page
    from ..serve.server import run_server
    from ..serve.settings import MB, ServeSettings

    path = Path(model)
    if format_of(path) is not BY_NAME["onnx"]:
        raise CheckpointError(f"{path}: pocketcnn serve needs an .onnx file (export one with "
                              f"'pocketcnn export'), received a {path.suffix or 'file without suffix'!r}")
    if not path.is_file():
        raise CheckpointError(f"{path}: {'is a folder, not' if path.is_dir() else 'no such'} model file")
    settings = ServeSettings(str(path), max_batch=max_batch, max_wait_ms=max_wait_ms,
                             max_body_bytes=max(1, int(max_body_mb * MB)), threads=threads, static_dir=static_dir or packaged_page(),
                             runs=runs)
    if workers > 1:  # the CPUs are shared by the workers
        threads, runs = settings.resolved_threads(max(1, default_threads() // workers))
        settings = replace(settings, threads=threads, runs=runs)
    run_server(settings, host=host, port=port, workers=workers, log_level=log_level)
