"""Streaming pretraining batches from tar shards (``dataroom.shards``), deterministic and
resumable: :class:`ShardLoader` yields the same :class:`~dataroom.loader.Batch` objects as
:class:`~dataroom.pretrain.PretrainLoader` (uint8 NCHW views, crop+flip a function of
(seed, epoch, index, view); colour is the trainer's, per step), so the trainer consumes
either the same way.

How an epoch is laid out (every quantity below is a function of (seed, epoch) for a given
world size W and worker count K; nothing depends on timing):

1. ``T = N // G`` steps per epoch (N samples in the manifest, G the global batch); each
   rank takes ``B = G / W`` rows per step; the last ``N − T·G`` samples of the epoch's
   stream are not used that epoch (as the file loader drops the last partial batch).
2. The shards are put in an order drawn from (seed, epoch) and read as one stream of N
   samples.
3. The stream is cut into W·K contiguous *slots*, rank-major (rank 0's K slots, then rank
   1's …: split across ranks, then workers). Slot (r, w) serves the steps s of the epoch
   with ``s % K == w`` on rank r, and its length is exactly what those steps need. Slots
   are disjoint, so no sample is served twice in an epoch and every served sample is served
   once. A slot starting inside a shard skips that shard's first samples unread (``seek``
   on a local file; on a ``pipe:`` stream their bytes are read and dropped, never
   decoded): at most one shard's head per slot is transferred twice.
4. Within a slot, samples come out of a shuffle buffer (``shuffle_buffer`` samples, as
   WebDataset's ``.shuffle``) driven by a generator of (seed, epoch, rank, slot); its output
   order is computed from positions alone, before any byte is read.
5. Step s's rows on rank r are the next B samples of slot (r, s % K), decoded and cut into
   views with the crop+flip of (seed, epoch, global sample index, view); with K loader
   workers, DataLoader worker j serves the slot of steps ``start_step + j (mod K)``, and the
   DataLoader's round-robin hands the batches back in step order.

Resuming at step k (``start_step=k``) recomputes the epoch's layout, marks the samples the
slot served before k as done, and streams the slot from its start reading only the
samples still to come: the batches from k on are bit-identical to the uninterrupted run's.

What changes with the world size or the worker count: the slots (3.), so which samples
share a batch, the order within the epoch and which samples are dropped at its end. The
number of samples and steps per epoch, each sample's crop and flip in an epoch and the
per-step colour draws do not. A run resumed with another W or K is a valid run with another
data order, not a bit-identical continuation (the file loader, one global permutation cut
by rank, keeps the same global batches for any W and K: random access makes that cheap).
``slots = max(1, num_workers)``: 0 and 1 workers give the same stream.

Bad input: a missing, extra or resized shard fails when the loader is built
(:func:`dataroom.shards.load_manifest`); a truncated or malformed tar, or a shard with more
or fewer samples than listed, raises :class:`~dataroom.shards.ShardError` from the worker
that reads it (re-raised in the training process); an image that cannot be decoded
becomes the mean-grey image, named in ``Batch.bad`` as ``<shard>:<key>`` and counted in
``Batch.num_bad`` for :class:`~dataroom.badimages.BadImageLedger` (streams have no random
access, so no substitute image is drawn).

``pipe:`` URLs: ``url="pipe:aws s3 cp s3://bucket/set/{name} -"`` runs the command (the
user's own text, through ``/bin/sh``) with ``{name}`` replaced by the shell-quoted shard
name (manifest names are restricted to ``[A-Za-z0-9._-]``); it runs in its own process
group, killed (SIGTERM, then SIGKILL) when the shard is done or the reader stops. A
non-``pipe:`` URL (``/mnt/set/{name}``) is opened as a file, never through a shell.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dataroom.decode import DecodeError, cut_views, fill_fallback, open_image
from dataroom.geometry import view_geometry
from dataroom.loader import Batch, ViewSpec, _identity, default_num_workers, worker_init
from dataroom.shards import MANIFEST, Manifest, ShardError, iter_samples, load_manifest

DEFAULT_BUFFER = 1000


# ---------------------------------------------------------------------------------------
# opening a shard


def shard_url(template: str | None, folder: Path, name: str) -> str:
    """The URL of shard ``name``: ``folder/name`` without a template, else the template with
    ``{name}`` filled (shell-quoted for ``pipe:``)."""
    if template is None:
        return str(folder / name)
    if "{name}" not in template:
        raise ShardError(f"shard URL {template!r} has no '{{name}}' placeholder")
    if template.startswith("pipe:"):
        return template.replace("{name}", shlex.quote(name))
    return template.replace("{name}", name)


@contextmanager
def open_url(url: str) -> Iterator[IO[bytes]]:
    """A readable stream of ``url``: a local file, or ``pipe:<command>``'s stdout.

    The command runs in its own process group (``/bin/sh -c``), with stderr kept in a
    temporary file; on leaving, the group is sent SIGTERM (then SIGKILL after 5 s) if still
    running. A command that exits non-zero raises :class:`ShardError` with its stderr tail.
    """
    if not url.startswith("pipe:"):
        try:
            f = open(url, "rb")
        except OSError as e:
            raise ShardError(f"{url}: cannot open shard ({e.strerror or e})") from None
        with f:
            yield f
        return
    command = url[len("pipe:"):]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(command, shell=True, stdin=subprocess.DEVNULL,  # noqa: S602
                                stdout=subprocess.PIPE, stderr=err, start_new_session=True)
        assert proc.stdout is not None
        failed: BaseException | None = None
        try:
            yield proc.stdout
        except BaseException as e:
            failed = e
            raise
        finally:
            ours = failed is not None and not isinstance(failed, GeneratorExit)
            if ours:  # the stream ended early or was malformed: did the command fail?
                try:
                    proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    pass
            proc.stdout.close()
            if proc.poll() is None:
                _kill_group(proc)
            elif proc.returncode != 0 and not isinstance(failed, GeneratorExit):
                err.seek(0)
                tail = err.read()[-500:].decode("utf-8", "replace").strip()
                raise ShardError(f"{url}: command exited with status {proc.returncode}"
                                 + (f": {tail}" if tail else "")) from failed


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def open_manifest(root: str | Path, url: str | None = None) -> tuple[Manifest, str | None]:
    """The manifest of ``root`` and the shard URL template to read with.

    ``root`` is a shard folder or manifest file (shards next to it, or at ``url``), or a
    ``pipe:`` template naming the whole set (``pipe:aws s3 cp s3://b/set/{name} -``): the
    manifest is read by running it for ``manifest.json``.
    """
    text = str(root)
    if not text.startswith("pipe:"):
        return load_manifest(root, check_files=url is None), url
    if url is not None and url != text:
        raise ShardError("a pipe: root already names the shards' URL; give no other url")
    with open_url(shard_url(text, Path("."), MANIFEST)) as f:
        data = f.read()
    if not data:
        raise ShardError(f"{text}: the command printed no manifest for {MANIFEST}")
    return load_manifest(text, check_files=False,
                         text=data.decode("utf-8", "replace")), text


# ---------------------------------------------------------------------------------------
# the epoch layout (pure functions)


def _rng(*words: int) -> np.random.Generator:
    return np.random.default_rng([int(w) & 0xFFFFFFFFFFFFFFFF for w in words])


def shard_order(seed: int, epoch: int, num_shards: int) -> np.ndarray:
    """The shards' order in ``epoch``."""
    return _rng(seed, epoch, 0x5348).permutation(num_shards)


def buffer_order(n: int, buffer: int, rng: np.random.Generator) -> np.ndarray:
    """The output order of a shuffle buffer of ``buffer`` samples fed ``0..n-1`` in order:
    fill, then repeatedly emit a random slot and refill it with the next sample. Sample p
    is read at most ``buffer`` outputs before it is emitted."""
    out = np.empty(n, dtype=np.int64)
    if n == 0:
        return out
    buf = list(range(min(max(1, buffer), n)))
    nxt = len(buf)
    u = rng.random(n)
    for t in range(n):
        j = int(u[t] * len(buf))
        out[t] = buf[j]
        if nxt < n:
            buf[j] = nxt
            nxt += 1
        else:
            buf[j] = buf[-1]
            buf.pop()
    return out


def slot_steps(epoch: int, steps_per_epoch: int, slots: int, slot: int) -> np.ndarray:
    """The global steps of ``epoch`` served by ``slot`` (those with ``step % slots == slot``)."""
    first = epoch * steps_per_epoch
    steps = np.arange(first, first + steps_per_epoch)
    return steps[steps % slots == slot]


@dataclass(frozen=True)
class SlotPlan:
    """One slot of one epoch: stream positions ``start..start+length`` in buffer order."""

    epoch: int
    steps: np.ndarray  # the global steps it serves, ascending
    start: int  # first position in the epoch's stream
    order: np.ndarray  # positions relative to start, in output order
    shards: np.ndarray  # shard order of the epoch
    offsets: np.ndarray  # stream position where each shard (in epoch order) starts


def slot_plan(manifest: Manifest, seed: int, epoch: int, global_batch: int, rank: int,
              world_size: int, slots: int, slot: int, buffer: int) -> SlotPlan:
    """The layout of slot ``slot`` of rank ``rank`` in ``epoch`` (see the module doc)."""
    counts = np.asarray([s.samples for s in manifest.shards], dtype=np.int64)
    t = manifest.num_samples // global_batch
    local = global_batch // world_size
    lengths = [len(slot_steps(epoch, t, slots, w)) * local for w in range(slots)]
    start = rank * t * local + sum(lengths[:slot])
    order = shard_order(seed, epoch, len(counts))
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts[order], out=offsets[1:])
    rng = _rng(seed, epoch, rank, slot, 0x4255)
    return SlotPlan(epoch, slot_steps(epoch, t, slots, slot), start,
                    buffer_order(lengths[slot], buffer, rng), order, offsets)


