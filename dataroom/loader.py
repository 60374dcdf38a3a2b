"""The pretraining loader: per-step batches of uint8 views, deterministic and resumable.

:class:`StepBatchSampler` turns a step number into this rank's slice of that step's global
batch (the epoch order is a function of (seed, epoch)); :class:`ViewsDataset` turns a
slice into a :class:`Batch` — each image read and decoded once, every view's crop+flip
cut to ``S×S`` uint8, a function of (seed, epoch, index, view) only. So batches are
bit-identical for any number of workers, a run resumed at step k gets batches k, k+1, …
of the uninterrupted run, and N ranks get exactly the rows one process would.

An unreadable image is replaced by a substitute chosen from (seed, epoch, index,
attempt); after ``max_attempts`` failures, by the mean-grey image. The batch names the
bad files (``Batch.bad``) and counts the replaced rows (``Batch.num_bad``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from dataroom.decode import (
    DecodeError,
    cut_views,
    fill_fallback,
    open_image,
    read_bytes,
)
from dataroom.geometry import substitute_index, view_geometry
from dataroom.readers import FileSet

DEVICE_FORMATS = ("JPEG",)  # what the device decoder is given; anything else is CPU-decoded
DEVICE_MODES = ("RGB", "L")  # CMYK/YCCK JPEGs go to the CPU (nvJPEG has no CMYK output)


@dataclass(frozen=True)
class ViewSpec:
    """The geometry of one view: RandomResizedCrop + horizontal flip.

    Attributes:
        crop_size: Output side S.
        scale: Area range of the crop, as a fraction of the image.
        ratio: Aspect (w / h) range of the crop.
        interpolation: ``"bicubic"`` or ``"bilinear"`` (antialiased).
        hflip_p: Probability of a horizontal flip.
    """

    crop_size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bicubic"
    hflip_p: float = 0.5

    def __post_init__(self) -> None:
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"interpolation must be bicubic or bilinear, got {self.interpolation}")
        if self.crop_size <= 0:
            raise ValueError(f"crop_size must be positive, got {self.crop_size}")

    @classmethod
    def of(cls, view: Any) -> ViewSpec:
        """From any object with ``crop_size``, ``crop_scale``, ``crop_ratio``,
        ``interpolation`` and ``hflip_p`` (the trainer's ``ViewAugConfig``)."""
        return cls(int(view.crop_size), tuple(view.crop_scale), tuple(view.crop_ratio),
                   str(view.interpolation), float(view.hflip_p))


def epoch_order(seed: int, epoch: int, num_images: int) -> Tensor:
    """The data order of ``epoch``: the trainer's permutation of (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_images, generator=g)


Key = tuple[int, int, int]  # (step, epoch, image index)


@dataclass
class Batch:
    """This rank's rows of one step.

    Attributes:
        step: Global step.
        epoch: Epoch of the step.
        views: One uint8 (B, 3, S, S) tensor per view (contiguous NCHW).
        labels: int64 (B,) labels of the decoded images (-1 = unlabeled).
        indices: int64 (B,) image indices the sampler asked for.
        sources: int64 (B,) image indices actually decoded (a substitute's, or -1 for the
            mean-grey image).
        bad: ``(path, reason)`` of every file that failed in this batch.
        num_bad: Rows whose own image could not be used.
    """

    step: int
    epoch: int
    views: list[Tensor]
    labels: Tensor
    indices: Tensor
    sources: Tensor
    bad: list[tuple[str, str]] = field(default_factory=list)

    @property
    def num_bad(self) -> int:
        """Rows whose own image could not be used."""
        return int((self.sources != self.indices).sum())

    def pin_memory(self) -> Batch:
        """Page-locked copies of the tensors (DataLoader ``pin_memory``)."""
        return replace(self, views=[v.pin_memory() for v in self.views],
                       labels=self.labels.pin_memory())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The views and labels on ``device``."""
        return replace(self, views=[v.to(device, non_blocking=non_blocking) for v in self.views],
                       labels=self.labels.to(device, non_blocking=non_blocking))


@dataclass
class RawBatch:
    """A batch for the device decoder: JPEG bytes + boxes, and CPU-decoded rows.

    Attributes:
        step, epoch, labels, indices, sources, bad: As in :class:`Batch` (so far).
        data: uint8 bytes of the rows to decode on the device, concatenated.
        offsets: int64 (B + 1,): row i's bytes are ``data[offsets[i]:offsets[i + 1]]``
            (empty for rows already decoded).
        on_device: bool (B,): rows whose bytes are to be decoded on the device.
        boxes: int64 (V, B, 4) crop boxes in full-resolution pixels.
        flips: bool (V, B).
        views: One uint8 (B, 3, S, S) tensor per view holding the CPU-decoded rows.
    """

    step: int
    epoch: int
    labels: Tensor
    indices: Tensor
    sources: Tensor
    bad: list[tuple[str, str]]
    data: Tensor
    offsets: Tensor
    on_device: Tensor
    boxes: Tensor
    flips: Tensor
    views: list[Tensor]

    def pin_memory(self) -> RawBatch:
        """Page-locked bytes and CPU-decoded views."""
        return replace(self, data=self.data.pin_memory(),
                       views=[v.pin_memory() for v in self.views])


def _identity(x: Any) -> Any:
    return x


class StepBatchSampler(Sampler[list[Key]]):
    """Yields, for each step from ``start_step``, this rank's keys ``(step, epoch, index)``.

    Step ``s`` is iteration ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``;
    its global batch is ``order(epoch)[it·G:(it + 1)·G]`` (the last incomplete batch of an
    epoch is dropped) and rank r takes rows ``r·G/W:(r + 1)·G/W``.

    Args:
        num_images: Size of the file set.
        global_batch: Rows per step over all ranks (G).
        seed: Seeds the default order.
        rank: This process's rank.
        world_size: Number of processes (W), dividing G.
        start_step: First step to yield (resume point).
        stop_step: Step to stop before; ``None`` = never stop.
        order: ``order(epoch) -> permutation`` of ``range(num_images)``; default
            :func:`epoch_order` of ``seed``.
    """

    def __init__(self, num_images: int, global_batch: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1, start_step: int = 0, stop_step: int | None = None,
                 order: Callable[[int], Tensor | np.ndarray] | None = None) -> None:
        if global_batch <= 0 or global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not a positive multiple of the "
                             f"{world_size} processes")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, {world_size})")
        self.steps_per_epoch = num_images // global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"global batch {global_batch} exceeds the {num_images} images")
        self.num_images, self.global_batch = num_images, global_batch
        self.rank, self.world_size, self.local = rank, world_size, global_batch // world_size
        self.start_step, self.stop_step = start_step, stop_step
        self.order = order or (lambda epoch: epoch_order(seed, epoch, num_images))
        self._cached: tuple[int, np.ndarray] | None = None

    def _order(self, epoch: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != epoch:
            perm = np.asarray(self.order(epoch), dtype=np.int64)
            if perm.shape != (self.num_images,):
                raise ValueError(f"order({epoch}) has shape {perm.shape}, "
                                 f"expected ({self.num_images},)")
            self._cached = (epoch, perm)
        return self._cached[1]

    def keys(self, step: int) -> list[Key]:
        """This rank's keys of ``step``."""
        epoch, it = divmod(step, self.steps_per_epoch)
        lo = it * self.global_batch + self.rank * self.local
        rows = self._order(epoch)[lo:lo + self.local]
        return [(step, epoch, int(i)) for i in rows]

    def __iter__(self) -> Iterator[list[Key]]:
        step = self.start_step
        while self.stop_step is None or step < self.stop_step:
            yield self.keys(step)
            step += 1

    def __len__(self) -> int:
        if self.stop_step is None:
            raise TypeError("an open-ended StepBatchSampler has no length")
        return max(0, self.stop_step - self.start_step)


class ViewsDataset(Dataset):
    """Map-style: a list of keys ``(step, epoch, index)`` → a :class:`Batch` (or RawBatch).

    Args:
        files: The images (``dataroom.readers``).
        views: One :class:`ViewSpec` per view.
        seed: Run seed (crop geometry and substitutes).
        decode: ``"cpu"`` (decode + crop here) or ``"device"`` (bytes + boxes here; JPEGs
            decoded by ``dataroom.device.DeviceDecoder`` in the main process).
        max_attempts: Substitutes tried for an unreadable image before the mean grey.
        draft: Let libjpeg-turbo decode at a reduced scale when every crop allows it.
    """

    def __init__(self, files: FileSet, views: Sequence[ViewSpec], seed: int,
                 decode: str = "cpu", max_attempts: int = 3, draft: bool = True) -> None:
        if decode not in ("cpu", "device"):
            raise ValueError(f"decode must be 'cpu' or 'device', got {decode!r}")
        if not views:
            raise ValueError("at least one view is needed")
        self.paths, self.labels = files.paths, np.asarray(files.labels, dtype=np.int64)
        if self.labels.ndim != 1:
            raise ValueError("pretraining needs one label (or -1) per image")
        self.views, self.seed, self.decode = tuple(views), int(seed), decode
        self.max_attempts, self.draft = int(max_attempts), bool(draft)
        self.sizes = [v.crop_size for v in self.views]
        self.interps = [v.interpolation for v in self.views]

    def __len__(self) -> int:
        return len(self.paths)

    def geometry(self, epoch: int, indices: Sequence[int], heights: Sequence[int],
                 widths: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Boxes int64 (V, N, 4) and flips bool (V, N) for images of the given sizes."""
        out = [view_geometry(self.seed, epoch, indices, v, heights, widths, s.scale, s.ratio,
                             s.hflip_p) for v, s in enumerate(self.views)]
        return np.stack([b for b, _ in out]), np.stack([f for _, f in out])

    def _open(self, index: int) -> tuple[bytes, Image.Image]:
        """The file's bytes and the image opened on them (header parsed, not decoded)."""
        path = self.paths[index]
        data = read_bytes(path)
        img = open_image(data, path)
        if img.width <= 0 or img.height <= 0:
            raise DecodeError(path, f"invalid size {img.width}×{img.height}")
        return data, img

    def _empty_views(self, batch: int) -> list[np.ndarray]:
        # NOTE: NCHW, not channels_last: the uint8 antialiased resize returns NCHW, so
        # stacking NHWC would cost a transposing copy per view (0.26 ms at 224 px, ~15 % of
        # the per-image work); on the GPU .contiguous(memory_format=channels_last) is free.
        return [np.empty((batch, 3, s, s), dtype=np.uint8) for s in self.sizes]

    def recover(self, epoch: int, index: int, first_attempt: int,
                outs: Sequence[np.ndarray], bad: list[tuple[str, str]]) -> int:
        """Decode substitutes for ``index`` from ``first_attempt`` on into ``outs``.

        The substitute's crop is drawn with ``index``'s key and the substitute's size.
        Returns the index decoded, or -1 after writing the mean-grey image.
        """
        for attempt in range(first_attempt, self.max_attempts + 1):
            sub = substitute_index(self.seed, epoch, index, attempt, len(self))
            try:
                _, img = self._open(sub)
                boxes, flips = self.geometry(epoch, [index], [img.height], [img.width])
                cut_views(img, boxes[:, 0], flips[:, 0],
                          self.sizes, self.interps, outs, self.paths[sub], self.draft)
                return sub
            except DecodeError as e:
                bad.append((e.path, e.reason))
        fill_fallback(outs)
        return -1

    def __getitem__(self, key: Key) -> Batch | RawBatch:
        return self.__getitems__([key])

    def __getitems__(self, keys: Sequence[Key]) -> Batch | RawBatch:
        if not keys:
            raise ValueError("empty batch")
        step, epoch = keys[0][0], keys[0][1]
        indices = np.asarray([k[2] for k in keys], dtype=np.int64)
        batch = len(keys)
        bad: list[tuple[str, str]] = []
        sources = indices.copy()
        datas: list[bytes | None] = [None] * batch
        heights, widths = np.ones(batch, np.int64), np.ones(batch, np.int64)
        imgs: list[Image.Image | None] = [None] * batch
        for row, index in enumerate(indices.tolist()):  # headers only
            try:
                datas[row], imgs[row] = self._open(index)
                heights[row], widths[row] = imgs[row].height, imgs[row].width
            except DecodeError as e:
                bad.append((e.path, e.reason))
        boxes, flips = self.geometry(epoch, indices, heights, widths)
        outs = self._empty_views(batch)
        on_device = np.zeros(batch, dtype=bool)
        for row, index in enumerate(indices.tolist()):
            rows = [o[row] for o in outs]
            if datas[row] is None:
                sources[row] = self.recover(epoch, index, 1, rows, bad)
                continue
            img, imgs[row] = imgs[row], None  # decoded pixels freed row by row
            if self.decode == "device" and img.format in DEVICE_FORMATS \
                    and img.mode in DEVICE_MODES:
                on_device[row] = True
                continue
            datas[row] = None
            try:
                cut_views(img, boxes[:, row], flips[:, row],
                          self.sizes, self.interps, rows, self.paths[index], self.draft)
            except DecodeError as e:
                bad.append((e.path, e.reason))
                sources[row] = self.recover(epoch, index, 1, rows, bad)
        labels = self.labels[np.where(sources >= 0, sources, indices)]
        common = dict(step=step, epoch=epoch, labels=torch.from_numpy(labels),
                      indices=torch.from_numpy(indices), sources=torch.from_numpy(sources),
                      bad=bad)
        if self.decode == "cpu":
            views = [torch.from_numpy(o) for o in outs]
            return Batch(views=views, **common)
        chunks = [datas[r] if on_device[r] else b"" for r in range(batch)]
        offsets = np.zeros(batch + 1, dtype=np.int64)
        np.cumsum([len(c) for c in chunks], out=offsets[1:])
        data = torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8) \
            if offsets[-1] else torch.zeros(0, dtype=torch.uint8)
        return RawBatch(data=data, offsets=torch.from_numpy(offsets),
                        on_device=torch.from_numpy(on_device), boxes=torch.from_numpy(boxes),
                        flips=torch.from_numpy(flips),
                        views=[torch.from_numpy(o) for o in outs], **common)


def worker_init(_: int) -> None:
    """Loader worker setup: one torch thread (the work is per-image PIL code)."""
    torch.set_num_threads(1)


def default_num_workers(local_world_size: int = 1) -> int:
    """All CPU cores of this process's share but one (for the training loop), 1..32."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(32, cpus // max(1, local_world_size) - 1))
