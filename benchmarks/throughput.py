"""Training-step throughput of our trainer vs. lightly, in one run, on the same images.

A step: 2 views of B images augmented, forward, loss, backward, optimizer step; images/s
counts the B images. Ours: the trainer's ``build_run`` + ``train_step`` (uint8 images in
memory, augmented batched on the device). lightly: the same backbone with lightly's heads,
loss, LARS and transform, applied per sample to PIL images in a ``DataLoader``. Rate: the
median over blocks of ``max(1, num_workers)`` synchronised steps after the warm-up (see
benchmarks/README.md for why, for what each side does, and for the fairness notes).
"""
# ruff: noqa: E402

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/throughput.py` (make bench)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # hence the noqa: E402

import lightly
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from backbones import BACKBONES
from benchmarks.lightly_parts import PILImages, lightly_model, lightly_optimizer, lightly_transform
from trainer.config import load_config
from trainer.datasets import DATASETS, ImageSet, channel_stats
from trainer.dist import init_distributed
from trainer.hardware import cpu_prefers_bf16
from trainer.io import git_sha
from trainer.loop import build_run, train_step
from trainer.optim import peak_lr

SCHEMA = "sslbench.throughput/1"
TARGETS = MappingProxyType({"cpu": 1.0, "gpu": 1.3})  # wanted ours/lightly ratio (issue)
PREFETCH_FACTOR = 2  # torch DataLoader's default


@dataclass(frozen=True)
class MethodSetup:
    """How one method runs on both sides (ours as in ``sweeps/specs/<method>.yaml``)."""

    recipe: str  # our augmentation recipe
    optimizer: str  # lars (ours: trainer.optim.LARS; lightly: lightly.utils.lars.LARS) | sgd
    base_lr: float  # lr = base_lr × batch / 256, both sides
    weight_decay: float
    cpu_heads: tuple[tuple[str, str], ...]  # head widths, cpu preset; gpu = paper defaults


SETUPS = MappingProxyType({
    "vicreg": MethodSetup("vicreg", "lars", 0.2, 1e-6, (("projector", "2048-2048-2048"),)),
    "barlow_twins": MethodSetup("vicreg", "lars", 0.2, 1e-6, (("projector", "2048-2048-2048"),)),
    "simclr": MethodSetup("simclr", "lars", 0.3, 1e-6, (("projector", "512-512-128"),)),
    "byol": MethodSetup("byol", "lars", 0.2, 1.5e-6,
                        (("projector", "1024-256"), ("predictor", "1024-256"))),
    "simsiam": MethodSetup("mocov2", "sgd", 0.05, 1e-4,
                           (("projector", "512-512-512"), ("predictor", "128-512"))),
})  # fmt: skip


@dataclass(frozen=True)
class Settings:
    """One benchmark configuration; the CLI fills it from a preset plus flags."""

    preset: str = "cpu"  # cpu | gpu: head widths and target ratio
    backbone: str = "resnet18_small"
    width: int = 32  # the backbone's ``width`` kwarg; 0 = its default
    image_size: int = 28
    batch_size: int = 64  # per device
    steps: int = 10  # timed steps per side
    warmup: int = 2  # untimed steps per side (lightly: plus its prefetch depth)
    device: str = "cpu"  # cpu | cuda
    precision: str = "auto"  # auto (the trainer's: bf16 on cuda and bf16-unit CPUs) | fp32 | bf16
    channels_last: str = "auto"  # auto (where precision auto is bf16) | true | false
    compile_ours: bool = False  # torch.compile our model (train.compile)
    compile_lightly: bool = False  # torch.compile the lightly model
    num_workers: int = 1  # lightly's DataLoader processes (CLI default: cores - 1, min 1)
    num_images: int = 512  # distinct images in the pool both sides draw from
    data_root: str = ""  # Fashion-MNIST folder; "" = the trainer's search path
    note: str = ""  # free text kept in the report, e.g. "noisy shared machine"


PRESETS = MappingProxyType({
    "cpu": Settings(),
    "gpu": Settings(preset="gpu", backbone="resnet50", width=0, image_size=224,
                    batch_size=128, steps=90, warmup=10, device="cuda", num_images=1024),
})  # fmt: skip


def load_images(data_root: str, num_images: int, size: int) -> ImageSet:
    """The first ``num_images`` Fashion-MNIST train images as uint8 RGB ``size``² squares."""
    base = DATASETS.build("fashion_mnist", root=data_root, split="train")
    x = base.images[:num_images]  # (N, 1, 28, 28) uint8
    if x.shape[-1] != size:
        x = F.interpolate(x.float(), size=(size, size), mode="bicubic", antialias=True)
        x = x.round().clamp(0, 255).to(torch.uint8)
    x = x.expand(-1, 3, -1, -1).contiguous()  # (N, 3, size, size)
    return ImageSet(x, base.labels[: len(x)], list(base.classes), *channel_stats(x))


def lightly_side(method: str, s: Settings, images: ImageSet, method_cfg: Any,
                 lr: float) -> tuple[Callable[[int], None], int, list[float]]:
    """lightly's model, transform, DataLoader, optimizer: ``step(i)``, warm-up, data waits."""
    device, (precision, channels_last) = torch.device(s.device), resolved(s)
    torch.manual_seed(0)  # build_run's seed: the same initial backbone weights
    backbone = BACKBONES.build(s.backbone, **({"width": s.width} if s.width else {}))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = lightly_model(method, backbone, method_cfg).to(device, memory_format=memory_format)
    probe = nn.Linear(backbone.num_features, len(images.classes)).to(device)
    setup = SETUPS[method]
    optimizer = lightly_optimizer(model, setup.optimizer, lr, setup.weight_decay)
    probe_optimizer = torch.optim.SGD(probe.parameters(), lr=0.1, momentum=0.9)
    forward = torch.compile(model) if s.compile_lightly else model
    warmup = s.warmup + s.num_workers * PREFETCH_FACTOR
    total = warmup + s.steps
    dataset = PILImages(images, lightly_transform(method, s.image_size))
    # Batches beyond the last step keep the workers busy to its end, as in a long epoch.
    sampler = torch.utils.data.RandomSampler(
        dataset, num_samples=(total + s.num_workers * PREFETCH_FACTOR) * s.batch_size)
    batches = iter(torch.utils.data.DataLoader(
        dataset, s.batch_size, sampler=sampler, num_workers=s.num_workers,
        pin_memory=device.type == "cuda", drop_last=True))
    waits: list[float] = []

    def step(i: int) -> None:
        t0 = time.perf_counter()
        views, labels = next(batches)
        waits.append(time.perf_counter() - t0)
        x_a, x_b = (v.to(device, non_blocking=True).contiguous(memory_format=memory_format)
                    for v in views)
        labels = labels.to(device, non_blocking=True)
        model.before_step(i, total)
        with (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
              else nullcontext()):
            loss, h_a = forward(x_a, x_b)
            probe_loss = F.cross_entropy(probe(h_a.detach()), labels)
        optimizer.zero_grad(set_to_none=True)
        probe_optimizer.zero_grad(set_to_none=True)
        (loss + probe_loss).backward()
        optimizer.step()
        probe_optimizer.step()

    return step, warmup, waits


def resolved(s: Settings) -> tuple[str, bool]:
    """(precision, channels_last), resolved as the trainer's ``auto``, for both sides."""
    fast = s.device == "cuda" or (s.device == "cpu" and cpu_prefers_bf16())
    precision = ("bf16" if fast else "fp32") if s.precision == "auto" else s.precision
    if s.channels_last not in ("auto", "true", "false"):
        raise ValueError(f"channels_last must be auto, true or false; got {s.channels_last!r}")
    return precision, fast if s.channels_last == "auto" else s.channels_last == "true"


def ours_side(method: str, s: Settings, images: ImageSet,
              run_dir: Path) -> tuple[Callable[[int], Any], Any]:
    """Our trainer's ``build_run`` drawing from ``images``; returns ``step(i)`` and the config."""
    setup = SETUPS[method]
    precision, channels_last = resolved(s)
    cfg = load_config(overrides=[
        f"method.name={method}",
        *(f"method.{k}={v}" for k, v in (setup.cpu_heads if s.preset == "cpu" else ())),
        f"backbone.name={s.backbone}", *([f"backbone.width={s.width}"] if s.width else []),
        f"data.root={s.data_root}", f"data.num_samples={s.batch_size}",
        f"data.val_samples={s.batch_size}", f"aug.recipe={setup.recipe}",
        f"aug.crop_size={s.image_size}", f"optim.name={setup.optimizer}",
        f"optim.base_lr={setup.base_lr}", f"optim.weight_decay={setup.weight_decay}",
        "optim.schedule=constant", f"train.batch_size={s.batch_size}",
        f"train.device={s.device}", f"train.precision={precision}",
        f"train.channels_last={str(channels_last).lower()}",
        f"train.compile={str(s.compile_ours).lower()}", "train.progress=false",
        "train.tensorboard=false", f"run_dir={run_dir}",
    ])  # fmt: skip
    run = build_run(cfg, init_distributed(s.device), run_dir)
    # Draw from the shared pool instead of the 28 px subset build_run loaded: same bytes.
    run = dataclasses.replace(run, train_set=images, steps_per_epoch=len(images) // s.batch_size)
    return (lambda i: train_step(run, i, s.warmup + s.steps)), cfg


def time_steps(step: Callable[[int], Any], warmup: int, steps: int, device: str) -> list[float]:
    """Seconds of each of ``steps`` synchronised steps, after ``warmup`` untimed ones."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for i in range(warmup):
        step(i)
    sync()
    times = []
    for i in range(warmup, warmup + steps):
        t0 = time.perf_counter()
        step(i)
        sync()
        times.append(time.perf_counter() - t0)
    return times


def summarize(times: list[float], batch_size: int, block: int,
              waits: Sequence[float] = ()) -> dict[str, Any]:
    """Images/s of the median block of ``block`` consecutive steps, and the raw times."""
    block = min(block, len(times))
    blocks = [sum(times[i:i + block]) for i in range(0, len(times) - block + 1, block)]
    out = {"images_per_s": batch_size * block / statistics.median(blocks),
           "images_per_s_mean": batch_size * len(times) / sum(times),
           "median_step_s": statistics.median(times), "block_steps": block,
           "step_times_s": [round(t, 6) for t in times]}
    if waits:  # time blocked in next(loader), per timed step
        out["median_data_wait_s"] = statistics.median(waits[-len(times):])
    return out


def run_method(method: str, s: Settings, images: ImageSet) -> dict[str, Any]:
    """Time ours, then lightly, on ``method``; returns its result row."""
    with tempfile.TemporaryDirectory() as tmp:
        step, cfg = ours_side(method, s, images, Path(tmp))
        ours = time_steps(step, s.warmup, s.steps, s.device)
    del step
    _free(s.device)
    step, warmup, waits = lightly_side(method, s, images, cfg.method.cfg,
                                       peak_lr(cfg.optim, s.batch_size))
    theirs = time_steps(step, warmup, s.steps, s.device)
    del step
    _free(s.device)  # also ends the DataLoader's worker processes
    block, head_cfg = max(1, s.num_workers), cfg.method.cfg
    row = {"method": method, "heads": {k: getattr(head_cfg, k) for k in
                                       ("projector", "predictor") if hasattr(head_cfg, k)},
           "ours": summarize(ours, s.batch_size, block),
           "lightly": summarize(theirs, s.batch_size, block, waits)}
    row["ratio"] = row["ours"]["images_per_s"] / row["lightly"]["images_per_s"]
    row["target"] = TARGETS[s.preset]
    row["target_met"] = row["ratio"] >= row["target"]
    return row


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _num_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_benchmark(methods: Sequence[str], s: Settings) -> dict[str, Any]:
    """Benchmark ``methods`` on both sides; returns the report (the JSON's content)."""
    if not methods or set(methods) - set(SETUPS) or s.precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"methods must be among {', '.join(SETUPS)} and precision auto, fp32 "
                         f"or bf16; got {list(methods)}, {s.precision!r}")
    images = load_images(s.data_root, s.num_images, s.image_size)
    if s.steps < 1 or s.warmup < 0 or s.num_workers < 0 or len(images) < s.batch_size:
        raise ValueError(f"need steps ≥ 1, warmup ≥ 0, num_workers ≥ 0 and a batch of at most "
                         f"the {len(images)} images; got {s}")
    rows = []
    for method in methods:
        rows.append(r := run_method(method, s, images))
        print(f"{method}: ours {r['ours']['images_per_s']:.1f} img/s, lightly "
              f"{r['lightly']['images_per_s']:.1f} img/s", file=sys.stderr)
    precision, channels_last = resolved(s)
    device = (torch.cuda.get_device_name() if s.device == "cuda"
              else f"cpu-{os.uname().machine}-{_num_cores()}cores")
    env = {"torch": torch.__version__, "torchvision": torchvision.__version__,
           "lightly": lightly.__version__, "python": sys.version.split()[0],
           "cpu_cores": _num_cores(), "torch_threads": torch.get_num_threads(),
           "git_sha": git_sha()}
    return {"schema": SCHEMA, "device": device, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "settings": dataclasses.asdict(s), "precision": precision,
            "channels_last": channels_last, "target_ratio": TARGETS[s.preset],
            "environment": env, "results": rows}


def format_table(report: dict[str, Any]) -> str:
    """The report as Markdown: what was run, then one row per method."""
    s = report["settings"]
    lines = [
        f"Training-step throughput on {report['device']}, {report['date']}: images/s (each "
        f"gives 2 views). {s['backbone']} (width {s['width'] or 'default'}), {s['image_size']}"
        f" px, batch {s['batch_size']}, {report['precision']}, channels_last "
        f"{report['channels_last']}, compile ours/lightly {s['compile_ours']}/"
        f"{s['compile_lightly']}, lightly num_workers {s['num_workers']}, {s['steps']} timed "
        f"steps after {s['warmup']}. {s['note']}", "",
        "| method | ours img/s | lightly img/s | ours/lightly | target | met |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for r in report["results"]:
        lines.append(f"| {r['method']} | {r['ours']['images_per_s']:.1f} | "
                     f"{r['lightly']['images_per_s']:.1f} | {r['ratio']:.2f}× | "
                     f"≥{r['target']:.1f}× | {'yes' if r['target_met'] else 'no'} |")
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: Path | None = None) -> Path:
    """Write the report (default ``benchmarks/results/<device>-<date>.json``); returns the path."""
    if path is None:
        name = "".join(c if c.isalnum() else " " for c in report["device"].lower())
        slug = "-".join(name.split())
        path = Path(__file__).resolve().parent / "results" / f"{slug}-{report['date'][:10]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def make_settings(preset: str | None = None, **flags: Any) -> Settings:
    """The preset (gpu when CUDA is available, else cpu) with the non-None flags over it."""
    given = {k: v for k, v in flags.items() if v is not None}
    given.setdefault("num_workers", max(1, _num_cores() - 1))
    s = dataclasses.replace(PRESETS[preset or ("gpu" if torch.cuda.is_available() else "cpu")],
                            **given)
    if s.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("no CUDA device here: pass --device cpu or --preset cpu")
    return s


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """One flag per ``Settings`` field (``--compile`` is ``compile_ours``); unset = preset's."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=",".join(SETUPS), help="comma-separated")
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/...)")
    for f in dataclasses.fields(Settings):
        flags = ["--" + f.name.replace("_", "-")] + (["--compile"] if f.name == "compile_ours"
                                                     else [])
        if f.name == "preset":
            p.add_argument(*flags, choices=sorted(PRESETS), help="default: gpu if CUDA, else cpu")
        elif isinstance(f.default, bool):
            p.add_argument(*flags, action="store_true", default=None)
        else:
            p.add_argument(*flags, type=type(f.default), help=f"cpu preset: {f.default!r}")
    return p.parse_args(argv)


def main(preset: str | None, methods: str, out: Path | None, **flags: Any) -> int:
    """Run the benchmark, print the table, write the JSON."""
    report = run_benchmark([m.strip() for m in methods.split(",") if m.strip()],
                           make_settings(preset, **flags))
    print(format_table(report))
    print(f"\nwrote {write_json(report, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(**vars(parse_args())))
