"""Pretraining loader speed: images/s per CPU core delivering two 224-px views from JPEGs.

Ours (``dataroom.PretrainLoader``: one decode per image, each view's crop+flip cut to
uint8) against, on the same files, with the same worker count, in one run:

- **official**: the official VICReg pipeline — ``torchvision.datasets.ImageFolder`` (PIL
  loader) + torchvision v1 transforms per image, two views as VICReg's ``augmentations.py``
  (written here from its documented parameters: RandomResizedCrop 224 bicubic, flip,
  ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8, grayscale p 0.2, PIL Gaussian blur p 1.0 / 0.1,
  solarize p 0 / 0.2, ToTensor, Normalize);
- **lightly**: the same ImageFolder with ``lightly.transforms.VICRegTransform(224)``;
- anchors: PIL decode alone; decode + two torchvision RandomResizedCrops to uint8.

Ours leaves colour jitter, grayscale, blur and solarize to the batched device-side
augmentation (``trainer.augment.MultiViewAugment.colour``); its CPU cost is measured
separately, per image, and combined into an end-to-end per-core figure.

Every pipeline runs ``rounds`` epochs over the images, interleaved (round r of every
pipeline before round r + 1 of any; with workers, one pipeline after the other, so that
no pipeline's prefetching workers steal another's CPU), after one untimed warm-up epoch,
each pipeline one long-lived loader (persistent workers); the rate is the median over
rounds. With ``--workers 0`` (the default) everything runs in this process on
one thread: images/s is then images/s per core. See benchmarks/README.md.
"""
# ruff: noqa: E402

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/loader_speed.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from dataroom import PretrainLoader, ViewSpec, imagenet
from dataroom.synthetic import natural_image
from trainer.augment import RECIPES, MultiViewAugment

SCHEMA = "sslbench.loader_speed/1"
TARGETS = {"ours_per_core": 200.0, "ours_over_official": 3.5}  # issue #11 item 7
PHOTO_DIR = Path("/usr/share/backgrounds/mate/nature")  # Debian mate-backgrounds
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------- images


def make_images(out: Path, count: int, size: tuple[int, int], quality: int,
                photos: Path | None = PHOTO_DIR, seed: int = 0) -> dict[str, Any]:
    """Write ``count`` JPEGs of ``size`` (h, w) as an ImageFolder ``out/train/c<k>/``.

    From the photographs in ``photos`` when there are any (each scaled to a random width
    between 1 and 2.5 times the tile's, then a tile cut at a random place: whole scenes,
    as ImageNet's), else photograph-like generated images.
    """
    rng = np.random.default_rng(seed)
    sources = sorted(photos.glob("*.jpg")) if photos is not None and photos.is_dir() else []
    loaded = [Image.open(p).convert("RGB") for p in sources]
    height, width = size
    total = 0
    for k in range(count):
        if loaded:
            photo = loaded[k % len(loaded)]
            new_w = int(width * rng.uniform(1.0, 2.5))
            new_h = max(height, round(photo.height * new_w / photo.width))
            scaled = photo.resize((new_w, new_h), Image.Resampling.LANCZOS)
            top = int(rng.integers(0, new_h - height + 1))
            left = int(rng.integers(0, new_w - width + 1))
            tile = scaled.crop((left, top, left + width, top + height))
        else:
            tile = Image.fromarray(natural_image(height, width, seed + k))
        if rng.random() < 0.5:  # portrait and landscape, as in ImageNet
            tile = tile.transpose(Image.Transpose.ROTATE_90)
        buf = io.BytesIO()
        tile.save(buf, "JPEG", quality=quality)
        path = out / "train" / f"c{k % 4}" / f"img_{k:04d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.getvalue())
        total += len(buf.getvalue())
    return {"source": f"photographs cut from {photos} (Debian mate-backgrounds)" if loaded
            else "generated photograph-like images (dataroom.synthetic)",
            "count": count, "size_hw": list(size), "quality": quality,
            "mean_bytes": round(total / count)}


# ----------------------------------------------------------------------------- peers


class _Blur:
    """VICReg's GaussianBlur: with probability p, PIL blur of radius σ ~ U(0.1, 2.0)."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        if np.random.rand() < self.p:
            return img.filter(ImageFilter.GaussianBlur(radius=np.random.rand() * 1.9 + 0.1))
        return img


class _Solarize:
    """VICReg's Solarization: with probability p, ``ImageOps.solarize`` (threshold 128)."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img) if np.random.rand() < self.p else img


