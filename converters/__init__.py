"""``convert-ckpt``: Cream checkpoints between PyTorch (``.pth.tar``) and Paddle (``.pdparams``), and
any torch model's state dict to its Paddle port (:mod:`converters.generic`, through the layer
matching of :mod:`converters.matching`).

Importing this package is cheap; torch and Paddle are imported when a conversion runs.
"""
from .convert import ConversionResult, convert_checkpoint, pdparams_to_pth
from .files import default_output

__all__ = ["ConversionResult", "convert_checkpoint", "pdparams_to_pth", "default_output"]
