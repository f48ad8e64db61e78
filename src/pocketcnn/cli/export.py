"""``pocketcnn export``: a checkpoint (or a model name with ImageNet weights) to ONNX, .pte or .pt2."""
from __future__ import annotations

import click

from .common import echo_json, out_console

from ..export.formats import FORMATS, SUFFIX


@click.command()
@click.argument("source")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="With a model NAME as SOURCE: a local torchvision ImageNet weight file.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="onnx", show_default=True,
              help="onnx (ONNX Runtime), pte (ExecuTorch + XNNPACK, needs pocketcnn[mobile]), pt2 (torch.export).")
@click.option("--opset", type=click.IntRange(7, 23), default=17, show_default=True, help="ONNX opset.")
@click.option("--dynamic-batch", is_flag=True, help="Any batch size (ExecuTorch: a bounded one) instead of 1.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Output file (default: next to the checkpoint, or MODEL.<format> here).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Where the data set lies (test images for the check; random inputs if absent).")
@click.option("--verify-samples", type=click.IntRange(1, 1024), default=8, show_default=True,
              help="Images the exported file is checked on against PyTorch.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def export(source, weights, fmt, opset, dynamic_batch, out, data_dir, verify_samples, as_json) -> None:
    """Export SOURCE (a checkpoint, a .pcz file, or a model NAME with --weights) and verify it.

    The exported file is run in its own runtime against PyTorch: the largest logit
    difference must be <= 1e-4 and the top-1 classes must agree, else the command fails.
    ONNX files carry the preprocessing and class names as metadata.
    """
    from pathlib import Path

    from ..artifacts.source import default_out, load_model_source
    from ..export.exporter import export_model

    src = load_model_source(source, weights)
    path = Path(out) if out else default_out(src, SUFFIX[fmt])
    result = export_model(src, path, format=fmt, opset=opset, dynamic_batch=dynamic_batch, verify_n=verify_samples,
                          data_dir=data_dir)
    if as_json:
        echo_json(result.to_dict())
        return
    v = result.verification
    what = f"opset {result.opset}, " if result.opset else ""
    batch = "dynamic batch" if result.dynamic_batch else "batch 1"
    out_console.print(f"wrote {result.path} ({result.size_bytes / 2**20:.2f} MB, {fmt}, {what}{batch}, "
                      f"input {'x'.join(map(str, result.input_size))}) in {result.seconds:.1f} s")
    out_console.print(f"verified with {v.runtime} on {v.inputs}: max |logit diff| {v.max_abs_diff:.2e} "
                      f"(limit {v.atol:g}), top-1 agreement {100 * v.top1_agreement:.0f}%")
