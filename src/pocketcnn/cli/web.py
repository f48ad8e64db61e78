"""``pocketcnn web-runtime``: fetch the pinned browser runtimes the page runs on (ONNX Runtime Web, LiteRT.js).

Also runnable before the command is registered: ``python -m pocketcnn.cli.web``.
"""
from __future__ import annotations

import click

from .common import echo_json, out_console


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
    from pathlib import Path

    from ..errors import PocketCNNError
    from ..runtime.web import (LITERT_PACKAGES, LITERT_VERSION, ORT_WEB_PACKAGE, ORT_WEB_VERSION, fetch_litert_js,
                               fetch_ort_web, find_litert_js, find_ort_web, litert_dir, ort_dir, tarball_package)

    from . import UserError

    ort_path = Path(dest) / "ort" if dest else ort_dir()
    lt_path = Path(dest) / "litert" if dest else litert_dir()
    if check:
        ort, lt = find_ort_web(ort_path), find_litert_js(lt_path)
        if as_json:
            echo_json({"present": ort is not None and lt is not None,
                       "onnxruntime-web": {"present": ort is not None, "version": ORT_WEB_VERSION,
                                           **(ort.to_dict() if ort else {"path": str(ort_path)})},
                       "litert.js": {"present": lt is not None, "version": LITERT_VERSION,
                                     **(lt.to_dict() if lt else {"path": str(lt_path)})}})
        else:
            for label, found, path in ((f"onnxruntime-web {ORT_WEB_VERSION}", ort, ort_path),
                                       (f"LiteRT.js {LITERT_VERSION}", lt, lt_path)):
                out_console.print(f"{label}: {'present in ' if found else 'missing in '}{path}")
        raise click.exceptions.Exit(0 if ort and lt else 1)
    try:
        ort_tgz: str | None = None
        lt_tgz: list[str] = []
        for t in tarball:
            name, _ = tarball_package(t)
            if name == ORT_WEB_PACKAGE:
                ort_tgz = t
            elif name in LITERT_PACKAGES:
                lt_tgz.append(t)
            else:
                raise UserError(f"Invalid value for '--tarball': {t} holds npm package {name!r}, not "
                                f"{ORT_WEB_PACKAGE} or one of {', '.join(LITERT_PACKAGES)}", 2)
        ort = fetch_ort_web(ort_path, tarball=ort_tgz, force=force)
        lt = fetch_litert_js(lt_path, tarballs=lt_tgz, force=force)
    except PocketCNNError as exc:
        raise UserError(str(exc), getattr(exc, "exit_code", 1)) from None
    if as_json:
        echo_json({"onnxruntime-web": ort.to_dict(), "litert.js": lt.to_dict()})
        return
    out_console.print(f"onnxruntime-web {ort.version} in {ort.path}: {len(ort.files)} files, "
                      f"{ort.total_bytes / 1e6:.1f} MB")
    out_console.print(f"LiteRT.js {lt.version} in {lt.path}: {len(lt.files)} files, {lt.total_bytes / 1e6:.1f} MB "
                      f"(a visitor downloads one build: {lt.build_bytes('threaded') / 1e6:.1f} MB threaded)")


if __name__ == "__main__":  # pragma: no cover
    web_runtime(prog_name="python -m pocketcnn.cli.web")
