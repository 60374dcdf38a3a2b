"""Bad-image accounting: count replaced images per epoch, stop above a fraction.

The loader never fails on an unreadable image (it substitutes one, see
``dataroom.loader``); the trainer feeds every batch's count into a
:class:`BadImageLedger`, logs ``ledger.count(epoch)`` per epoch, and calls
:meth:`BadImageLedger.check`, which raises :class:`TooManyBadImages` (its message lists
the first bad files and why) once the epoch has more bad images than
``max_fraction × images_per_epoch`` — a bound the epoch can no longer get back under, so
the decision is exact, not a running estimate, and the same at any step it is taken.

In DDP each rank sees only its own rows: sum ``batch.num_bad`` over ranks (all-reduce)
before :meth:`add`; each rank remembers its own paths, so before the stop (:meth:`over`
is the same on every rank) gather them (:meth:`merge`) and the message lists every rank's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

MAX_LISTED = 10


class TooManyBadImages(RuntimeError):
    """More images of an epoch could not be decoded than ``data.max_bad_fraction`` allows."""


def bad_fraction_error(epoch: int, num_bad: int, images_per_epoch: int, max_fraction: float,
                       first_bad: Iterable[tuple[str, str]] = ()) -> str | None:
    """The error message when ``num_bad`` exceeds the allowance of an epoch, else None."""
    allowed = max_fraction * images_per_epoch
    if num_bad <= allowed:
        return None
    listed = list(first_bad)[:MAX_LISTED]
    files = "; ".join(f"{p} ({r})" for p, r in listed) or "(paths not recorded on this rank)"
    return (f"data: {num_bad} images of epoch {epoch} could not be decoded, more than "
            f"data.max_bad_fraction={max_fraction:g} of the {images_per_epoch} images per "
            f"epoch allows ({int(allowed)}). First bad files: {files}. Fix or remove them "
            "(the file index notices the change), or raise data.max_bad_fraction.")


@dataclass
class BadImageLedger:
    """Bad images per epoch, and the stop decision.

    Attributes:
        images_per_epoch: Images drawn per epoch (steps per epoch × global batch).
        max_fraction: Allowed fraction of bad images per epoch (``data.max_bad_fraction``).
        counts: Epoch → number of rows whose image was replaced (all ranks).
        first_bad: The first ``(path, reason)`` seen on this rank, at most 10 kept.
    """

    images_per_epoch: int
    max_fraction: float = 1e-3
    counts: dict[int, int] = field(default_factory=dict)
    first_bad: list[tuple[str, str]] = field(default_factory=list)

    def add(self, epoch: int, num_bad: int, bad: Iterable[tuple[str, str]] = ()) -> None:
        """Count ``num_bad`` replaced rows of ``epoch`` and remember the first bad files."""
        self.counts[epoch] = self.counts.get(epoch, 0) + int(num_bad)
        for item in bad:
            if len(self.first_bad) >= MAX_LISTED:
                break
            if item not in self.first_bad:
                self.first_bad.append(tuple(item))

    def count(self, epoch: int) -> int:
        """Replaced rows of ``epoch`` so far."""
        return self.counts.get(epoch, 0)

    def over(self, epoch: int) -> bool:
        """Whether ``epoch`` has more bad images than it allows (:meth:`check` would raise)."""
        return self.count(epoch) > self.max_fraction * self.images_per_epoch

    def merge(self, per_rank: Iterable[Iterable[tuple[str, str]]]) -> None:
        """Keep the first bad files of every rank (rank order, at most 10 in all)."""
        merged: list[tuple[str, str]] = []
        for items in per_rank:
            merged += [tuple(x) for x in items if tuple(x) not in merged]
        self.first_bad = merged[:MAX_LISTED]

    def check(self, epoch: int) -> None:
        """Raise :class:`TooManyBadImages` when ``epoch`` is over its allowance."""
        message = bad_fraction_error(epoch, self.count(epoch), self.images_per_epoch,
                                     self.max_fraction, self.first_bad)
        if message:
            raise TooManyBadImages(message)

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state, for the checkpoint (a mid-epoch resume keeps the epoch's count)."""
        return {"counts": {str(k): v for k, v in self.counts.items()},
                "first_bad": [list(x) for x in self.first_bad]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.counts = {int(k): int(v) for k, v in state.get("counts", {}).items()}
        self.first_bad = [tuple(x) for x in state.get("first_bad", [])]
