"""Streaming from tar shards vs. reading loose JPEG files: images/s per CPU core.

The same JPEGs (written as an ImageFolder by ``loader_speed.make_images``, then converted
with ``dataroom.shards``, bytes copied) are read by:

- **files**: ``dataroom.PretrainLoader`` over the folder (one ``open`` + ``read`` per
  image, random order over the whole set), its files indexed in the shards' order so that
  each image gets the same crops as in the shard pipelines;
- **shards**: ``dataroom.stream.ShardLoader`` over the shards (sequential reads of a few
  tars, shuffle buffer);
- **shards_pipe**: the same through ``pipe:cat <shard>`` (a subprocess per shard, bytes
  through a pipe: the path an object-store command takes);
- read-only anchors, no decoding: **files_read** (read every file's bytes, in a random
  order) and **shards_read** (parse every shard and keep every sample's bytes).

The loaders deliver two 224-px uint8 views per image (VICReg's RandomResizedCrop 224,
scale (0.08, 1), bicubic, flip), everything in this process on one torch thread
(``num_workers=0``). CPU time is this process's plus its reaped children's (``cat``)
user + system time, from ``getrusage``; "per CPU-second" = images / CPU seconds, the
per-core rate on a machine whose cores are shared. Each pipeline is one long-lived loader;
one untimed warm-up epoch (page cache, imports), then ``rounds`` epochs, interleaved
(round r of every pipeline before round r + 1 of any); medians reported.

All files sit in the page cache after the warm-up: this measures the CPU cost of each
path, not a cold network filesystem (where one large sequential read per ~1 GB shard,
instead of one open + read per ~110 KB file, is the point of shards).
"""
# ruff: noqa: E402

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/shard_speed.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from benchmarks.loader_speed import PHOTO_DIR, machine, make_images
from dataroom import PretrainLoader, ViewSpec, image_folder
from dataroom.shards import iter_samples, load_manifest, open_source, write_shards
from dataroom.stream import ShardLoader

SCHEMA = "sslbench.shard_speed/1"


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _epochs(loader: Any, rounds: int) -> Callable[[int], Iterable]:
    batches = iter(loader)
    return lambda r: itertools.islice(batches, loader.steps_per_epoch)


def _files_read(paths: list[str], seed: int) -> Callable[[int], Iterable]:
    def epoch(r: int) -> Iterable:
        order = list(range(len(paths)))
        random.Random(seed + r).shuffle(order)
        for i in order:
            with open(paths[i], "rb") as f:
                yield f.read()
    return epoch


def _shards_read(root: Path) -> Callable[[int], Iterable]:
    m = load_manifest(root)

    def epoch(r: int) -> Iterable:
        for s in m.shards:
            with open(m.folder / s.name, "rb") as f:
                for sample in iter_samples(f, s.name):
                    yield sample.data
    return epoch


def _count(item: Any) -> int:
    return len(item.views[0]) if hasattr(item, "views") else 1


def _run(make: Callable[[int], Iterable], r: int) -> tuple[int, float, float]:
    wall, cpu = time.perf_counter(), _cpu()
    images = sum(_count(item) for item in make(r))
    return images, time.perf_counter() - wall, _cpu() - cpu


def run_benchmark(folder: Path, shards: Path, *, size: int = 224, batch: int = 32,
                  rounds: int = 5, seed: int = 0, shuffle_buffer: int = 256,
                  write_seed: int = 0) -> dict[str, Any]:
    views = [ViewSpec(crop_size=size)] * 2
    # The folder's files in the shards' order (the writer's permutation): image p of both
    # sets is the same file, so every image gets the same crops in both pipelines (the crop
    # is a function of (seed, epoch, index, view)) and only the reading differs.
    files = image_folder(folder, "train")
    files = files.subset(np.random.default_rng(write_seed).permutation(len(files)), "train")
    n_steps = len(files) // batch
    common = dict(seed=seed, global_batch=batch, stop_step=(rounds + 1) * n_steps,
                  num_workers=0)
    makers = {
        "files": _epochs(PretrainLoader(files, views, **common), rounds),
        "shards": _epochs(ShardLoader(shards, views, shuffle_buffer=shuffle_buffer,
                                      **common), rounds),
        "shards_pipe": _epochs(ShardLoader(shards, views, shuffle_buffer=shuffle_buffer,
                                           url=f"pipe:cat {shards}/{{name}}", **common),
                               rounds),
        "files_read": _files_read([str(p) for p in files.paths], seed),
        "shards_read": _shards_read(shards),
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows: dict[str, list[tuple[int, float, float]]] = {k: [] for k in makers}
        for make in makers.values():
            _run(make, 0)
        for r in range(1, rounds + 1):
            for name, make in makers.items():
                rows[name].append(_run(make, r))
    finally:
        torch.set_num_threads(threads)
    results = {}
    for name, runs in rows.items():
        results[name] = {
            "images_per_s": statistics.median(n / w for n, w, _ in runs),
            "images_per_cpu_s": statistics.median(n / max(c, 1e-9) for n, _, c in runs),
            "round_wall_s": [w for _, w, _ in runs], "round_cpu_s": [c for _, _, c in runs],
            "images_per_round": runs[0][0]}
    ratio = results["shards"]["images_per_cpu_s"] / results["files"]["images_per_cpu_s"]
    return {"results": results, "ratios": {"shards/files per CPU-second": ratio}}


def format_table(report: dict[str, Any]) -> str:
    lines = [f"Shard vs file loading, {report['date']}, {report['machine']['cpu']} "
             f"({report['machine']['nproc']} cores), {report['images']['count']} JPEGs, "
             f"{report['settings']['shards']} shards, one thread", "",
             "| pipeline | images/s (wall) | images per CPU-second |", "|---|---:|---:|"]
    for name, row in report["results"].items():
        lines.append(f"| {name} | {row['images_per_s']:.1f} | {row['images_per_cpu_s']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--height", type=int, default=375)
    p.add_argument("--width", type=int, default=500)
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--photos", default=str(PHOTO_DIR), help="'none' = generated images")
    p.add_argument("--shard-size", type=int, default=4_000_000, help="bytes per shard")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="results JSON (default benchmarks/results/...)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="shard_speed_") as tmp:
        folder, shards = Path(tmp) / "folder", Path(tmp) / "shards"
        photos = None if args.photos == "none" else Path(args.photos)
        images = make_images(folder, args.images, (args.height, args.width), args.quality,
                             photos, args.seed)
        manifest = write_shards(open_source(str(folder)), shards, args.shard_size)
        report = run_benchmark(folder, shards, batch=args.batch, rounds=args.rounds,
                               seed=args.seed)
    report = {"schema": SCHEMA, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": {**machine(), "shared": "yes: other engineers' jobs ran on the "
                          "same cores (see load_avg)"},
              "images": images,
              "settings": {"batch": args.batch, "rounds": args.rounds, "crop": 224,
                           "views": 2, "workers": 0, "torch_threads": 1,
                           "shards": len(manifest.shards),
                           "shard_bytes": [s.bytes for s in manifest.shards],
                           "shuffle_buffer": 256},
              **report}
    out = Path(args.out) if args.out else (
        Path(__file__).resolve().parent / "results"
        / f"shards-{os.cpu_count()}core-{'photos' if photos else 'synthetic'}-"
          f"{report['date'][:10]}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.tmp")
    tmp_out.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp_out, out)
    print(format_table(report))
    print(f"\nwritten: {out}")
    return report


if __name__ == "__main__":
    main()
