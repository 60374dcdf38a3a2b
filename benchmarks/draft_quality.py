"""Reduced (DCT-scaled) JPEG decoding vs full decoding: pixel difference and speed.

``dataroom.decode.cut_views`` lets libjpeg-turbo decode at 1/2, 1/4 or 1/8 scale when
every view's crop stays at least the output size on the reduced grid. This measures, on
photograph-sized JPEGs (cut from Debian's mate-backgrounds photographs, or generated), for
VICReg's crop geometry: the absolute difference in uint8 levels between the views of a
reduced and of a full decode (same boxes), by how much room the crop had left
(``min(h, w) / scale / S``), and images/s with and without reduction (one thread).
"""
# ruff: noqa: E402

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/draft_quality.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from benchmarks.loader_speed import PHOTO_DIR, machine, make_images
from dataroom.decode import cut_views, draft_scale, open_image
from dataroom.geometry import view_geometry

SCHEMA = "sslbench.draft_quality/1"
BUCKETS = ((1.0, 1.25), (1.25, 1.5), (1.5, 2.0), (2.0, float("inf")))


def measure(files: list[Path], crop: int = 224, views_per_image: int = 64,
            seed: int = 0) -> dict[str, Any]:
    """Differences and speeds over ``files`` (two views per image for the speed)."""
    rows, timing = [], {"draft": 0.0, "full": 0.0}
    for k, path in enumerate(files):
        data = path.read_bytes()
        width, height = open_image(data).size
        n = views_per_image
        boxes, flips = view_geometry(seed, 0, np.arange(n), k, [height] * n, [width] * n,
                                     (0.08, 1.0), (3 / 4, 4 / 3), 0.5)
        for i in range(n):
            scale = draft_scale(boxes[i:i + 1], [crop])
            if scale == 1:
                continue
            a, b = (np.empty((3, crop, crop), np.uint8) for _ in range(2))
            cut_views(open_image(data), boxes[i:i + 1], flips[i:i + 1], [crop], ["bicubic"], [a])
            cut_views(open_image(data), boxes[i:i + 1], flips[i:i + 1], [crop], ["bicubic"], [b],
                      draft=False)
            d = np.abs(a.astype(np.int16) - b.astype(np.int16))
            room = min(boxes[i, 2], boxes[i, 3]) / scale / crop
            rows.append((scale, room, d))
        outs = [np.empty((3, crop, crop), np.uint8) for _ in range(2)]
        for mode in ("draft", "full"):
            start = time.process_time()
            for i in range(0, n - 1, 2):
                cut_views(open_image(data), boxes[i:i + 2], flips[i:i + 2], [crop] * 2,
                          ["bicubic"] * 2, outs, draft=mode == "draft")
            timing[mode] += time.process_time() - start
    images = len(files) * (views_per_image // 2)

    def summary(ds: list[np.ndarray]) -> dict[str, Any]:
        if not ds:
            return {"views": 0}
        d = np.concatenate([x.ravel() for x in ds])
        return {"views": len(ds), "mean": float(d.mean()), "p99": float(np.percentile(d, 99)),
                "max": int(d.max())}

    return {
        "all": summary([d for _, _, d in rows]),
        "by_scale": {str(s): summary([d for sc, _, d in rows if sc == s]) for s in (2, 4, 8)},
        "by_room": {f"{lo}-{hi}": summary([d for _, r, d in rows if lo <= r < hi])
                    for lo, hi in BUCKETS},
        "views_checked": len(files) * views_per_image,
        "images_per_s_cpu": {m: images / t for m, t in timing.items() if t > 0},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line: cut the images, measure, print and write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=12)
    p.add_argument("--height", type=int, default=1125)
    p.add_argument("--width", type=int, default=1500)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--views", type=int, default=64, help="crops drawn per image")
    p.add_argument("--photos", default=str(PHOTO_DIR), help="'none' = generated images")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--out", default="")
    a = p.parse_args(argv)
    if a.tiny:
        a.images, a.height, a.width, a.crop, a.views = 2, 150, 200, 32, 16
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="draft-quality-") as tmp:
            photos = None if a.photos == "none" else Path(a.photos)
            images = make_images(Path(tmp), a.images, (a.height, a.width), 90, photos)
            result = measure(sorted(Path(tmp).rglob("*.JPEG")), a.crop, a.views)
    finally:
        torch.set_num_threads(threads)
    report = {"schema": SCHEMA, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": machine(), "images": images, "crop": a.crop, **result}
    print(json.dumps({k: report[k] for k in ("images", "all", "by_scale", "by_room",
                                             "images_per_s_cpu")}, indent=1))
    out = Path(a.out) if a.out else (Path(__file__).resolve().parent / "results"
                                     / f"draft-quality-{report['date'][:10]}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