# ---------------------------------------------------------------------------------------
# the dataset


class ShardStream(IterableDataset):
    """This rank's batches, one per step from ``start_step``; see the module doc.

    In a DataLoader with K workers, worker j yields the steps ``start_step + j``,
    ``+ K`` …; without workers (or with one) it yields every step.
    """

    def __init__(self, manifest: Manifest, views: Sequence[ViewSpec], *, seed: int,
                 global_batch: int, rank: int = 0, world_size: int = 1, slots: int = 1,
                 start_step: int = 0, stop_step: int | None = None,
                 shuffle_buffer: int = DEFAULT_BUFFER, url: str | None = None,
                 draft: bool = True) -> None:
        if global_batch <= 0 or global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not a positive multiple of the "
                             f"{world_size} processes")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, {world_size})")
        if not views:
            raise ValueError("at least one view is needed")
        self.steps_per_epoch = manifest.num_samples // global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"global batch {global_batch} exceeds the "
                             f"{manifest.num_samples} samples")
        self.manifest, self.views, self.seed = manifest, tuple(views), int(seed)
        self.global_batch, self.rank, self.world_size = global_batch, rank, world_size
        self.local = global_batch // world_size
        self.slots, self.start_step, self.stop_step = max(1, int(slots)), start_step, stop_step
        self.buffer, self.url, self.draft = int(shuffle_buffer), url, bool(draft)
        self.sizes = [v.crop_size for v in self.views]
        self.interps = [v.interpolation for v in self.views]
        self.base = manifest.offsets  # global index of each shard's first sample

    # -- reading ------------------------------------------------------------------------

    def _read(self, plan: SlotPlan, skip: set[int]) -> Iterator[tuple[int, int, str, bytes,
                                                                      int]]:
        """``(relative position, global index, name, bytes, label)`` of the slot's samples
        not in ``skip``, in stream order; each shard opened once, only its needed samples'
        image bytes read."""
        lo, hi = plan.start, plan.start + len(plan.order)
        first = int(np.searchsorted(plan.offsets, lo, side="right")) - 1
        for k in range(first, len(plan.shards)):
            begin = int(plan.offsets[k])
            if begin >= hi:
                return
            shard = int(plan.shards[k])
            info = self.manifest.shards[shard]
            url = shard_url(self.url, self.manifest.folder, info.name)

            def wanted(j: int, begin: int = begin) -> bool:
                p = begin + j
                return lo <= p < hi and (p - lo) not in skip

            with open_url(url) as f:
                count = 0
                for j, sample in enumerate(iter_samples(f, info.name, wanted)):
                    count = j + 1
                    if j >= info.samples:
                        raise ShardError(f"{info.name}: holds more samples than the "
                                         f"{info.samples} the manifest lists")
                    p = begin + j
                    if p >= hi:
                        break
                    if p >= lo and (p - lo) not in skip:
                        assert sample.data is not None and sample.label is not None
                        yield (p - lo, int(self.base[shard]) + j,
                               f"{info.name}:{sample.key}", sample.data, sample.label)
                else:
                    if count != info.samples:
                        raise ShardError(f"{info.name}: {count} samples, the manifest lists "
                                         f"{info.samples} (truncated or replaced shard; "
                                         "`python -m dataroom.shards verify` checks a set)")

    def _slot_batches(self, slot: int, first_step: int) -> Iterator[Batch]:
        epoch = first_step // self.steps_per_epoch
        while True:
            plan = slot_plan(self.manifest, self.seed, epoch, self.global_batch, self.rank,
                             self.world_size, self.slots, slot, self.buffer)
            done = int(np.searchsorted(plan.steps, first_step))  # batches served before
            if done < len(plan.steps):
                skip = set(plan.order[:done * self.local].tolist())
                reader = self._read(plan, skip)
                held: dict[int, tuple[int, str, bytes, int]] = {}
                try:
                    for b in range(done, len(plan.steps)):
                        step = int(plan.steps[b])
                        if self.stop_step is not None and step >= self.stop_step:
                            return
                        rows = []
                        for p in plan.order[b * self.local:(b + 1) * self.local].tolist():
                            while p not in held:
                                q, *rest = next(reader)
                                held[q] = tuple(rest)  # type: ignore[assignment]
                            rows.append(held.pop(p))
                        yield self.decode(step, epoch, rows)
                finally:
                    reader.close()
            epoch += 1

    def decode(self, step: int, epoch: int, rows: list[tuple[int, str, bytes, int]]) -> Batch:
        """Rows ``(global index, name, bytes, label)`` → the step's :class:`Batch`."""
        n = len(rows)
        indices = np.asarray([r[0] for r in rows], dtype=np.int64)
        labels = np.asarray([r[3] for r in rows], dtype=np.int64)
        sources = indices.copy()
        bad: list[tuple[str, str]] = []
        imgs = []
        heights, widths = np.ones(n, np.int64), np.ones(n, np.int64)
        for row, (_, name, data, _) in enumerate(rows):
            try:
                img = open_image(data, name)
                if img.width <= 0 or img.height <= 0:
                    raise DecodeError(name, f"invalid size {img.width}×{img.height}")
                heights[row], widths[row] = img.height, img.width
                imgs.append(img)
            except DecodeError as e:
                bad.append((e.path, e.reason))
                imgs.append(None)
        geo = [view_geometry(self.seed, epoch, indices, v, heights, widths, s.scale, s.ratio,
                             s.hflip_p) for v, s in enumerate(self.views)]
        boxes, flips = np.stack([g[0] for g in geo]), np.stack([g[1] for g in geo])
        outs = [np.empty((n, 3, s, s), dtype=np.uint8) for s in self.sizes]
        for row in range(n):
            out_rows = [o[row] for o in outs]
            img, imgs[row] = imgs[row], None
            if img is not None:
                try:
                    cut_views(img, boxes[:, row], flips[:, row], self.sizes, self.interps,
                              out_rows, rows[row][1], self.draft)
                    continue
                except DecodeError as e:
                    bad.append((e.path, e.reason))
            sources[row] = -1
            fill_fallback(out_rows)
        return Batch(step=step, epoch=epoch, views=[torch.from_numpy(o) for o in outs],
                     labels=torch.from_numpy(labels), indices=torch.from_numpy(indices),
                     sources=torch.from_numpy(sources), bad=bad)

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        if info is None:
            workers, worker = 1, 0
        else:
            workers, worker = info.num_workers, info.id
        if workers not in (1, self.slots):
            raise ValueError(f"{workers} loader workers for a stream of {self.slots} slots")
        if workers == 1:  # one process serves every slot, interleaved by step
            yield from self._interleave()
            return
        slot = (self.start_step + worker) % self.slots
        yield from self._slot_batches(slot, self.start_step + worker)

    def _interleave(self) -> Iterator[Batch]:
        gens = {w: self._slot_batches((self.start_step + w) % self.slots, self.start_step + w)
                for w in range(self.slots)}
        try:
            step = self.start_step
            while self.stop_step is None or step < self.stop_step:
                yield next(gens[(step - self.start_step) % self.slots])
                step += 1
        finally:
            for g in gens.values():
                g.close()


