"""Importing this package registers every architecture."""
from . import alexnet, mobilenet_v1, mobilenet_v2, mobilenet_v3, squeezenet  # noqa: F401
from .layers import ConvBNAct, SqueezeExcite, make_divisible  # noqa: F401
