"""``pocketcnn train``: the engine behind a command line (one process, or N through torchrun)."""
from __future__ import annotations

import json
import os

import click
from click.core import ParameterSource

from ..data.spec import DATASETS
from ..errors import ConfigError, TrainingError, first_line
from ..train.config import (AUGMENTS, DEVICES, FREEZE, OPTIMIZERS, SCHEDULES, TrainConfig, config_changes, load_config_file,
                            recipe)
from .common import ModelName, RichProgress, echo_json, err_console

# option name -> TrainConfig field, for the options that map one to one
FIELDS = ("model", "data", "data_dir", "epochs", "batch_size", "lr", "optimizer", "schedule", "warmup_epochs",
          "weight_decay", "label_smoothing", "amp", "channels_last", "ema", "seed", "workers", "train_samples",
          "test_samples", "out", "input_size", "device", "sync_bn", "erase_prob", "weights", "weights_dir", "freeze",
          "lr_features", "val_split", "short_run")


def build_config(params: dict, given: set[str], saved: dict | None = None) -> TrainConfig:
    """recipe(model) < ``saved`` (the config of the --resume checkpoint) < --config file < flags
    given on the command line."""
    d: dict = dict(saved or {})
    if params.get("config"):
        file_cfg = load_config_file(params["config"])
        TrainConfig.from_dict({**recipe(file_cfg.get("model", params.get("model") or "squeezenet1_1")), **file_cfg},
                              source=str(params["config"]))
        d.update(file_cfg)
    model = params["model"] if "model" in given else d.get("model")
    if saved is not None and "model" in given and saved.get("model") not in (None, params["model"]):
        raise ConfigError(f"{params['resume']}: a checkpoint of {saved['model']}, not {params['model']}; drop "
                          f"--model to continue it, or give a {params['model']} checkpoint")
    if model is None:
        raise ConfigError("no model: pass --model NAME (see `pocketcnn models`) or a --config file with 'model'")
    base = recipe(model)
    base.update(d)
    for key in FIELDS:
        if key in given:
            base[key] = params[key]
    if "model_args" in given:
        base["model_kwargs"] = {**base.get("model_kwargs", {}), **parse_model_args(params["model_args"])}
    if "augment" in given:
        base["augment"] = tuple(a.strip() for a in params["augment"].split(",") if a.strip())
    base["model"] = model
    return TrainConfig.from_dict(base)


def parse_model_args(items: tuple[str, ...]) -> dict:
    """``("width_mult=0.5", "bypass=simple")`` -> ``{"width_mult": 0.5, "bypass": "simple"}`` (JSON values)."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--model-arg expects KEY=VALUE, received {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _relaunch_args(ctx: click.Context) -> list[str]:
    """The options given on this command line, minus --nproc, as argv for the workers."""
    args: list[str] = []
    for p in ctx.command.params:
        if p.name in ("nproc", "max_restarts") or ctx.get_parameter_source(p.name) is not ParameterSource.COMMANDLINE:
            continue
        value = ctx.params[p.name]
        if isinstance(p, click.Option) and p.multiple:
            for v in value:
                args += [p.opts[0], str(v)]
        elif isinstance(p, click.Option) and p.is_flag:
            if value:
                args.append(p.opts[0])
            elif p.secondary_opts:
                args.append(p.secondary_opts[0])
        else:
            args += [p.opts[0], str(value)]
    return args


def _launch(ctx: click.Context, nproc: int, max_restarts: int, out: str | None = None) -> None:
    """Run this same command in ``nproc`` processes through torch.distributed's own launcher
    (``out``: the folder chosen here, passed on so that every rank writes to the same one)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    extra = ["--out", out] if out is not None and ctx.get_parameter_source("out") is not ParameterSource.COMMANDLINE \
        else []
    argv = [f"--nproc-per-node={nproc}", "--standalone", f"--max-restarts={max_restarts}",
            "-m", "pocketcnn", "train", *_relaunch_args(ctx), *extra]
    if "OMP_NUM_THREADS" not in os.environ:  # share the cores (torchrun would give each rank 1, with a warning)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        os.environ["OMP_NUM_THREADS"] = str(max(1, cores // nproc))
    try:
        run(get_args_parser().parse_args(argv))
    except ChildFailedError as exc:
        first = next(iter(exc.failures.values()), None)
        why = f"rank {first.local_rank} exited with code {first.exitcode}" if first else first_line(exc)
        raise TrainingError(f"distributed training failed: {why} (checkpoints in the output folder are intact)") from None


@click.command()
@click.option("--model", type=ModelName(), help="Registered model name (see `pocketcnn models`).")
@click.option("--data", default="fashion-mnist", show_default=True,
              type=click.Choice(DATASETS))
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder of the data files ($POCKETCNN_DATA_DIR).")
@click.option("--epochs", type=click.IntRange(1))
@click.option("--batch-size", type=click.IntRange(1), help="Global batch size (split over processes).")
@click.option("--lr", type=click.FloatRange(0, min_open=True), help="Peak learning rate for the global batch.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS))
@click.option("--schedule", type=click.Choice(SCHEDULES))
@click.option("--warmup-epochs", type=click.FloatRange(0))
@click.option("--weight-decay", type=click.FloatRange(0))
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True))
@click.option("--augment", help=f"Comma list of {', '.join(AUGMENTS)}, or none.")
@click.option("--erase-prob", type=click.FloatRange(0, 1),
              help="With erase in --augment: chance that an image gets one erased rectangle (default 0.25).")
