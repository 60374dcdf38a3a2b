"""Progress bars that suit both a terminal and a log file.

On a terminal: tqdm's bar, redrawn in place. Anywhere else (a log file, a pipe, a SLURM
``.err`` file): one plain line per refresh, at most one every ``log_interval_s`` seconds (30
by default), instead of a stream of carriage-return redraws that a log keeps in full.
Postfix changes never print by themselves (``set_postfix(..., refresh=False)``): the next
``update`` prints them, subject to the same interval.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 30.0


class LineWriter:
    """A file-like wrapper turning tqdm's ``\\r``-redraws into whole lines."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        getattr(self.stream, "flush", lambda: None)()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


def progress_bar(*, file: TextIO | None = None, log_interval_s: float = LOG_INTERVAL_S,
                 **kwargs: Any) -> tqdm:
    """A tqdm bar on ``file`` (stderr by default); ``kwargs`` go to tqdm."""
    stream = file if file is not None else sys.stderr
    if _isatty(stream):
        return tqdm(file=stream, dynamic_ncols=True, **kwargs)
    # maxinterval=inf: tqdm's monitor thread never forces a redraw between two intervals
    return tqdm(file=LineWriter(stream), mininterval=log_interval_s, maxinterval=float("inf"),
                ncols=100, ascii=True, **kwargs)
