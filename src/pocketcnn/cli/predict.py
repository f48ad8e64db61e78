"""``pocketcnn predict``: top-k classes of image files with any pocketcnn model file."""
from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..workflows.predict import FP32_PATHS
from .common import echo_json, err_console, out_console


@click.command()
@click.argument("model")
@click.argument("images", nargs=-1, required=True)
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="With a model NAME as MODEL: a local torchvision ImageNet weight file.")
@click.option("--topk", type=click.IntRange(1), default=5, show_default=True)
@click.option("--threads", type=click.IntRange(0), default=None, help="ONNX Runtime intra-op threads (0: default).")
@click.option("--runtime", type=click.Choice(FP32_PATHS), default="auto", show_default=True,
              help="For a .pt checkpoint, .pcz file or NAME --weights: auto runs the fastest path measured on "
                   "CPU (the BN-folded graph in ONNX Runtime); torch runs PyTorch eager.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list: per image {image, topk: [{index, label, prob}]} or {image, error}.")
def predict(model, images, weights, topk, threads, runtime, as_json) -> None:
    """Classify IMAGES with MODEL: a .pt checkpoint, .onnx (fp32/int8), .tflite, .pte, .pt2 or .pcz file,
    or a model NAME with --weights (ImageNet).

    An image that cannot be read gets a one-line error; the others are still classified,
    and the exit status is 1 if any image failed.
    """
    from ..workflows.predict import load_predictor, predictor_from_source

    if weights is not None:
        from ..artifacts.source import load_model_source

        predictor = predictor_from_source(load_model_source(model, weights), runtime=runtime, threads=threads)
    else:
        predictor = load_predictor(model, threads=threads, runtime=runtime)
    results = predictor.predict(list(images), topk=topk)
    failed = [r for r in results if not r.ok]
    if as_json:
        echo_json([r.to_dict() for r in results])
    else:
        for r in results:
            if not r.ok:
                err_console.print(f"[red]error[/red] {escape(r.error or '')}", highlight=False, soft_wrap=True)
                continue
            out_console.print(Text(r.image, style="bold"), soft_wrap=True)  # a long path stays one line
            table = Table("rank", "class", "index", "probability")
            for rank, t in enumerate(r.topk, 1):
                table.add_row(str(rank), t.label, str(t.index), f"{100 * t.prob:.2f}%")
            out_console.print(table)
    if failed:
        if not as_json:
            err_console.print(f"{len(failed)} of {len(results)} images failed", highlight=False)
        raise click.exceptions.Exit(1)
