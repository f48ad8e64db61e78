"""``pocketcnn export``: a checkpoint (or a model name with ImageNet weights) to ONNX, .pte, .pt2, .tflite or Core ML."""
from __future__ import annotations

import click

from .common import echo_json, out_console, tagged

from ..artifacts.formats import EXPORT_FORMATS, export_suffix


@click.command()
@click.argument("source")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="With a model NAME as SOURCE: a local torchvision ImageNet weight file.")
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), default="onnx", show_default=True,
              help="onnx (ONNX Runtime), pte (ExecuTorch + XNNPACK, needs pocketcnn[mobile]), pt2 (torch.export), "
                   "tflite (LiteRT for Android, needs pocketcnn[litert]), coreml (.mlpackage for iOS/macOS, "
                   "needs pocketcnn[mobile]), web (a static folder that classifies in the browser with "
                   "LiteRT.js or ONNX Runtime Web, see `pocketcnn web-runtime`; with the checkpoint's data here "
                   "it also holds an int8 .tflite, calibrated as --int8 does).")
@click.option("--opset", type=click.IntRange(7, 23), default=17, show_default=True, help="ONNX opset.")
@click.option("--dynamic-batch", is_flag=True, help="Any batch size (ExecuTorch: a bounded one) instead of 1 "
              "(onnx, pt2, pte; a .tflite file's batch is resized when it runs).")
@click.option("--int8", is_flag=True, help="tflite: full-integer INT8 weights and activations, calibrated on real "
              "images (the converter's PT2E path), scored against fp32 on the test split.")
@click.option("--calib-data", default=None, metavar="NAME",
              help="With --int8 (or --format web): the data set to calibrate and score on (default: the "
                   "checkpoint's).")
@click.option("--calib-samples", type=click.IntRange(1), default=512, show_default=True,
              help="With --int8 (or --format web): balanced training images the quantizer calibrates on.")
@click.option("--test-samples", type=click.IntRange(0), default=2000, show_default=True,
              help="With --int8 (or --format web): balanced test images the int8 file is scored on "
                   "(0: the whole split).")
@click.option("--precision", type=click.Choice(["fp16", "fp32"]), default=None,
              help="coreml: weight and compute precision [default: fp16].")
@click.option("--out", type=click.Path(), default=None,
              help="Output file, or .mlpackage folder (default: next to the checkpoint, or MODEL.<format> here).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Where the data set lies (test images for the check; random inputs if absent).")
@click.option("--verify-samples", type=click.IntRange(1, 1024), default=8, show_default=True,
              help="Images the exported file is checked on against PyTorch.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def export(source, weights, fmt, opset, dynamic_batch, int8, calib_data, calib_samples, test_samples, precision, out,
           data_dir, verify_samples, as_json) -> None:
    """Export SOURCE (a checkpoint, a .pcz file, or a model NAME with --weights) and verify it.

    The exported file is run in its own runtime against PyTorch: the largest logit
    difference must be <= 1e-4 and the top-1 classes must agree, else the command fails.
    An --int8 .tflite file is scored against fp32 instead (a top-1 drop above 2 points is
    a warning). A Core ML package runs only on Apple systems: elsewhere its spec is
    checked and the output says that it was not run. Every file carries the
    preprocessing and class names as metadata.
    """
    from pathlib import Path

    from ..artifacts.source import default_out, load_model_source
    from ..export.exporter import export_model

    src = load_model_source(source, weights)
    suffix = export_suffix(fmt, int8=int8)
    path = Path(out) if out else default_out(src, suffix)
    result = export_model(src, path, format=fmt, opset=opset, dynamic_batch=dynamic_batch, verify_n=verify_samples,
                          data_dir=data_dir, int8=int8, calib_data=calib_data, calib_samples=calib_samples,
                          test_samples=test_samples or None, precision=precision)
    if as_json:
        echo_json(result.to_dict())
    elif fmt == "web":
        _print_web(result)
    else:
        _print_file(result, fmt)
    for warning in result.warnings:
        tagged("warning", "yellow", warning)


def _verified(v) -> str:
    """The check of an fp32 file against PyTorch, in one line."""
    return (f"verified with {v.runtime} on {v.inputs}: max |logit diff| {v.max_abs_diff:.2e} (limit {v.atol:g}), "
            f"top-1 agreement {100 * v.top1_agreement:.0f}%")


def _int8_checked(v) -> str:
    """The score of an int8 file against fp32 on the test split, in one line."""
    return (f"verified with {v.runtime} on {v.inputs} (calibrated on {v.calibration}): top-1 {v.int8_top1:.2f}% vs "
            f"fp32 {v.fp32_top1:.2f}% ({-v.top1_drop:+.2f} points), top-1 agreement {100 * v.top1_agreement:.1f}%")


def _print_web(result) -> None:
    """A static web folder: what it holds and how each of its model files was verified."""
    out_console.print(f"wrote {result.path}/ ({len(result.files)} files, {result.total_bytes / 2**20:.2f} MB: model "
                      f"{result.model_bytes / 2**20:.2f} MB, runtime {result.runtime_bytes / 2**20:.2f} MB, page "
                      f"{result.page_bytes / 2**10:.0f} KB; input {'x'.join(map(str, result.input_size))}) in "
                      f"{result.seconds:.1f} s", highlight=False, soft_wrap=True)
    out_console.print(f"model.onnx: {_verified(result.verification)}", highlight=False, soft_wrap=True)
    if result.tflite_verification is not None:
        out_console.print(f"model.tflite ({result.tflite_bytes / 2**20:.2f} MB, fp32): "
                          f"{_verified(result.tflite_verification)}", highlight=False, soft_wrap=True)
    if result.int8_verification is not None:
        out_console.print(f"model-int8.tflite ({result.int8_bytes / 2**20:.2f} MB, int8): "
                          f"{_int8_checked(result.int8_verification)}", highlight=False, soft_wrap=True)
    out_console.print(f"serve it with any static file server, e.g. python -m http.server -d {result.path} 8080",
                      highlight=False, soft_wrap=True)


def _print_file(result, fmt: str) -> None:
    """One exported file: its size, layout, and its verification in its own runtime."""
    v = result.verification
    what = f"opset {result.opset}, " if result.opset else ""
    batch = "dynamic batch" if result.dynamic_batch else "batch 1"
    if fmt in ("tflite", "coreml"):
        what, batch = f"{result.precision}, ", "image input" if fmt == "coreml" else f"{result.layout} input"
    out_console.print(f"wrote {result.path} ({result.size_bytes / 2**20:.2f} MB, {fmt}, {what}{batch}, "
                      f"input {'x'.join(map(str, result.input_size))}) in {result.seconds:.1f} s")
    if fmt == "coreml":
        out_console.print(f"not run: {v.not_run}. Checked the spec: {v.input_type} input ({v.color}, "
                          f"{v.image_size[0]}x{v.image_size[1]}, scale {v.scale:.6g}, bias "
                          f"{', '.join(f'{b:.4g}' for b in v.bias or (0.0,))}), {v.labels} class labels, "
                          f"{v.precision} weights, {v.ops} MIL ops, pocketcnn metadata", highlight=False)
    elif result.precision == "int8":
        out_console.print(_int8_checked(v), highlight=False)
    else:
        out_console.print(_verified(v), highlight=False)
