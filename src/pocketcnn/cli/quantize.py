"""``pocketcnn quantize``: INT8 with ONNX Runtime or PyTorch, scored against fp32 on real test images."""
from __future__ import annotations

import click
from rich.table import Table

from ..compress.options import ACTIVATION_TYPE, ACTIVATION_TYPES, BACKENDS, TORCH_METHODS
from .common import echo_json, err_console, out_console


@click.command()
@click.argument("source")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="With a model NAME as SOURCE: a local torchvision ImageNet weight file.")
@click.option("--backend", type=click.Choice(BACKENDS), default="onnxruntime", show_default=True)
@click.option("--calib-data", default=None,
              help="Data set for calibration and the score (default: the checkpoint's own, e.g. fashion-mnist).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Where that data set lies.")
@click.option("--calib-samples", type=click.IntRange(1), default=512, show_default=True,
              help="Balanced training images used for calibration.")
@click.option("--test-samples", type=click.IntRange(1), default=2000, show_default=True,
              help="Balanced test images for the fp32 vs int8 top-1.")
@click.option("--per-channel/--per-tensor", default=True, show_default=True, help="Weight scales per output channel.")
@click.option("--activations", type=click.Choice(ACTIVATION_TYPES), default=ACTIVATION_TYPE, show_default=True,
              help="ONNX Runtime activation type (uint8 measured faster: U8S8 kernels).")
@click.option("--method", type=click.Choice(TORCH_METHODS), default="fx", show_default=True,
              help="torch back end: FX graph mode (int8 kernels in eager) or PT2E (torchao; fast only compiled).")
@click.option("--qat", is_flag=True, help="Quantization-aware fine-tuning first (torch back end).")
@click.option("--epochs", type=click.IntRange(1), default=1, show_default=True, help="QAT epochs.")
@click.option("--qat-samples", type=click.IntRange(1), default=10000, show_default=True,
              help="Balanced training images per QAT epoch.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-5, show_default=True,
              help="QAT learning rate (fine-tuning a converged model: small).")
@click.option("--threads", type=click.IntRange(0), default=None, help="ONNX Runtime intra-op threads (0: default).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="int8 file (onnxruntime default: <checkpoint>.int8.onnx; torch: a .pt checkpoint, only if given).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def quantize(source, weights, backend, calib_data, data_dir, calib_samples, test_samples, per_channel, activations,
             method, qat, epochs, qat_samples, lr, threads, out, as_json) -> None:
    """INT8-quantize SOURCE (a checkpoint, a .pcz file, or a model NAME with --weights).

    Calibrates on real training images, then reports fp32 against int8: test top-1 on a
    balanced subset, file size and images/s at batch 32.
    """
    from ..artifacts.source import load_model_source
    from ..workflows.quantize import quantize_source

    src = load_model_source(source, weights)

    def on_epoch(epoch: int, loss: float) -> None:
        err_console.print(f"QAT epoch {epoch}/{epochs}: loss {loss:.4f}")

    with err_console.status("calibrating and measuring...") if not as_json and err_console.is_terminal else _null():
        report = quantize_source(src, backend=backend, calib_data=calib_data, calib_samples=calib_samples,
                                 test_samples=test_samples, per_channel=per_channel, activation_type=activations,
                                 method=method, out=out, data_dir=data_dir, qat_epochs=epochs if qat else 0,
                                 qat_samples=qat_samples, qat_lr=lr, threads=threads, on_epoch=on_epoch)
    if as_json:
        echo_json(report.to_dict())
        return
    table = Table("", f"top-1 % ({report.test_samples} test images)", "size MB", "images/s (batch 32)",
                  title=f"{report.model}: {report.backend} int8 ({report.method}, "
                        f"{'per-channel' if report.per_channel else 'per-tensor'}, {report.calib_samples} "
                        f"{report.calib_data} calibration images)")
    for label, s in (("fp32", report.fp32), ("int8", report.int8)):
        table.add_row(label, f"{s.top1:.2f}", f"{s.size_bytes / 2**20:.3f}", f"{s.images_per_s:,.0f}")
    out_console.print(table)
    out_console.print(f"int8: {report.size_ratio:.2f}x smaller, {report.speedup:.2f}x the fp32 speed, top-1 "
                      f"{report.int8.top1 - report.fp32.top1:+.2f} points" + (f"; wrote {report.path}" if report.path else ""))


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
