"""Registered SSL methods; importing this package fills ``methods.base.METHODS``.

Adding a method: one file in this folder and its name in the import below.
"""

from methods import barlow_twins, byol, simclr, simsiam, vicreg  # noqa: F401
from methods.base import METHODS, Method, ParamGroup, StepOutput

__all__ = ["METHODS", "Method", "ParamGroup", "StepOutput"]
