"""``pocketcnn web-runtime``: fetch the pinned browser runtimes the page runs on (ONNX Runtime Web, LiteRT.js).

Also runnable before the command is registered: ``python -m pocketcnn.cli.web``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import click

from .common import echo_json, out_console

if TYPE_CHECKING:
    from ..runtime.web import BrowserRuntimes


@click.command("web-runtime")
@click.option("--dest", type=click.Path(file_okay=False), default=None,
              help="Folder for the files: ONNX Runtime Web in DEST/ort, LiteRT.js in DEST/litert (default: the "
                   "installed package's web/, which 'pocketcnn serve' and 'pocketcnn export --format web' use).")
@click.option("--tarball", type=click.Path(dir_okay=False, exists=True), multiple=True,
              help="An npm tarball already on disk (onnxruntime-web, @litertjs/core or @litertjs/wasm-utils; "
                   "repeat the option), instead of 'npm pack'.")
@click.option("--force", is_flag=True, help="Fetch again even when the files are there.")
@click.option("--check", is_flag=True, help="Only say whether the files are there (exit status 1 if not).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def web_runtime(dest, tarball, force, check, as_json) -> None:
    """Fetch the browser page's runtimes, pinned and checked against their npm integrity
    hashes: ONNX Runtime Web (ort.wasm.min.js, ort-wasm-simd-threaded.mjs and .wasm, about
    15 MB) and LiteRT.js (@litertjs/core and @litertjs/wasm-utils: its API and three
    WebAssembly builds, about 29 MB; a visitor downloads one build, about 10 MB).

    Runs 'npm pack PACKAGE@VERSION' in a temporary folder (npm and the npm registry are
    needed once; nothing else is installed, no CDN is used). Without npm, download the
    tarballs elsewhere and pass each with --tarball.
    """
    from ..errors import PocketCNNError
    from ..runtime.web import fetch_web_runtimes, find_web_runtimes

    from . import UserError

    try:
        found = find_web_runtimes(dest) if check else fetch_web_runtimes(dest, tarballs=tarball, force=force)
    except PocketCNNError as exc:
        raise UserError(str(exc), getattr(exc, "exit_code", 1)) from None
    if as_json:
        echo_json(found.to_dict(status=check))
    elif check:
        _print_status(found)
    else:
        _print_fetched(found)
    if check:
        raise click.exceptions.Exit(0 if found.present else 1)


def _print_status(found: BrowserRuntimes) -> None:
    """``--check``: a line per runtime, present or missing, and where."""
    from ..runtime.web import LITERT_VERSION, ORT_WEB_VERSION

    for label, runtime, path in ((f"onnxruntime-web {ORT_WEB_VERSION}", found.ort, found.ort_path),
                                 (f"LiteRT.js {LITERT_VERSION}", found.litert, found.litert_path)):
        out_console.print(f"{label}: {'present in ' if runtime else 'missing in '}{path}")


def _print_fetched(found: BrowserRuntimes) -> None:
    """After a fetch: a line per runtime, with its folder, files and size."""
    ort, lt = found.ort, found.litert
    assert ort is not None and lt is not None  # a fetch returns both or raises
    out_console.print(f"onnxruntime-web {ort.version} in {ort.path}: {len(ort.files)} files, "
                      f"{ort.total_bytes / 1e6:.1f} MB")
    out_console.print(f"LiteRT.js {lt.version} in {lt.path}: {len(lt.files)} files, {lt.total_bytes / 1e6:.1f} MB "
                      f"(a visitor downloads one build: {lt.build_bytes('threaded') / 1e6:.1f} MB threaded)")

if __name__ == "__main__":  # pragma: no cover
    web_runtime(prog_name="python -m pocketcnn.cli.web")
