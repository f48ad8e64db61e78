"""``pocketcnn web-runtime``: fetch the pinned ONNX Runtime Web files the browser page runs on.

Also runnable before the command is registered: ``python -m pocketcnn.cli.web``.
"""
from __future__ import annotations

import click

from .common import echo_json, out_console


@click.command("web-runtime")
@click.option("--dest", type=click.Path(file_okay=False), default=None,
              help="Folder for the files (default: the installed package's web/ort, which "
                   "'pocketcnn serve' and 'pocketcnn export --format web' use).")
@click.option("--tarball", type=click.Path(dir_okay=False, exists=True), default=None,
              help="An onnxruntime-web-VERSION.tgz already on disk, instead of 'npm pack'.")
@click.option("--force", is_flag=True, help="Fetch again even when the files are there.")
@click.option("--check", is_flag=True, help="Only say whether the files are there (exit status 1 if not).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def web_runtime(dest, tarball, force, check, as_json) -> None:
    """Fetch ONNX Runtime Web (pinned version, checked against its npm integrity hash) for
    the browser page: ort.wasm.min.js, ort-wasm-simd-threaded.mjs and .wasm, about 15 MB.

    Runs 'npm pack onnxruntime-web@VERSION' in a temporary folder (npm and the npm
    registry are needed once; nothing else is installed). Without npm, download the
    tarball elsewhere and pass --tarball.
    """
    from ..errors import PocketCNNError
    from ..runtime.web import ORT_WEB_VERSION, fetch_ort_web, find_ort_web, ort_dir

    from . import UserError

    if check:
        found = find_ort_web(dest)
        if as_json:
            echo_json({"present": found is not None, "version": ORT_WEB_VERSION,
                       **(found.to_dict() if found else {"path": str(dest or ort_dir())})})
        else:
            out_console.print(f"onnxruntime-web {ORT_WEB_VERSION}: "
                              f"{'present in ' + str(found.path) if found else 'missing in ' + str(dest or ort_dir())}")
        raise click.exceptions.Exit(0 if found else 1)
    try:
        runtime = fetch_ort_web(dest, tarball=tarball, force=force)
    except PocketCNNError as exc:
        raise UserError(str(exc), getattr(exc, "exit_code", 1)) from None
    if as_json:
        echo_json(runtime.to_dict())
        return
    out_console.print(f"onnxruntime-web {runtime.version} in {runtime.path}: {len(runtime.files)} files, "
                      f"{runtime.total_bytes / 1e6:.1f} MB")


if __name__ == "__main__":  # pragma: no cover
    web_runtime(prog_name="python -m pocketcnn.cli.web")
