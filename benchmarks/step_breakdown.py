"""Where a training step's time goes: augmentation, forward, backward + optimizer, top ops.

    python benchmarks/step_breakdown.py -c sweeps/specs/demo.yaml
    python benchmarks/step_breakdown.py -c sweeps/specs/demo.yaml backbone.width=32 --steps 10

The run is the trainer's own (``build_run`` on the resolved config, any ``key=value``
override), and so is the step: ``trainer.loop.train_step``, timed phase by phase through its
``mark`` hook (the device synchronised at each mark on a GPU). A streamed set (image files,
shards) is read by the trainer's own loader (``open_stream``, ``data.num_workers``), and the
time the step waits for its batch is the ``load`` phase (≈ 0 in memory, and for a loader that
keeps up). Reported per step: seconds and share of each phase, images/s, the process's CPU
seconds, and the operators with the most self time over ``--profile-steps`` profiled steps
(``torch.profiler``).
"""
# ruff: noqa: E402

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.cpu_precision import machine
from dataroom import Batch, DatasetError
from trainer.config import ConfigError, load_config, preflight
from trainer.dist import init_distributed
from trainer.io import atomic_write_text, git_sha
from trainer.loop import Run, _channels_last, _precision, build_run, open_stream, train_step

SCHEMA = "sslbench.step_breakdown/1"
# "load": waiting for a streamed set's loader; the rest are train_step's own marks
PHASES = ("load", "augment", "forward", "backward+optimizer")
Batches = Iterator[Batch] | None  # a streamed set's batches, one per step; None in memory


def build(configs: list[str], overrides: list[str], run_dir: Path) -> Run:
    cfg = load_config(configs, [*overrides, "train.progress=false", "train.tensorboard=false",
                                f"run_dir={run_dir}"])
    preflight(cfg)
    return build_run(cfg, init_distributed(cfg.train.device), run_dir)


def step(run: Run, i: int, total: int, batches: Batches,
         mark: Callable[[str], None] | None = None) -> None:
    """Step ``i`` of the trainer, its batch from ``batches`` for a streamed set."""
    batch = next(batches) if batches is not None else None
    if mark is not None:
        mark("load")
    train_step(run, i, total, batch, mark=mark)


def time_phases(run: Run, start: int, steps: int, total: int,
                batches: Batches) -> dict[str, Any]:
    """Mean seconds per step of each phase over ``steps`` steps of ``train_step``."""
    sync = torch.cuda.synchronize if run.info.device.type == "cuda" else (lambda: None)
    spent = dict.fromkeys(PHASES, 0.0)
    clock = [0.0]

    def mark(phase: str) -> None:
        sync()
        now = time.perf_counter()
        spent[phase] += now - clock[0]
        clock[0] = now

    cpu0 = time.process_time()
    for i in range(start, start + steps):
        sync()
        clock[0] = time.perf_counter()
        step(run, i, total, batches, mark)
    cpu = time.process_time() - cpu0
    wall = sum(spent.values())
    batch = run.cfg.train.batch_size // run.info.world_size
    return {"phases": {p: {"s_per_step": spent[p] / steps, "share": spent[p] / wall}
                       for p in PHASES},
            "step_s": wall / steps, "images_per_s": batch * steps / wall,
            "cpu_s_per_step": cpu / steps, "steps": steps}


def top_ops(run: Run, start: int, steps: int, total: int, k: int,
            batches: Batches) -> list[dict[str, Any]]:
    """The ``k`` operators with the most self time (CPU, and CUDA on a GPU) per step."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if run.info.device.type == "cuda"
                                     else [])
    with profile(activities=acts) as prof:
        for i in range(start, start + steps):
            step(run, i, total, batches)
        if run.info.device.type == "cuda":
            torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0 or
              getattr(e, "self_device_time_total", 0) > 0]
    key = "self_device_time_total" if run.info.device.type == "cuda" else "self_cpu_time_total"
    events.sort(key=lambda e: getattr(e, key, 0), reverse=True)
    grand = sum(getattr(e, key, 0) for e in events) or 1.0
    return [{"op": e.key, "self_ms_per_step": getattr(e, key, 0) / 1e3 / steps,
             "share": getattr(e, key, 0) / grand, "calls_per_step": e.count / steps}
            for e in events[:k]]


def run_breakdown(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        run = build(args.config, args.overrides, Path(tmp))
        total = args.warmup + args.steps + args.profile_steps
        # one loader for all the steps, as in training (its workers start once)
        batches = iter(open_stream(run, 0, total)) if run.streamed else None
        for i in range(args.warmup):
            step(run, i, total, batches)
        timed = time_phases(run, args.warmup, args.steps, total, batches)
        ops = top_ops(run, args.warmup + args.steps, args.profile_steps, total, args.top,
                      batches)
        del batches  # a streamed set's loader workers end here
        cfg = run.cfg
        return {
            "schema": SCHEMA, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "git_sha": git_sha(), "machine": machine(args.note),
            "run": {"configs": args.config, "overrides": args.overrides,
                    "method": cfg.method.name, "backbone": cfg.backbone.name,
                    "backbone_kwargs": dict(cfg.backbone.cfg),
                    "batch_size": cfg.train.batch_size, "device": run.info.device.type,
                    "data": cfg.data.name, "streamed": run.streamed,
                    "num_workers": cfg.data.num_workers if run.streamed else None,
                    "precision": _precision(cfg, run.info),
                    "channels_last": _channels_last(cfg, run.info),
                    "threads": torch.get_num_threads()},
            "warmup": args.warmup, **timed, "top_ops": ops}


def format_table(report: dict[str, Any]) -> str:
    r, m = report["run"], report["machine"]
    lines = [f"{r['method']} / {r['backbone']} {r['backbone_kwargs']} on {r['data']}"
             f"{' (streamed)' if r['streamed'] else ''}, batch {r['batch_size']}, "
             f"{r['device']} ({m['cpu_model']}, nproc {m['nproc']}), precision "
             f"{r['precision']}, channels_last {r['channels_last']}, {report['date'][:10]}: "
             f"{report['step_s']:.3f} s/step, {report['images_per_s']:.0f} images/s, "
             f"{report['cpu_s_per_step']:.2f} CPU-s/step over {report['steps']} steps.", "",
             "| phase | s/step | share |", "|---|--:|--:|"]
    for name, p in report["phases"].items():
        lines.append(f"| {name} | {p['s_per_step']:.3f} | {p['share']:.0%} |")
    lines += ["", "| operator (self time) | ms per profiled step | share | calls/step |",
              "|---|--:|--:|--:|"]
    for o in report["top_ops"]:
        lines.append(f"| `{o['op']}` | {o['self_ms_per_step']:.1f} | {o['share']:.0%} | "
                     f"{o['calls_per_step']:g} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-c", "--config", action="append", default=[],
                   help="a run config YAML (repeatable), as the trainer's -c")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--profile-steps", type=int, default=2)
    p.add_argument("--top", type=int, default=10, help="operators listed")
    p.add_argument("--note", default="", help="e.g. 'idle machine'")
    p.add_argument("--out", type=Path, default=None, help="JSON report (default: none)")
    args = p.parse_args(argv)
    if min(args.steps, args.profile_steps) < 1 or args.warmup < 0:
        p.error("--steps and --profile-steps must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run_breakdown(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except (DatasetError, FileNotFoundError) as e:  # the dataset's files
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(report))
    if args.out:
        atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
