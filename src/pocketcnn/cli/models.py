"""``pocketcnn models``, ``inspect`` and ``compare``: the zoo and its analyzer."""
from __future__ import annotations

import click
from rich.table import Table

from .common import ModelName, echo_json, human, out_console


def _profile(name: str, input_size: int | None, in_chans: int = 3, num_classes: int = 1000, **kwargs):
    """Build ``name`` (PyTorch, imported here so that --help needs none) and count its layers."""
    from ..models.analysis import profile
    from ..models.registry import create_model, model_config

    info = model_config(name)
    model = create_model(name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    size = input_size or info.input_size[1]
    return profile(model, (in_chans, size, size), name=name)


@click.command()
@click.argument("pattern", default="*")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def models(pattern: str, as_json: bool) -> None:
    """List registered models matching PATTERN (fnmatch, default '*')."""
    from ..models.registry import list_models, model_config

    rows = []
    for name in list_models(pattern):
        info = model_config(name)
        p = _profile(name, None)
        rows.append({"model": name, "params": p.params, "macs": p.macs, "size_mb": round(p.size_mb, 3),
                     "input_size": list(info.input_size), "torchvision": info.torchvision, "paper": info.paper})
    if as_json:
        echo_json(rows)
        return
    table = Table("model", "params", "mult-adds", "fp32 MB", "input", "torchvision weights")
    for r in rows:
        table.add_row(r["model"], f"{r['params']:,}", human(r["macs"]), f"{r['size_mb']:.2f}",
                      "x".join(map(str, r["input_size"])), r["torchvision"] or "-")
    out_console.print(table)


@click.command()
@click.argument("name", type=ModelName())
@click.option("--width", type=float, default=None, help="width_mult (MobileNet family).")
@click.option("--input-size", type=click.IntRange(1), default=None, help="Square input side (default: the model's).")
@click.option("--in-chans", type=click.IntRange(1), default=3, show_default=True)
@click.option("--num-classes", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--small-input", is_flag=True, help="Build with the small-image stem.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def inspect(name, width, input_size, in_chans, num_classes, small_input, as_json) -> None:
    """Per-layer parameters, mult-adds and activation sizes of NAME, and per-type shares."""
    kwargs = {}
    if width is not None:
        kwargs["width_mult"] = width
    if small_input:
        kwargs["small_input"] = True
    p = _profile(name, input_size, in_chans, num_classes, **kwargs)
    if as_json:
        d = p.to_dict()
        for row in d["layers"]:
            row.pop("act_bytes")
        echo_json(d)
        return
    table = Table("layer", "type", "output", "params", "mult-adds", "act KB", title=f"{name} at {p.input_size}")
    for r in p.layers:
        if r.type == "other" and not r.params:
            continue  # activations, pools, dropout: no weights, no mult-adds
        table.add_row(r.name, r.type, "x".join(map(str, r.out_shape)), f"{r.params:,}", f"{r.macs:,}",
                      f"{r.act_bytes / 1024:.0f}")
    out_console.print(table)
    from ..models.analysis import LAYER_TYPES

    shares = Table("type", "params", "params %", "mult-adds", "mult-adds %", title="share by layer type")
    for t in LAYER_TYPES:
        s = p.by_type[t]
        shares.add_row(t, f"{s.params:,}", f"{s.params_pct:.2f}", f"{s.macs:,}", f"{s.macs_pct:.2f}")
    out_console.print(shares)
    out_console.print(f"total: {p.params:,} params, {p.macs / 1e6:.1f}M mult-adds, {p.size_mb:.2f} MB fp32")


@click.command()
@click.argument("names", nargs=-1, required=True, type=ModelName())
@click.option("--input-size", type=click.IntRange(1), default=None, help="Square input side (default: each model's).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def compare(names, input_size, as_json) -> None:
    """Put models side by side, each with its ratio to AlexNet (params, size, mult-adds)."""
    ref = _profile("alexnet", input_size)
    rows = []
    for name in names:
        p = _profile(name, input_size)
        rows.append({"model": name, "params": p.params, "size_mb": round(p.size_mb, 3), "macs": p.macs,
                     "params_vs_alexnet": ref.params / p.params, "macs_vs_alexnet": ref.macs / p.macs})
    if as_json:
        echo_json(rows)
        return
    table = Table("model", "params", "fp32 MB", "mult-adds", "x fewer params than AlexNet", "x fewer mult-adds")
    for r in rows:
        table.add_row(r["model"], f"{r['params']:,}", f"{r['size_mb']:.2f}", human(r["macs"]),
                      f"{r['params_vs_alexnet']:.1f}x", f"{r['macs_vs_alexnet']:.2f}x")
    out_console.print(table)