@click.option("--amp/--no-amp", default=None, help="Mixed precision (bf16 on CPU, fp16 on CUDA).")
@click.option("--channels-last/--no-channels-last", default=None)
@click.option("--ema/--no-ema", default=None, help="Keep an exponential moving average of the weights.")
@click.option("--seed", type=int)
@click.option("--workers", type=click.IntRange(0), help="DataLoader workers (image folders only).")
@click.option("--train-samples", type=click.IntRange(1), help="Class-balanced training subset size.")
@click.option("--short-run", type=click.Choice(("auto", "on", "off")),
              help="The short-run changes (smaller batch, no augmentation, the family's short recipe): auto "
                   "(default) when the run has under 150 optimizer steps or at most 2 epochs.")
@click.option("--test-samples", type=click.IntRange(1), help="Class-balanced test subset size.")
@click.option("--input-size", type=click.IntRange(8), help="Resize images to this side.")
@click.option("--weights", help="Fine-tune from pretrained weights: a local .pth/.safetensors/pocketcnn checkpoint, "
              "or a weights name such as IMAGENET1K_V1 (see `pocketcnn weights`; nothing is downloaded).")
@click.option("--weights-dir", type=click.Path(file_okay=False),
              help="Where named weights are looked up (default: torch hub's cache, ~/.cache/torch/hub/checkpoints).")
@click.option("--freeze", type=click.Choice(FREEZE), help="features: train the classifier only (a linear probe).")
@click.option("--lr-features", type=click.FloatRange(0), help="The pretrained body's learning rate as a multiple of "
              "--lr (e.g. 0.1), default 1.")
@click.option("--val-split", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Hold out this class-balanced share of the training images (seeded) as the test split, e.g. "
                   "0.1 for a single image folder.")
@click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
              help="Model keyword, repeatable (e.g. width_mult=0.5, bypass=simple, drop_rate=0).")
@click.option("--device", type=click.Choice(DEVICES))
@click.option("--sync-bn/--no-sync-bn", default=None, help="SyncBatchNorm across processes.")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder (default runs/MODEL).")
@click.option("--resume", type=click.Path(dir_okay=False), help="Continue from a checkpoint (last.pt).")
@click.option("--config", type=click.Path(dir_okay=False), help="JSON file of TrainConfig fields.")
@click.option("--nproc", type=click.IntRange(1), default=1, show_default=True,
              help="Processes on this machine (launched with torchrun's launcher).")
@click.option("--max-restarts", type=click.IntRange(0), default=0, show_default=True,
              help="With --nproc: elastic restarts after a failure.")
@click.option("--force", is_flag=True, help="Replace the results of an earlier run in --out (refused otherwise).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object when done.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def train(ctx: click.Context, **params) -> None:
    """Train a model on a local data set; writes DIR/last.pt, best.pt, metrics.jsonl, curves.png.

    Settings come from the model's recipe, then --config, then the flags. An earlier run's
    results are never replaced silently: without --out, a run whose default folder
    (runs/MODEL) holds one goes to the next free numbered folder (runs/MODEL-2, ...); an
    explicit --out that holds one is refused unless --force (or --resume to continue it).
    """
    from ..artifacts.checkpoint import load_checkpoint
    from ..workflows.train import plan_run, train_run

    given = {k for k in params if ctx.get_parameter_source(k) is ParameterSource.COMMANDLINE}
    saved = load_checkpoint(params["resume"]).get("config", {}) if params["resume"] else None
    cfg = build_config(params, given, saved)
    file_cfg = load_config_file(params["config"]) if params["config"] else {}
    rank0 = os.environ.get("RANK", "0") == "0"
    plan = plan_run(cfg, fixed={*given, *file_cfg}, resuming=saved is not None, overwrite=params["force"],
                    worker="WORLD_SIZE" in os.environ, verbose=not params["quiet"])
    cfg = plan.config
    if plan.moved_from is not None:
        click.echo(f"{plan.moved_from} holds an earlier run; this one writes to {cfg.out_dir} (pass --out DIR "
                   "--force to replace a run)", err=True)
    if params["nproc"] > 1 and "WORLD_SIZE" not in os.environ:
        _launch(ctx, params["nproc"], params["max_restarts"], out=cfg.out)
        return
    if rank0 and saved is not None:
        _warn_changes(params["resume"], config_changes(saved, cfg))
    show = rank0 and not params["quiet"] and err_console.is_terminal
    progress = RichProgress(show, verbose=rank0 and not params["quiet"], preface=plan.notes if rank0 else ())
    result = train_run(cfg, progress, resume=params["resume"], overwrite=params["force"], curves=rank0)
    if not rank0:
        return
    if params["as_json"]:
        echo_json(result.to_dict())
    else:
        click.echo(f"{result.model}: best top-1 {result.best_top1:.2f}%, final {result.final_top1:.2f}% after "
                   f"{result.epochs} epochs in {result.wall_seconds:.0f}s; checkpoint {result.checkpoint}")


def _warn_changes(resume: str, changes: list) -> None:
    """Resuming under changed settings is allowed (e.g. more epochs on purpose), but the run is no longer
    the one saved: say so, field by field."""
    if changes:
        click.echo(f"warning: resuming {resume} with " + ", ".join(
            f"{f}={new!r} (was {old!r})" for f, old, new in changes) +
            "; the run continues under the new settings (a changed schedule changes the learning rate "
            "from the next step on)", err=True)
