"""The trainer's CPU training step in fp32, bf16, + channels_last, + torch.compile.

    python benchmarks/cpu_precision.py                      # widths 16 and 32, then lightly
    python benchmarks/cpu_precision.py --widths 16 --steps 3 --no-lightly --note "shared"

A step is the trainer's own (``trainer.loop.train_step`` on a ``build_run``, the cpu preset
of ``benchmarks/throughput.py``: VICReg, projector 2048-2048-2048, LARS): two views of B
real Fashion-MNIST images augmented, forward, fp32 loss, backward, optimizer step. Per
variant: images/s over the timed steps (wall clock) and images per CPU-second (the process's
CPU time, all threads: the rate a shared machine cannot distort as much), and for compile
the first step's time (compilation included). Then ours against lightly
(``benchmarks/throughput.py``), both sides at the variant that was fastest for ours here.
The JSON is rewritten after every variant, so a cut run keeps what it measured.
"""
# ruff: noqa: E402

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks import throughput
from trainer.hardware import BF16_FLAGS, CPUINFO, cpu_flags
from trainer.io import atomic_write_text, git_sha

SCHEMA = "sslbench.cpu_precision/1"
# (name, precision, channels_last, compile)
VARIANTS = (("fp32", "fp32", "false", False), ("fp32+cl", "fp32", "true", False),
            ("fp32+compile", "fp32", "false", True), ("bf16", "bf16", "false", False),
            ("bf16+cl", "bf16", "true", False), ("bf16+cl+compile", "bf16", "true", True))


def cpu_model() -> str:
    try:
        for line in CPUINFO.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(note: str) -> dict[str, Any]:
    try:
        flags = sorted(cpu_flags(CPUINFO.read_text()) & set(BF16_FLAGS))
    except OSError:
        flags = []
    return {"cpu_model": cpu_model(), "nproc": os.cpu_count(), "bf16_flags": flags,
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "load_avg_1_5_15": list(os.getloadavg()), "note": note}


def time_variant(width: int, precision: str, channels_last: str, compile_: bool,
                 args: argparse.Namespace, images: Any) -> dict[str, Any]:
    """Warm-up then timed steps of our trainer at one setting: wall and CPU rates."""
    s = throughput.make_settings("cpu", width=width, batch_size=args.batch_size,
                                 precision=precision, channels_last=channels_last,
                                 compile_ours=compile_, num_images=args.num_images,
                                 data_root=args.data_root, backbone=args.backbone,
                                 num_workers=0)
    s = dataclasses.replace(s, steps=args.steps, warmup=args.warmup)
    with tempfile.TemporaryDirectory() as tmp:
        step, _ = throughput.ours_side("vicreg", s, images, Path(tmp))
        t0 = time.perf_counter()
        step(0)
        first_s = time.perf_counter() - t0
        for i in range(1, args.warmup):
            step(i)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for i in range(args.warmup, args.warmup + args.steps):
            step(i)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    n = args.steps * args.batch_size
    return {"images_per_s": n / wall, "images_per_cpu_s": n / cpu, "wall_s": wall,
            "cpu_s": cpu, "first_step_s": first_s, "steps": args.steps,
            "warmup": args.warmup}


def run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    report: dict[str, Any] = {
        "schema": SCHEMA, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_sha": git_sha(),
        "machine": machine(args.note), "settings": {
            "backbone": args.backbone, "widths": args.widths, "batch_size": args.batch_size,
            "steps": args.steps, "warmup": args.warmup, "num_images": args.num_images,
            "method": "vicreg (projector 2048-2048-2048, LARS)", "image_size": 28},
        "results": [], "lightly": None}
    images = throughput.load_images(args.data_root, args.num_images, 28)
    variants = [v for v in VARIANTS if v[0] in args.variants]
    for width in args.widths:
        for name, precision, cl, comp in variants:
            row = {"width": width, "variant": name,
                   **time_variant(width, precision, cl, comp, args, images)}
            report["results"].append(row)
            print(f"width {width} {name}: {row['images_per_s']:.1f} img/s, "
                  f"{row['images_per_cpu_s']:.1f} img/CPU-s "
                  f"(first step {row['first_step_s']:.1f} s)", file=sys.stderr, flush=True)
            atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    if args.lightly and report["results"]:
        best = max(report["results"], key=lambda r: r["images_per_s"])
        _, precision, cl, comp = next(v for v in VARIANTS if v[0] == best["variant"])
        s = throughput.make_settings("cpu", width=best["width"], batch_size=args.batch_size,
                                     precision=precision, channels_last=cl, compile_ours=comp,
                                     compile_lightly=comp, num_images=args.num_images,
                                     data_root=args.data_root, backbone=args.backbone,
                                     steps=args.steps, warmup=args.warmup)
        lrep = throughput.run_benchmark(["vicreg"], s)
        report["lightly"] = {"variant": best["variant"], "width": best["width"],
                             "num_workers": s.num_workers, "result": lrep["results"][0]}
        atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    return report


def format_table(report: dict[str, Any]) -> str:
    m, s = report["machine"], report["settings"]
    lines = [f"CPU training step, {m['cpu_model']}, nproc {m['nproc']}, bf16 flags "
             f"{m['bf16_flags'] or 'none'}, {report['date'][:10]}, {m['note']} (load average "
             f"{m['load_avg_1_5_15'][0]:.1f} at the end). {s['backbone']}, 28 px, batch "
             f"{s['batch_size']}, {s['steps']} timed steps after {s['warmup']}.", "",
             "| width | variant | img/s (wall) | img per CPU-s | first step s |",
             "|--:|---|--:|--:|--:|"]
    for r in report["results"]:
        lines.append(f"| {r['width']} | {r['variant']} | {r['images_per_s']:.1f} | "
                     f"{r['images_per_cpu_s']:.1f} | {r['first_step_s']:.1f} |")
    if report.get("lightly"):
        lt = report["lightly"]["result"]
        lines += ["", f"ours vs lightly at {report['lightly']['variant']} (width "
                      f"{report['lightly']['width']}): ours {lt['ours']['images_per_s']:.1f} "
                      f"img/s, lightly {lt['lightly']['images_per_s']:.1f} img/s, ratio "
                      f"{lt['ratio']:.2f}x"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=int, nargs="+", default=[16, 32])
    p.add_argument("--variants", nargs="+", default=[v[0] for v in VARIANTS],
                   choices=[v[0] for v in VARIANTS])
    p.add_argument("--backbone", default="resnet18_small")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--num-images", type=int, default=1024)
    p.add_argument("--data-root", default="")
    p.add_argument("--no-lightly", dest="lightly", action="store_false")
    p.add_argument("--note", default="", help="e.g. 'shared with 3 other jobs'")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or (Path(__file__).resolve().parent / "results"
                       / f"cpu-precision-{os.cpu_count()}core-{time.strftime('%Y-%m-%d')}.json")
    report = run(args, out)
    print(format_table(report))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
