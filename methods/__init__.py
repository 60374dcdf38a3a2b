"""Registered SSL methods; importing this package fills ``methods.base.METHODS``."""

from methods import vicreg  # noqa: F401
from methods.base import METHODS, Method, ParamGroup, StepOutput

__all__ = ["METHODS", "Method", "ParamGroup", "StepOutput"]