class OfficialVICRegTransform:
    """Two views as the official VICReg ``augmentations.TrainTransform`` (224 px)."""

    def __init__(self, size: int = 224) -> None:
        def view(blur_p: float, solarize_p: float) -> T.Compose:
            return T.Compose([
                T.RandomResizedCrop(size, interpolation=T.InterpolationMode.BICUBIC),
                T.RandomHorizontalFlip(p=0.5),
                T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                T.RandomGrayscale(p=0.2), _Blur(blur_p), _Solarize(solarize_p),
                T.ToTensor(), T.Normalize(MEAN, STD),
            ])

        self.transform, self.transform_prime = view(1.0, 0.0), view(0.1, 0.2)

    def __call__(self, img: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(img), self.transform_prime(img)


class _DecodeOnly:
    def __call__(self, img: Image.Image) -> torch.Tensor:
        return torch.zeros(1)  # ImageFolder's loader already decoded it


class _TwoCropsUint8:
    """Anchor: decode + two torchvision RandomResizedCrops (bicubic) to uint8 tensors."""

    def __init__(self, size: int) -> None:
        self.rrc = T.RandomResizedCrop(size, interpolation=T.InterpolationMode.BICUBIC)

    def __call__(self, img: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        return TF.pil_to_tensor(self.rrc(img)), TF.pil_to_tensor(self.rrc(img))


# ----------------------------------------------------------------------------- timing


# Each pipeline is one long-lived loader (persistent workers), iterated an epoch per round.


def _folder_epoch(root: Path, transform: Callable, batch: int, workers: int,
                  seed: int) -> Callable[[int], Iterable]:
    dataset = datasets.ImageFolder(str(root / "train"), transform=transform)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(seed), drop_last=True,
                        persistent_workers=workers > 0)
    return lambda r: loader


def _ours_epoch(root: Path, size: int, batch: int, workers: int, seed: int, rounds: int,
                decode: str = "cpu", device: str = "cpu") -> Callable[[int], Iterable]:
    files = imagenet(root, "train", cache="off")
    views = [ViewSpec(size), ViewSpec(size)]  # VICReg's two crops: RRC (0.08, 1) bicubic
    spe = len(files) // batch
    loader = PretrainLoader(files, views, seed=seed, global_batch=batch,
                            stop_step=(rounds + 1) * spe, num_workers=workers, decode=decode,
                            device=device)
    batches = iter(loader)
    return lambda r: itertools.islice(batches, spe)


def _run_epoch(make: Callable[[int], Iterable], r: int) -> tuple[int, float, float]:
    """(images, wall s, process CPU s) of one epoch."""
    wall, cpu = time.perf_counter(), time.process_time()
    images = 0
    for item in make(r):
        first = item.views[0] if hasattr(item, "views") else item[0]
        first = first[0] if isinstance(first, (list, tuple)) else first
        images += len(first)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return images, time.perf_counter() - wall, time.process_time() - cpu


def _augment_cost(size: int, batch: int, rounds: int, seed: int) -> dict[str, Any]:
    """Per-image CPU cost of ``MultiViewAugment.colour`` on two uint8 views (VICReg)."""
    aug = MultiViewAugment(RECIPES.build("vicreg", size), MEAN, STD)
    g = torch.Generator().manual_seed(seed)
    views = [torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8)
             .contiguous(memory_format=torch.channels_last) for _ in range(2)]
    aug.colour(views, seed=0)
    times = []
    for r in range(rounds):
        t = time.perf_counter()
        aug.colour(views, seed=r + 1)
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    return {"images_per_s": batch / median, "round_s": times, "batch": batch}


def run_benchmark(root: Path, *, size: int = 224, batch: int = 32, workers: int = 0,
                  rounds: int = 5, seed: int = 0, pipelines: tuple[str, ...] | None = None,
                  augment: bool = True, device: str = "") -> dict[str, Any]:
    """Time every pipeline over the ImageFolder at ``root``; returns the report.

    ``device``: also time ours with ``decode="gpu"`` on that device (``"cuda"``; ``"cpu"``
    runs the device path's code on libjpeg-turbo, which says nothing about GPU speed).
    """
    makers = {
        "ours": _ours_epoch(root, size, batch, workers, seed, rounds),
        "official_vicreg": _folder_epoch(root, OfficialVICRegTransform(size), batch, workers,
                                         seed),
        "pil_decode_only": _folder_epoch(root, _DecodeOnly(), batch, workers, seed),
        "pil_decode_two_rrc_uint8": _folder_epoch(root, _TwoCropsUint8(size), batch, workers,
                                                  seed),
    }
    try:
        from lightly.transforms import VICRegTransform

        makers["lightly_vicreg"] = _folder_epoch(root, VICRegTransform(input_size=size), batch,
                                                 workers, seed)
    except ImportError:  # the bench extra is not installed
        pass
    if device:
        makers["ours_device_decode"] = _ours_epoch(root, size, batch, workers, seed, rounds,
                                                   "gpu", device)
    if pipelines:
        makers = {k: v for k, v in makers.items() if k in pipelines}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows: dict[str, list[tuple[int, float, float]]] = {k: [] for k in makers}
        if workers == 0:  # interleaved: round r of every pipeline before round r + 1
            for make in makers.values():
                _run_epoch(make, 0)  # warm-up: page cache, lazy imports
            for r in range(1, rounds + 1):
                for name, make in makers.items():
                    rows[name].append(_run_epoch(make, r))
        else:  # one pipeline at a time: idle workers' prefetch must not steal another's CPU
            for name, make in makers.items():
                _run_epoch(make, 0)  # warm-up: worker start
                rows[name] = [_run_epoch(make, r) for r in range(1, rounds + 1)]
        aug = _augment_cost(size, batch, rounds, seed) if augment else None
    finally:
        torch.set_num_threads(threads)
    results = {}
    for name, runs in rows.items():
        rates = [n / w for n, w, _ in runs]
        results[name] = {"images_per_s": statistics.median(rates),
                         "images_per_s_per_core": statistics.median(rates) / max(1, workers),
                         "cpu_images_per_s": statistics.median([n / c for n, _, c in runs])
                         if workers == 0 else None,
                         "round_images_per_s": rates, "images_per_round": runs[0][0]}
    report: dict[str, Any] = {"results": results, "augment_colour": aug}
    ours = results.get("ours", {}).get("images_per_s_per_core")
    ratios = {}
    for peer in ("official_vicreg", "lightly_vicreg", "pil_decode_two_rrc_uint8"):
        if ours and peer in results:
            ratios[f"ours/{peer}"] = ours / results[peer]["images_per_s_per_core"]
    report["ratios"] = ratios
    if ours and aug:
        # one core doing both: the loader's time plus the colour ops' time per image
        report["ours_with_colour_on_same_core"] = 1 / (1 / ours + 1 / aug["images_per_s"])
    report["targets"] = {
        **TARGETS,
        "met_per_core": bool(ours and ours >= TARGETS["ours_per_core"]),
        "met_ratio": bool(ratios.get("ours/official_vicreg", 0) >= TARGETS["ours_over_official"]),
    }
    return report