class ShardLoader:
    """This rank's :class:`Batch` of every step from ``start_step`` to ``stop_step``, streamed
    from a shard set; the interface of :class:`~dataroom.pretrain.PretrainLoader`.

    Args:
        root: The shard folder or its ``manifest.json``; or a ``pipe:`` URL template (the
            manifest is then fetched by the same command with ``{name}`` =
            ``manifest.json``, and the shards likewise).
        views: One :class:`ViewSpec` per view.
        seed: Run seed (shard order, buffer draws, crops, flips).
        global_batch: Rows per step over all ranks.
        rank: This process's rank.
        world_size: Number of processes.
        start_step: First step (the resume point).
        stop_step: Step to stop before (``None`` = endless).
        num_workers: Loader processes; ``None`` = ``default_num_workers``; 0 = read and
            decode in this process (same stream as 1 worker).
        slots: Streams per rank; default ``max(1, num_workers)``. With ``num_workers`` > 1
            it must equal ``num_workers``; with 0 workers this process serves every slot
            (so a stream of K slots can be reproduced without workers).
        shuffle_buffer: Samples in each slot's shuffle buffer (raw bytes held in memory).
        url: Shard URL template with ``{name}`` (``pipe:<command>`` or a path); default the
            manifest's folder.
        device: The training device (pinning).
        prefetch_factor: Batches in flight per worker.
        decode: Only ``"cpu"`` (the device decoder is not wired for streams; anything else
            raises :class:`ShardError`).
        local_world_size: Processes on this node (for the default worker count).
    """

    def __init__(self, root: str | Path, views: Sequence[ViewSpec], *, seed: int,
                 global_batch: int, rank: int = 0, world_size: int = 1, start_step: int = 0,
                 stop_step: int | None = None, num_workers: int | None = None,
                 slots: int | None = None, shuffle_buffer: int = DEFAULT_BUFFER,
                 url: str | None = None, device: torch.device | str = "cpu",
                 prefetch_factor: int = 2, decode: str = "cpu",
                 local_world_size: int = 1) -> None:
        if decode != "cpu":
            raise ShardError(f"shard streams decode on the CPU only: data.decode={decode!r} "
                             "is not supported for them (use data.decode=cpu)")
        if shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be at least 1, got {shuffle_buffer}")
        self.manifest, url = open_manifest(root, url)
        workers = default_num_workers(local_world_size) if num_workers is None else num_workers
        if slots is None:
            slots = max(1, workers)
        elif workers > 1 and slots != workers:
            raise ValueError(f"slots ({slots}) must equal num_workers ({workers}) when "
                             "workers are used")
        self.num_workers, self.slots = workers, slots
        self.device = torch.device(device)
        self.dataset = ShardStream(self.manifest, views, seed=seed, global_batch=global_batch,
                                   rank=rank, world_size=world_size, slots=slots,
                                   start_step=start_step, stop_step=stop_step,
                                   shuffle_buffer=shuffle_buffer, url=url)
        self.start_step, self.stop_step = start_step, stop_step
        self.loader = DataLoader(
            self.dataset, batch_size=None, collate_fn=_identity, num_workers=workers,
            pin_memory=self.device.type == "cuda" and torch.cuda.is_available(),
            worker_init_fn=worker_init if workers else None, persistent_workers=workers > 0,
            prefetch_factor=prefetch_factor if workers else None)

    @property
    def steps_per_epoch(self) -> int:
        """Full global batches per epoch (the epoch's last ``N mod G`` samples unused)."""
        return self.dataset.steps_per_epoch

    @property
    def images_per_epoch(self) -> int:
        """Images drawn per epoch over all ranks."""
        return self.dataset.steps_per_epoch * self.dataset.global_batch

    @property
    def classes(self) -> list[str]:
        return self.manifest.classes

    def __len__(self) -> int:
        if self.stop_step is None:
            raise TypeError("an open-ended ShardLoader has no length")
        return max(0, self.stop_step - self.start_step)

    def __iter__(self) -> Iterator[Batch]:
        try:
            yield from self.loader
        except ShardError as e:  # from a worker: its message, without the traceback text
            text = str(e)
            if "Original Traceback" not in text:
                raise
            last = [line for line in text.splitlines() if line.strip()][-1]
            raise ShardError(last.split("ShardError: ", 1)[-1]) from None
