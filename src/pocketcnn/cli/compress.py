"""``pocketcnn compress``: Deep Compression of a trained checkpoint into a ``.pcz`` file."""
from __future__ import annotations

import click
from rich.table import Table

from .common import RichProgress, echo_json, err_console, out_console, tagged


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--sparsity", type=click.FloatRange(0, 1, max_open=True), default=0.67, show_default=True,
              help="Fraction of conv/linear weights pruned (0.67 keeps 33%, the SqueezeNet paper's setting).")
@click.option("--prune-steps", type=click.IntRange(1), default=3, show_default=True,
              help="Pruning rounds, each followed by fine-tuning; each removes the same share of the weights "
                   "still kept (1: one shot).")
@click.option("--probe-samples", type=click.IntRange(0), default=2000, show_default=True,
              help="Training images (balanced) for the per-layer sensitivity scan: a layer that loses more "
                   "than --tolerance points when pruned alone is pruned less, the others a little more "
                   "(0: no scan, every layer at --sparsity).")
@click.option("--tolerance", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Sensitivity scan: points of top-1 a layer may cost when pruned alone.")
@click.option("--bits", type=click.IntRange(1, 12), default=6, show_default=True, help="Codebook bits (conv).")
@click.option("--bits-fc", type=click.IntRange(1, 12), help="Codebook bits for linear layers (default: --bits).")
@click.option("--finetune-epochs", type=click.IntRange(0), default=2, show_default=True,
              help="Fine-tuning epochs after each pruning round and after clustering (0: none).")
@click.option("--lr", type=click.FloatRange(0, min_open=True), help="Fine-tuning learning rate "
              "(default: the checkpoint's; short runs are far from converged and need it).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Data folder (default: the checkpoint's).")
@click.option("--train-samples", type=click.IntRange(1), help="Fine-tuning subset (default: the checkpoint's).")
@click.option("--test-samples", type=click.IntRange(1), help="Evaluation subset (default: the whole test split).")
@click.option("--out", type=click.Path(dir_okay=False), help="Output .pcz (default: next to the checkpoint).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def compress(checkpoint, sparsity, prune_steps, probe_samples, tolerance, bits, bits_fc, finetune_epochs, lr,
             data_dir, train_samples, test_samples, out, as_json, quiet) -> None:
    """Prune, share weights (k-means) and Huffman-code CHECKPOINT, reporting size and accuracy per stage."""
    from ..workflows.compress import CompressSettings, compress_checkpoint

    settings = CompressSettings(sparsity=sparsity, prune_steps=prune_steps, probe_samples=probe_samples,
                                tolerance=tolerance, bits=bits, bits_fc=bits_fc, finetune_epochs=finetune_epochs,
                                finetune_samples=train_samples, lr=lr, data_dir=data_dir, test_samples=test_samples)
    done = compress_checkpoint(checkpoint, out, settings, callbacks=RichProgress(not quiet and err_console.is_terminal),
                               log=None if quiet else lambda msg: tagged("compress:", "dim", msg))
    report, result, path = done.to_dict(), done.result, done.file
    if as_json:
        echo_json(report)
        return
    table = Table("stage", "bytes", "x smaller", "bits/param", "top-1 %", title=f"Deep Compression of {done.model}")
    for s in result.stages:
        table.add_row(s.name, f"{s.nbytes:,}" if s.nbytes else "-", f"{s.ratio:.1f}" if s.ratio else "-",
                      f"{s.bits_per_param:.2f}" if s.bits_per_param else "-",
                      f"{s.accuracy:.2f}" if s.accuracy is not None else "-")
    out_console.print(table)
    if len(result.prune_rounds) > 1:
        click.echo("pruning rounds: " + ", ".join(
            f"{100 * r.sparsity:.0f}% pruned -> {_pct(r.accuracy_before_finetune)} -> {_pct(r.accuracy)}"
            for r in result.prune_rounds) + " (top-1 after pruning -> after fine-tuning)")
    click.echo(f"wrote {path}: {done.file_bytes:,} bytes, {done.bits_per_param:.2f} bits per parameter")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"
