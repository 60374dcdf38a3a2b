"""The device decode path: batched JPEG decoding and crops on the accelerator.

Loader workers read each file's bytes and header (no decode), draw the crop boxes and
decode on the CPU only what the device decoder cannot take (PNG, CMYK JPEG, anything not
a JPEG). :class:`DeviceDecoder`, in the main process, decodes the JPEG rows of a batch in
one ``torchvision.io.decode_jpeg(list, device=...)`` call (nvJPEG on CUDA, batched, using
the hardware JPEG engine where the GPU has one), then cuts every view on the device:
crop, antialiased resize (``F.interpolate(..., antialias=True)``, PIL's filters), flip.
A row the device decoder rejects falls back to the CPU decoder with the same boxes; a
row the CPU cannot decode either gets the loader's substitutes. With ``device="cpu"`` the
same code runs on libjpeg-turbo, which is how CI tests it.

NOTE: torchvision's ``decode_jpeg`` rather than nvImageCodec or DALI. It is already a
pinned dependency (no CUDA-toolkit-specific extra to install: DALI's wheels are per CUDA
major version and need the toolkit at run time), it takes a list and decodes it as one
batch (torchvision PR #8496: ~7.8k img/s on an A100, hardware decoder included), it runs
on the CPU too so CI covers the logic, and it leaves crop geometry to us — DALI's readers
and random ops carry their own RNG and sharding, which would break the per-sample
(seed, epoch, index, view) determinism the rest of the loader guarantees. torchvision
0.29 deprecates its image decoders in favour of TorchCodec; the one call to swap is in
:meth:`DeviceDecoder._decode`.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dataroom.decode import DecodeError, cut_views, open_image
from dataroom.loader import Batch, RawBatch, ViewsDataset


def crop_resize(image: Tensor, box: Tensor | np.ndarray, flip: bool, size: int,
                interpolation: str) -> Tensor:
    """One view from a decoded uint8 (3, H, W) image: crop ``box`` (top, left, h, w),
    antialiased resize to ``size``², optional mirror. Returns uint8 (3, size, size)."""
    top, left, h, w = (int(v) for v in box)
    region = image[:, top:top + h, left:left + w].unsqueeze(0).float()
    out = F.interpolate(region, size=(size, size), mode=interpolation, align_corners=False,
                        antialias=True)
    out = out.round_().clamp_(0, 255).to(torch.uint8)[0]
    return out.flip(-1) if flip else out


class DeviceDecoder:
    """Turns a :class:`RawBatch` into a :class:`Batch` whose views live on ``device``.

    Args:
        dataset: The loader's dataset (sizes, interpolations, substitutes).
        device: Where to decode and crop (``"cuda"``, or ``"cpu"`` for tests).
    """

    def __init__(self, dataset: ViewsDataset, device: torch.device | str) -> None:
        self.dataset, self.device = dataset, torch.device(device)
        self.rejected = 0  # rows the device decoder refused so far (CPU fallbacks)

    def _decode(self, chunks: list[Tensor]) -> list[Tensor | None]:
        """Decode ``chunks`` on the device; ``None`` where the decoder rejects one."""
        from torchvision.io import ImageReadMode, decode_jpeg

        if not chunks:
            return []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation notice, libjpeg warnings
            try:
                return list(decode_jpeg(chunks, mode=ImageReadMode.RGB, device=self.device))
            except RuntimeError:
                pass  # one bad image fails the whole batch: find it
            out: list[Tensor | None] = []
            for chunk in chunks:
                try:
                    out.append(decode_jpeg(chunk, mode=ImageReadMode.RGB, device=self.device))
                except RuntimeError:
                    out.append(None)
            return out

    def __call__(self, raw: RawBatch) -> Batch:
        ds, dev = self.dataset, self.device
        batch = len(raw.indices)
        views = [torch.empty((batch, 3, s, s), dtype=torch.uint8, device=dev) for s in ds.sizes]
        sources, bad = raw.sources.clone(), list(raw.bad)
        rows = raw.on_device.nonzero().view(-1).tolist()
        offsets = raw.offsets.tolist()
        chunks = [raw.data[offsets[r]:offsets[r + 1]] for r in rows]
        cpu_rows = [r for r in range(batch) if not raw.on_device[r]]
        for k, (row, image) in enumerate(zip(rows, self._decode(chunks))):
            reach = (raw.boxes[:, row, :2] + raw.boxes[:, row, 2:]).amax(0).tolist()
            if image is None or image.shape[0] != 3 or image.shape[1] < reach[0] \
                    or image.shape[2] < reach[1]:
                self.rejected += 1
                cpu_rows.append(row)
                self._cpu_fallback(raw, row, chunks[k], sources, bad)
                continue
            for v, (size, interp) in enumerate(zip(ds.sizes, ds.interps)):
                views[v][row] = crop_resize(image, raw.boxes[v, row], bool(raw.flips[v, row]),
                                            size, interp)
        if cpu_rows:
            idx = torch.tensor(sorted(cpu_rows), dtype=torch.long)
            for v, out in enumerate(views):
                out[idx.to(dev)] = raw.views[v][idx].to(dev)
        labels = torch.from_numpy(
            ds.labels[np.where(sources.numpy() >= 0, sources.numpy(), raw.indices.numpy())])
        return Batch(step=raw.step, epoch=raw.epoch, views=views,
                     labels=labels.to(dev), indices=raw.indices, sources=sources, bad=bad)

    def _cpu_fallback(self, raw: RawBatch, row: int, chunk: Tensor, sources: Tensor,
                      bad: list[tuple[str, str]]) -> None:
        """Decode one row on the CPU with its boxes, into ``raw.views``; then substitutes."""
        ds = self.dataset
        index = int(raw.indices[row])
        outs = [v[row].numpy() for v in raw.views]
        path = ds.paths[index]
        try:
            cut_views(open_image(chunk.numpy().tobytes(), path), raw.boxes[:, row].numpy(),
                      raw.flips[:, row].tolist(), ds.sizes, ds.interps, outs, path, ds.draft)
        except DecodeError as e:
            bad.append((e.path, e.reason))
            sources[row] = ds.recover(raw.epoch, index, 1, outs, bad)
