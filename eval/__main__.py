"""``python -m eval CKPT …``: the same command as ``python eval/run_all.py``."""

from __future__ import annotations

import sys

from eval.run_all import cli

sys.exit(cli())
