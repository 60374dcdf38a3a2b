"""Trainer throughput on a JPEG folder against the same images held in memory, in one run.

Both sides are the real trainer (``trainer.loop.build_run`` + ``train_step``), the same
model, method, batch and crop, on the same images:

- **files**: ``data.name=image_folder`` over photograph-like JPEGs written here
  (``dataroom.synthetic``; ``--size`` H×W, quality 90): the data room's loader decodes each
  image once in ``--workers`` processes and cuts both views' crop+flip to uint8; the colour
  augmentation runs batched on the device (``MultiViewAugment.colour``);
- **memory**: the same JPEGs decoded once into a uint8 tensor before timing; each step
  slices its rows and crops, flips and colours on the device (``MultiViewAugment``), the
  in-memory path of CIFAR/STL-10/Fashion-MNIST.

The ratio ``files / memory`` says whether the loader is the bottleneck: near 1, the
model step is; well below 1, the loader is. After ``--warmup`` untimed steps of each side,
the sides alternate in ``--rounds`` blocks of ``--steps`` steps (memory, files, memory,
files, …: drift of a shared machine's load hits both); images/s of a block = batch × steps
/ seconds, reported as the median over rounds, with every block's rate. While a memory
block runs, the loader's workers prefetch at most ``2 × workers`` batches, then wait.
The result (JSON) goes to ``--out`` (default ``benchmarks/results/train-files-vs-memory-
<device>-<date>.json``). Never a timed test: a script run by hand.

    .venv/bin/python benchmarks/train_files_vs_memory.py                       # CPU defaults
    .venv/bin/python benchmarks/train_files_vs_memory.py --backbone resnet50 --crop 224 \\
        --batch 128 --images 2048 --steps 30 --device cuda --workers 15          # a GPU node
"""
# ruff: noqa: E402

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/train_files_vs_memory.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from dataroom import image_folder, load_rgb
from dataroom.synthetic import write_tree
from trainer.config import load_config
from trainer.datasets import ImageSet
from trainer.dist import init_distributed
from trainer.loop import build_run, open_stream, train_step

SCHEMA = "sslbench.train_files_vs_memory/1"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=256, help="JPEGs written (and held)")
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--size", default="375x500", help="H×W of every JPEG")
    p.add_argument("--method", default="vicreg")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--projector", default="512-512", help="method.projector (small on CPU)")
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=6, help="timed steps per block")
    p.add_argument("--rounds", type=int, default=3, help="timed blocks per side")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--workers", type=int, default=-1, help="loader processes (-1: cores − 1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto")
    p.add_argument("--folder", default="", help="reuse/write the JPEGs here (default: a "
                                                "temporary folder)")
    p.add_argument("--note", default="")
    p.add_argument("--out", default="")
    return p.parse_args(argv)


def write_images(root: Path, n: int, classes: int, size: tuple[int, int]) -> None:
    if (root / "train").is_dir():
        return
    per = n // classes
    write_tree(root, {f"train/c{k:02d}": per for k in range(classes)}, size=size, seed=0)


def held(root: Path) -> ImageSet:
    """The same JPEGs, decoded once, as the in-memory path holds images."""
    files = image_folder(root, "train")
    images = np.stack([np.asarray(load_rgb(files.paths[i])) for i in range(len(files))])
    return ImageSet(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),
                    torch.from_numpy(files.labels), list(files.classes),
                    (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def timed(step: Any, first: int, steps: int, device: str) -> float:
    """Seconds of steps ``first..first + steps - 1``, synchronised."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for i in range(first, first + steps):
        step(i)
    sync()
    return time.perf_counter() - t0


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    h, w = (int(x) for x in a.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.folder) if a.folder else Path(tmp) / "jpegs"
        write_images(root, a.images, a.classes, (h, w))
        total = a.warmup + a.rounds * a.steps
        cfg = load_config(overrides=[
            "data.name=image_folder", f"data.root={root}", f"data.num_workers={a.workers}",
            f"method.name={a.method}", f"method.projector={a.projector}",
            f"backbone.name={a.backbone}", f"aug.crop_size={a.crop}",
            f"train.batch_size={a.batch}", f"train.device={a.device}",
            f"train.precision={a.precision}", "optim.schedule=constant",
            "train.progress=false", "train.tensorboard=false", "data.val_samples=1",
            f"run_dir={Path(tmp) / 'run'}"])
        run = build_run(cfg, init_distributed(a.device), Path(tmp) / "run")
        memory_run = dataclasses.replace(run, train_set=held(root), bad_images=None)
        loader = open_stream(run, 0, total)
        workers = getattr(loader, "num_workers", None)
        batches = iter(loader)
        sides = {"memory": lambda i: train_step(memory_run, i, total),
                 "files": lambda i: train_step(run, i, total, next(batches))}
        rates: dict[str, list[float]] = {k: [] for k in sides}
        for step in sides.values():
            timed(step, 0, a.warmup, a.device)
        for r in range(a.rounds):
            for name, step in sides.items():
                seconds = timed(step, a.warmup + r * a.steps, a.steps, a.device)
                rates[name].append(round(a.batch * a.steps / seconds, 2))
        batches = loader = None  # the loader's workers end here
    mem_ips, file_ips = statistics.median(rates["memory"]), statistics.median(rates["files"])
    result = {
        "schema": SCHEMA,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(),
                    "torch_threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name() if a.device.startswith("cuda") else None},
        "settings": {k: v for k, v in vars(a).items() if k not in ("out", "folder")},
        "loader_workers": workers,
        "rounds_img_per_s": rates,
        "memory_img_per_s": round(mem_ips, 2),
        "files_img_per_s": round(file_ips, 2),
        "files_over_memory": round(file_ips / mem_ips, 3),
    }
    out = Path(a.out) if a.out else Path(__file__).parent / "results" / (
        f"train-files-vs-memory-{a.device.split(':')[0]}-{result['date'][:10]}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
