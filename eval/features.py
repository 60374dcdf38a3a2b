"""Frozen-feature extraction (in-memory tensors or image files) and the on-disk cache.

Features are computed with the backbone in eval mode (frozen BN statistics, as VISSL's
``FeatureExtractorModel`` and fssb's ``FORCE_BN_TEST_MODE`` do) and returned as float32
on the CPU. ``"avgpool"`` is the backbone's pooled output; ``"res4"`` / ``"res5"`` are the
stage maps of ``forward_taps`` pooled as in the FAIR benchmark (eval-protocols §1.1).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.io import atomic_write

log = logging.getLogger("sslbench.eval")

# Tap → (VISSL AvgPool2d (kernel, stride) at 224 px input, expected map side, output grid).
TAP_POOLING: dict[str, tuple[tuple[int, int], int, int]] = {
    "res4": ((8, 3), 14, 3),  # 1024×14×14 → 1024×3×3 = 9216 for RN50
    "res5": ((6, 1), 7, 2),  # 2048×7×7 → 2048×2×2 = 8192 for RN50
}
POOLED_TAP = "avgpool"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` / ``"auto"`` → CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def normalize_images(
    x: Tensor, mean: Sequence[float], std: Sequence[float], resize: int, crop: int,
    mode: str = "center_crop",
) -> Tensor:
    """uint8 ``(B, C, H, W)`` → normalised float ``(B, 3, crop, crop)``.

    Args:
        x: uint8 images, C = 1 (replicated to 3 channels) or 3.
        mean: Per-channel mean in [0, 1] units (1 or 3 values).
        std: Per-channel std in [0, 1] units (1 or 3 values).
        resize: Shorter side after resizing (bilinear, antialiased).
        crop: Output side. ``mode="center_crop"`` takes the central ``crop``×``crop``;
            ``"squash"`` resizes the whole image to ``crop``×``crop`` (the VOC07 SVM
            transform, eval-protocols §5.2).
        mode: ``"center_crop"`` or ``"squash"``.

    Returns:
        float32 images on ``x``'s device.
    """
    x = x.float().div_(255.0)
    h, w = x.shape[-2:]
    if mode == "squash":
        if min(h, w) != resize:
            s = resize / min(h, w)
            x = F.interpolate(x, size=(round(h * s), round(w * s)), mode="bilinear",
                              antialias=True, align_corners=False)
        if x.shape[-2:] != (crop, crop):
            x = F.interpolate(x, size=(crop, crop), mode="bilinear", antialias=True,
                              align_corners=False)
    elif mode == "center_crop":
        if min(h, w) != resize:
            s = resize / min(h, w)
            x = F.interpolate(x, size=(round(h * s), round(w * s)), mode="bilinear",
                              antialias=True, align_corners=False)
        h, w = x.shape[-2:]
        top, left = (h - crop) // 2, (w - crop) // 2
        if top < 0 or left < 0:
            raise ValueError(f"crop {crop} is larger than the resized image {h}×{w}")
        x = x[..., top:top + crop, left:left + crop]
    else:
        raise ValueError(f"unknown resize mode '{mode}'; use center_crop or squash")
    if x.shape[1] == 1 and len(mean) == 3:
        x = x.expand(-1, 3, -1, -1)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    x = (x - m) / s
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous()


def pool_tap(name: str, fmap: Tensor) -> Tensor:
    """Pool one stage map ``(B, C, h, w)`` to a flat vector, as in the FAIR benchmark.

    At the reference map size (14 for res4, 7 for res5, i.e. a 224 px ResNet input) this is
    exactly VISSL's ``AvgPool2d``; at other sizes it is adaptive average pooling to the
    same output grid.
    """
    (kernel, stride), ref_side, grid = TAP_POOLING[name]
    if fmap.shape[-1] == ref_side and fmap.shape[-2] == ref_side:
        pooled = F.avg_pool2d(fmap, kernel, stride)
    else:
        # NOTE: VISSL's kernels are defined for 224 px only; at other input sizes
        # (the mini suite's 32 px) we keep the output grid (3×3, 2×2) instead.
        pooled = F.adaptive_avg_pool2d(fmap, grid)
    return pooled.flatten(1)


def check_taps(backbone: nn.Module, taps: Sequence[str]) -> None:
    """Raise ValueError when ``backbone`` cannot produce one of ``taps``."""
    for tap in taps:
        if tap == POOLED_TAP:
            continue
        if tap not in TAP_POOLING:
            raise ValueError(f"unknown tap '{tap}'; valid: {POOLED_TAP}, {', '.join(TAP_POOLING)}")
        if not hasattr(backbone, "forward_taps"):
            raise ValueError(f"tap '{tap}' needs a backbone with forward_taps "
                             f"({type(backbone).__name__} has none); use taps=({POOLED_TAP!r},)")


def forward_taps(backbone: nn.Module, x: Tensor, taps: Sequence[str]) -> dict[str, Tensor]:
    """The requested taps of one normalised batch, each ``(B, F_tap)``."""
    out: dict[str, Tensor] = {}
    stage = [t for t in taps if t != POOLED_TAP]
    if stage:
        maps = backbone.forward_taps(x)
        for tap in stage:
            out[tap] = pool_tap(tap, maps[tap])
        if POOLED_TAP in taps:
            # The contract: forward() = global average of the res5 map, flattened.
            out[POOLED_TAP] = maps["res5"].mean(dim=(2, 3))
    elif POOLED_TAP in taps:
        out[POOLED_TAP] = backbone(x).flatten(1)
    return out


@torch.no_grad()
def extract_batches(
    backbone: nn.Module, batches: Iterable[Tensor], *, mean: Sequence[float],
    std: Sequence[float], resize: int, crop: int, mode: str = "center_crop",
    taps: Sequence[str] = (POOLED_TAP,), device: str | torch.device | None = None,
) -> dict[str, Tensor]:
    """Features of uint8 batches, concatenated per tap (float32, CPU)."""
    dev = resolve_device(device)
    check_taps(backbone, taps)
    was_training = backbone.training
    backbone.eval().to(dev)
    chunks: dict[str, list[Tensor]] = {t: [] for t in taps}
    try:
        for x in batches:
            x = normalize_images(x.to(dev, non_blocking=True), mean, std, resize, crop, mode)
            for tap, h in forward_taps(backbone, x, taps).items():
                chunks[tap].append(h.float().cpu())
    finally:
        backbone.train(was_training)
    return {t: torch.cat(c) if c else torch.empty(0) for t, c in chunks.items()}


def extract_features(
    backbone: nn.Module, images_uint8: Tensor, *, mean: Sequence[float], std: Sequence[float],
    resize: int, crop: int, batch_size: int = 256, device: str | torch.device | None = None,
    mode: str = "center_crop",
) -> Tensor:
    """Pooled features of in-memory images with the backbone in eval mode.

    Args:
        backbone: Any registered backbone (its train/eval mode is restored afterwards).
        images_uint8: ``(N, C, H, W)`` uint8, C = 1 or 3.
        mean: Per-channel mean in [0, 1] units (1 value is broadcast for 1-channel data).
        std: Per-channel std in [0, 1] units.
        resize: Shorter side after resizing (== H for no resize).
        crop: Side of the central crop (or of the squashed image with ``mode="squash"``).
        batch_size: Images per forward pass.
        device: ``None``/``"auto"``: CUDA when available.
        mode: ``"center_crop"`` or ``"squash"``.

    Returns:
        float32 ``(N, num_features)`` on the CPU.
    """
    batches = (images_uint8[i:i + batch_size] for i in range(0, len(images_uint8), batch_size))
    return extract_batches(backbone, batches, mean=mean, std=std, resize=resize, crop=crop,
                           mode=mode, device=device)[POOLED_TAP]


def extract_tap_features(
    backbone: nn.Module, images_uint8: Tensor, *, taps: Sequence[str], mean: Sequence[float],
    std: Sequence[float], resize: int, crop: int, batch_size: int = 256,
    device: str | torch.device | None = None, mode: str = "center_crop",
) -> dict[str, Tensor]:
    """Like :func:`extract_features` but for several taps; returns ``{tap: (N, F_tap)}``."""
    batches = (images_uint8[i:i + batch_size] for i in range(0, len(images_uint8), batch_size))
    return extract_batches(backbone, batches, mean=mean, std=std, resize=resize, crop=crop,
                           mode=mode, taps=taps, device=device)


# ----------------------------------------------------------------------------- cache


def cache_key(fields: dict[str, Any]) -> str:
    """Stable SHA-1 of the JSON of ``fields`` (sorted keys)."""
    return hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


class FeatureCache:
    """Features on disk: one ``<key>.pt`` tensor + ``<key>.json`` manifest per entry.

    The key covers (checkpoint SHA-256, dataset, dataset fingerprint, split, transform,
    normalisation, tap), so kNN, the linear probes and the SVMs share one extraction.

    Args:
        root: Cache folder; ``None``/``""`` disables caching (lookups miss, stores no-op).
    """

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root).expanduser() if root else None

    def _paths(self, fields: dict[str, Any]) -> tuple[Path, Path]:
        assert self.root is not None
        key = cache_key(fields)
        return self.root / f"{key}.pt", self.root / f"{key}.json"

    def lookup(self, fields: dict[str, Any]) -> Tensor | None:
        """The stored tensor for ``fields``, or None."""
        if self.root is None:
            return None
        data_path, manifest_path = self._paths(fields)
        if not (data_path.is_file() and manifest_path.is_file()):
            return None
        try:
            return torch.load(data_path, map_location="cpu", weights_only=True)
        except (RuntimeError, OSError, EOFError) as e:  # a damaged entry is recomputed
            log.warning("feature cache entry %s unreadable (%s); recomputing", data_path, e)
            return None

    def store(self, fields: dict[str, Any], tensor: Tensor) -> None:
        """Write ``tensor`` and its manifest atomically (the manifest last)."""
        if self.root is None:
            return
        data_path, manifest_path = self._paths(fields)
        atomic_write(data_path, lambda f: torch.save(tensor.contiguous(), f))
        manifest = {"key": data_path.stem, "fields": fields, "shape": list(tensor.shape),
                    "dtype": str(tensor.dtype), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write(manifest_path,
                      lambda f: f.write(json.dumps(manifest, indent=1, default=str).encode()))

    def get_or_compute(self, fields: dict[str, Any], compute: Callable[[], Tensor]) -> Tensor:
        """Load the entry for ``fields`` or compute, store and return it."""
        cached = self.lookup(fields)
        if cached is not None:
            return cached
        tensor = compute()
        self.store(fields, tensor)
        return tensor


# ----------------------------------------------------------------------------- image files


def extract_files(
    backbone: nn.Module, paths: Sequence[str], transform: Any, *, mean: Sequence[float],
    std: Sequence[float], taps: Sequence[str] = (POOLED_TAP,), batch_size: int = 256,
    num_workers: int = 0, device: str | torch.device | None = None, name: str = "",
) -> dict[str, Tensor]:
    """Features of image files; corrupt files are dropped and counted.

    Args:
        backbone: Frozen backbone (run in eval mode).
        paths: Image files.
        transform: An ``eval.images.EvalTransform`` (PIL → uint8 ``(3, crop, crop)``).
        mean: Normalisation mean in [0, 1] units.
        std: Normalisation std.
        taps: Feature taps.
        batch_size: Images per batch.
        num_workers: DataLoader decoding processes.
        device: ``None``/``"auto"``: CUDA when available.
        name: For the corrupt-file warning.

    Returns:
        ``{tap: (M, F_tap)}`` plus ``"index"``: the ``(M,)`` positions in ``paths`` that
        decoded (M ≤ N).
    """
    from eval.images import iterate_images, warn_corrupt

    kept: list[Tensor] = []

    def batches() -> Iterable[Tensor]:
        for x, idx, ok in iterate_images(paths, transform, transform.crop, batch_size=batch_size,
                                         num_workers=num_workers):
            kept.append(idx[ok])
            if ok.any():
                yield x[ok]

    feats = extract_batches(backbone, batches(), mean=mean, std=std, resize=transform.crop,
                            crop=transform.crop, taps=taps, device=device)
    index = torch.cat(kept) if kept else torch.zeros(0, dtype=torch.long)
    warn_corrupt(name or "images", len(paths) - len(index), len(paths))
    feats["index"] = index
    return feats
