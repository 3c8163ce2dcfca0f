"""Parity harness: show that the Paddle port computes what the PyTorch reference computes.

``parity run`` (:mod:`parity.runner`, :mod:`parity.cli`) compares every module output, the BN
statistics, the losses, every gradient, optimizer steps, LR schedules and an x2paddle third opinion,
under the named tolerances of :mod:`parity.tolerances`, and names the first module that differs.
:func:`compare` (``parity.compare(torch_model, paddle_model, inputs)``, :mod:`parity.generic`) does
the same for any two model objects that hold the same weights. Importing this package is cheap:
torch and Paddle are imported when a run starts.
"""
from .generic import GenericResult, compare
from .runner import ParityConfig, ParityResult, run_parity
from .tolerances import TOLERANCES, Comparison, Tolerance, first_divergence, tolerance_for

__all__ = ["TOLERANCES", "Comparison", "Tolerance", "first_divergence", "tolerance_for",
           "ParityConfig", "ParityResult", "run_parity", "GenericResult", "compare"]
