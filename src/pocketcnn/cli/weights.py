"""``pocketcnn weights``: the weight files pocketcnn knows, where it looks for them, and whether they are there."""
from __future__ import annotations

import click
from rich.table import Table

from .common import echo_json, out_console


@click.command()
@click.argument("pattern", default="*")
@click.option("--weights-dir", type=click.Path(file_okay=False),
              help="Where the files are looked up (default: torch hub's cache, ~/.cache/torch/hub/checkpoints).")
@click.option("--verify", is_flag=True, help="Check the SHA-256 of each file that is present (reads every file).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def weights(pattern: str, weights_dir: str | None, verify: bool, as_json: bool) -> None:
    """List the pretrained weights of models matching PATTERN: torchvision's file names, their SHA-256
    prefixes, preprocessing and published ImageNet accuracy. Nothing is downloaded: put a file in the
    folder shown (or pass its path) and use it with `pocketcnn train --weights NAME` or
    `pocketcnn.create_model(name, weights=NAME)`."""
    from pathlib import Path

    from ..errors import PocketCNNError
    from ..models.registry import list_models, model_config
    from ..models.weights import default_weights_dir, find_weights

    folder = Path(weights_dir) if weights_dir else default_weights_dir()
    rows = []
    for name in list_models(pattern):
        cfg = model_config(name)
        for w in cfg.weights:
            path = folder / w.filename
            status = "present" if path.is_file() else "missing"
            if verify and path.is_file():
                try:
                    find_weights(cfg, w, path=path)
                    status = "verified"
                except PocketCNNError:
                    status = "wrong hash"
            rows.append({"model": name, "weights": w.name, "file": w.filename, "sha256": w.sha256,
                         "path": str(path), "status": status, "imagenet_top1": w.top1, "imagenet_top5": w.top5,
                         "resize": w.resize_size, "crop": w.image_size, "mean": list(w.spec.mean),
                         "std": list(w.spec.std)})
    if as_json:
        echo_json(rows)
        return
    table = Table("model", "weights", "file", "SHA-256", "resize -> crop", "ImageNet top-1/5 %", "here?",
                  title=f"known weights, looked up in {folder}")
    for r in rows:
        table.add_row(r["model"], r["weights"], r["file"], f"{r['sha256']}...",
                      f"{r['resize']} -> {r['crop']}",
                      f"{r['imagenet_top1']:.2f} / {r['imagenet_top5']:.2f}", r["status"])
    out_console.print(table)
    click.echo("ImageNet mean/std throughout; models not listed (mobilenet_v1*) train from scratch or load a file "
               "you give (--weights PATH)")
