"""The ``pocketcnn`` command line: one small module per command, loaded on demand.

Library code raises :class:`~pocketcnn.errors.PocketCNNError`; this boundary turns it
into one line on stderr and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import importlib
import sys

import click

from .. import __version__
from ..errors import PocketCNNError, missing_extra

# command name -> "module:function" under pocketcnn.cli
COMMANDS = {
    "models": "models:models",
    "inspect": "models:inspect",
    "compare": "models:compare",
    "train": "train:train",
    "eval": "evaluate:evaluate",
    "demo": "demo:demo",
    "export": "export:export",
    "quantize": "quantize:quantize",
    "compress": "compress:compress",
    "predict": "predict:predict",
    "bench": "bench:bench",
    "serve": "serve:serve",
    "weights": "weights:weights",
    "web-runtime": "web:web_runtime",
}


class LazyGroup(click.Group):
    """Imports a command's module only when that command runs (keeps ``--help`` fast)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self._load(name) is not None]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return self._load(name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        try:
            mod = importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{module}":
                return None  # command not shipped in this build
            raise
        return getattr(mod, attr)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PocketCNNError as exc:
            raise UserError(str(exc), getattr(exc, "exit_code", 1)) from None
        except ModuleNotFoundError as exc:  # an optional package (PyTorch in the light install): one line
            error = missing_extra(exc, f"pocketcnn {ctx.invoked_subcommand or ''}".strip())
            if error is None:
                raise
            raise UserError(str(error), error.exit_code) from None
        except KeyboardInterrupt:
            raise click.exceptions.Exit(130) from None


class UserError(click.ClickException):
    """Printed by click as ``Error: <message>`` on stderr, no traceback."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(" ".join(message.split("\n")))
        self.exit_code = exit_code


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="pocketcnn")
def cli() -> None:
    """Pocket-sized CNNs: SqueezeNet and MobileNet, from paper to phone.

    Every command has --help; most take --json for scripts.
    """


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="pocketcnn")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