def machine() -> dict[str, Any]:
    """CPU model, core count, load, versions."""
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import PIL
    import torchvision

    return {"cpu": model, "nproc": os.cpu_count(), "load_avg": list(os.getloadavg()),
            "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "pillow": PIL.__version__}


def format_table(report: dict[str, Any]) -> str:
    """Markdown table of the report."""
    s = report["settings"]
    lines = [f"Loader speed, {report['date']}, {report['machine']['cpu']} "
             f"({report['machine']['nproc']} cores), workers={s['workers']}, "
             f"{report['images']['count']} JPEGs {report['images']['size_hw']}, "
             f"{s['crop']} px × 2 views", "",
             "| pipeline | images/s | per core | per CPU-second | ours ÷ this |",
             "|---|---:|---:|---:|---:|"]
    ours = report["results"].get("ours", {}).get("images_per_s_per_core")
    for name, row in report["results"].items():
        ratio = f"{ours / row['images_per_s_per_core']:.2f}" if ours else "—"
        cpu = f"{row['cpu_images_per_s']:.1f}" if row.get("cpu_images_per_s") else "—"
        lines.append(f"| {name} | {row['images_per_s']:.1f} | "
                     f"{row['images_per_s_per_core']:.1f} | {cpu} | {ratio} |")
    if report.get("augment_colour"):
        lines.append(f"\nMultiViewAugment.colour on CPU (1 thread): "
                     f"{report['augment_colour']['images_per_s']:.1f} images/s (2 views); "
                     f"ours + colour on one core: "
                     f"{report.get('ours_with_colour_on_same_core', float('nan')):.1f} images/s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line: build the images, run, print the table, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--height", type=int, default=375)
    p.add_argument("--width", type=int, default=500)
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--photos", default=str(PHOTO_DIR), help="folder of *.jpg photographs; "
                   "'none' = generated images")
    p.add_argument("--pipelines", default="", help="comma-separated subset")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "",
                   help="also time decode='gpu' on this device (default: cuda if present)")
    p.add_argument("--tiny", action="store_true", help="8 small images, 1 round (tests)")
    p.add_argument("--note", default="")
    p.add_argument("--out", default="", help="JSON path (default benchmarks/results/...)")
    a = p.parse_args(argv)
    if a.tiny:
        a.images, a.height, a.width, a.crop, a.batch, a.rounds = 8, 36, 48, 32, 4, 1
    with tempfile.TemporaryDirectory(prefix="loader-speed-") as tmp:
        photos = None if a.photos == "none" else Path(a.photos)
        images = make_images(Path(tmp), a.images, (a.height, a.width), a.quality, photos)
        report = run_benchmark(Path(tmp), size=a.crop, batch=a.batch, workers=a.workers,
                               rounds=a.rounds, device=a.device,
                               pipelines=tuple(x for x in a.pipelines.split(",") if x) or None)
    report = {"schema": SCHEMA, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": machine(), "images": images,
              "settings": {"crop": a.crop, "batch": a.batch, "workers": a.workers,
                           "rounds": a.rounds, "tiny": a.tiny, "device": a.device},
              "note": a.note, **report}
    print(format_table(report))
    out = Path(a.out) if a.out else (Path(__file__).resolve().parent / "results"
                                     / f"loader-{os.cpu_count()}core-{report['date'][:10]}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
