"""Run a suite of transfer benchmarks on one checkpoint and record the results.

Usage::

    python eval/run_all.py CKPT [--suite paper|fast|mini|cifar10|cifar100|stl10|imagenet100]
        [--data-root DIR] [--only A,B]
        [--out DIR] [--backbone NAME] [--allow-partial] [--force] [key=value ...]

(also ``python -m eval.run_all`` / ``python -m eval``). Overrides are ``<benchmark>.<field>``,
``data.<dataset>`` or run settings (``device=cuda``, ``num_workers=16`` …); an unknown key
is an error that lists the valid ones, and so is a value a setting cannot take
(``knn.ks=0``). Results go to ``<out>/<id>.json`` (default ``results/records``). A benchmark
already recorded as ``ok`` *with the same settings* (those that change its value:
``eval.config.identity``) is skipped unless ``--force``; other settings are measured and
recorded beside the old records (their ``variant`` names what differs), and a benchmark
with a torn or missing record of its group is measured again. A load with
``--allow-partial`` is marked in its records (``partial_load``) and in the tables.

Exit status: 0 all recorded, 1 a benchmark failed, 2 a usage, settings or checkpoint error
(one line naming the file or key).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script path: import from the repository root
    _root = str(Path(__file__).resolve().parent.parent)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]
    sys.path.insert(0, _root)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from eval import bench_classification, bench_standard, bench_voc  # noqa: E402,F401  (fill BENCHMARKS)
from eval.checkpoint import CheckpointError, file_sha256, load_backbone  # noqa: E402
from eval.config import (  # noqa: E402
    DataPaths,
    apply_overrides,
    as_dict,
    check_settings,
    identity,
    split_overrides,
    variant,
)
from eval.datasets import DatasetError  # noqa: E402
from eval.detection import bench as _detection  # noqa: E402,F401  (fill BENCHMARKS)
from eval.features import FeatureCache  # noqa: E402
from eval.records import (  # noqa: E402
    find_records,
    git_sha,
    make_record,
    read_record,
    record_id,
    write_record,
)
from eval.registry import BENCHMARKS, Context, Metric  # noqa: E402
from eval.suites import SUITES, Suite  # noqa: E402

log = logging.getLogger("sslbench.eval")


def primary_metric(name: str, cfg: Any) -> str:
    """The metric a skipped/failed benchmark is recorded under."""
    if name == "knn" or name.endswith("_knn"):
        return f"top1_k{cfg.ks[0]}"
    if name == "voc07_lowshot":
        return f"mAP_k{cfg.ks[0]}"
    if name == "voc07+12_det":
        return "AP50"
    if name in ("coco_det", "coco_seg"):
        return "AP"
    return "mAP" if name.startswith("voc07") else "top1"


def record_backend(cfg: Any, meta: dict[str, Any]) -> str | None:
    """The detection backend a benchmark's records will carry (None for other benchmarks).

    It is part of a detection record's id: a Detectron2 and a torchvision result of one
    cell are two records, and one does not count as the other already being recorded. A
    run that failed is recorded under its backend; a skip (data missing, not a ResNet)
    does not depend on the backend and is recorded without one.
    """
    if not isinstance(cfg, _detection.DetectionConfig):
        return None
    return _detection.resolve_backend(cfg, meta["backbone"], meta.get("backbone_kwargs") or {})


def _drop_backendless_attempt(out: str, sha: str, name: str, metric: str, spec: Suite,
                              var: str) -> None:
    """Remove a skipped/failed record of this detection cell written without a backend.

    A skip has no backend in its id, so a later success (under its backend's id) would not
    replace it and the tables would keep showing it in a backend-less column.
    """
    rid = record_id(sha, name, spec.protocol, metric, spec.name, variant=var)
    old = read_record(out, rid)
    if old is not None and old.get("status") != "ok":
        (Path(out) / f"{rid}.json").unlink(missing_ok=True)


def resolve_suite(name: str, overrides: list[str], only: str | None) -> Suite:
    """The suite with ``--only`` and ``key=value`` overrides applied (validated)."""
    if name not in SUITES:
        raise KeyError(f"unknown suite '{name}'; valid: {', '.join(SUITES)}")
    suite = SUITES[name]()
    benchmarks = dict(suite.benchmarks)
    if only:
        wanted = [b.strip() for b in only.split(",") if b.strip()]
        unknown = [b for b in wanted if b not in benchmarks]
        if unknown:
            raise KeyError(f"--only: {', '.join(unknown)} not in suite '{name}'; "
                           f"valid: {', '.join(benchmarks)}")
        benchmarks = {b: benchmarks[b] for b in wanted}
    sections = split_overrides(overrides)
    run = apply_overrides(suite.run, sections.pop("run", {}), "run")
    check_settings(run, "run")
    data = sections.pop("data", {})
    apply_overrides(DataPaths(), data, "data")  # validates the keys
    for section, pairs in sections.items():
        if section not in benchmarks:
            raise KeyError(f"unknown override section '{section}'; valid: run, data, "
                           + ", ".join(benchmarks))
        benchmarks[section] = apply_overrides(benchmarks[section], pairs, section)
    for section, cfg in benchmarks.items():
        check_settings(cfg, section)
    return dataclasses.replace(suite, benchmarks=benchmarks, run=run), data  # type: ignore[return-value]


def recorded(out: str, sha: str, name: str, spec: Suite, want: dict[str, Any],
             backend: str | None, backbone: str, problems: list[str],
             where: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The ``ok`` records of this benchmark made with the settings ``want`` (identity), on
    this backbone (and detection backend) and the data ``where`` (``data_root`` and the
    resolved ``data`` paths); [] when there are none or a record of their group is torn,
    missing or not ok (then the benchmark is measured again)."""
    found = find_records(out, problems, checkpoint_sha256=sha, benchmark=name,
                         protocol=spec.protocol, suite=spec.name, status="ok")
    same = []
    for r in found:
        config = r.get("config") or {}
        if (identity(config.get("benchmark"), config.get("run")) == want
                and r.get("backbone") == backbone
                and (not backend or (r.get("extra") or {}).get("backend") == backend)):
            if any(k in config and config[k] != v for k, v in (where or {}).items()):
                # the same settings on other data: measured again (and replaced)
                problems.append(f"{name}: recorded with data_root {config.get('data_root')}, "
                                f"now {(where or {}).get('data_root')}")
                continue
            same.append(r)
    for r in same:
        for rid in r.get("group") or []:
            member = read_record(out, rid)
            if member is None or member.get("status") != "ok":
                return []
    return same


def _run_one(ctx: Context, name: str, cfg: Any) -> tuple[list[Metric], str, str | None]:
    try:
        return BENCHMARKS.get(name).factory(ctx, cfg), "ok", None  # type: ignore[operator]
    except DatasetError as e:
        log.warning("%s skipped: %s", name, e)
        return [], "skipped", str(e)
    except Exception as e:  # noqa: BLE001 (one broken benchmark must not stop the others)
        log.error("%s failed:\n%s", name, traceback.format_exc())
        return [], "failed", f"{type(e).__name__}: {e}"


def _print_summary(records: list[dict[str, Any]]) -> None:
    rows = [(r["benchmark"], r["metric"], "" if r["value"] is None else f"{r['value']:.2f}",
             r["status"], (r["reason"] or "")[:70]) for r in records]
    header = ("benchmark", "metric", "value", "status", "reason")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())


def main(checkpoint: str, suite: str = "mini", data_root: str | None = None,
         only: str | None = None, out: str = "results/records", backbone: str | None = None,
         allow_partial: bool = False, force: bool = False,
         overrides: list[str] | None = None) -> list[dict[str, Any]]:
    """Evaluate ``checkpoint`` on a suite; returns the records written or found."""
    spec, data_overrides = resolve_suite(suite, list(overrides or []), only)
    root = data_root or spec.data_root
    if spec.protocol == "mini":
        from eval.mini import ensure_mini

        mini_fp = ensure_mini(root)
    else:
        mini_fp = None
    paths = apply_overrides(DataPaths(), data_overrides, "data").resolve(root)
    if spec.run.threads:
        # NOTE: the mini suite runs single-threaded: its tiny convolutions and SVM solves
        # gain nothing from threads, and on a shared 2-core CI machine oversubscribed
        # OpenMP threads made it ~20× slower in our measurements.
        torch.set_num_threads(spec.run.threads)
    model, meta = load_backbone(checkpoint, backbone=backbone, allow_partial=allow_partial)
    print(f"checkpoint {checkpoint}: {meta['backbone']} ({meta['format']}), "
          f"method {meta['method']}")
    sha = file_sha256(checkpoint)
    cache = FeatureCache(spec.run.cache_dir or None)
    git = git_sha()
    report = meta.get("key_report") or {}
    partial = bool(report.get("missing") or report.get("unexpected")
                   or report.get("shape_mismatch"))
    counts = {k: (len(v) if isinstance(v, list) else v) for k, v in report.items()
              if k in ("matched", "missing", "unexpected", "dropped_head")} or None
    default = SUITES[spec.name]()
    where = {"data_root": str(Path(root).expanduser()), "data": as_dict(paths)}
    records, problems = [], []
    for name, cfg in spec.benchmarks.items():
        backend = record_backend(cfg, meta)
        want = identity(as_dict(cfg), as_dict(spec.run))
        base = default.benchmarks.get(name, cfg)
        var = variant(want, identity(as_dict(base), as_dict(default.run)))
        done = [] if force else recorded(out, sha, name, spec, want, backend, meta["backbone"],
                                         problems, where)
        if done:
            print(f"{name}: already recorded with these settings ({len(done)} records); "
                  "--force to redo")
            records += done
            continue
        ctx = Context(model, meta, sha, spec.run, paths, cache)
        start = time.time()
        metrics, status, reason = _run_one(ctx, name, cfg)
        wall = time.time() - start
        if status != "ok":
            metrics = [Metric(primary_metric(name, cfg), float("nan"),
                              {"backend": backend} if backend and status == "failed" else {})]
        elif backend:
            _drop_backendless_attempt(out, sha, name, primary_metric(name, cfg), spec, var)
        config = {"suite": spec.name, "benchmark": as_dict(cfg), "run": as_dict(spec.run),
                  **where,
                  "checkpoint_format": meta["format"], "backbone_kwargs": meta["backbone_kwargs"],
                  "train_git_sha": meta.get("git_sha"), "mini_fingerprint": mini_fp}
        group = [make_record(
            checkpoint=str(checkpoint), meta=meta, checkpoint_sha256=sha, benchmark=name,
            protocol=spec.protocol, suite=spec.name, metric=m.name,
            value=m.value if status == "ok" else None, extra=m.extra, status=status,
            reason=reason, config=config, dataset_fingerprint=dict(ctx.fingerprints),
            git=git, wall_time_s=wall, variant=var, partial_load=partial, key_report=counts)
            for m in metrics]
        for rec in group:
            rec["group"] = [r["id"] for r in group]
            write_record(out, rec)
            records.append(rec)
        print(f"{name}: {status} in {wall:.1f}s" + (f" ({reason[:200]})" if reason else "")
              + (f" [{var}]" if var else "") + (" [partial load]" if partial else ""))
    for line in sorted(set(problems)):
        print(f"note: {line}; not counted as recorded")
    _print_summary(records)
    return records


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--suite", default="mini", choices=sorted(SUITES))
    p.add_argument("--data-root", default=None, help="dataset root (mini: generated there)")
    p.add_argument("--only", default=None, help="comma-separated benchmark names")
    p.add_argument("--out", default="results/records", help="records folder")
    p.add_argument("--backbone", default=None, help="backbone name for files without metadata")
    p.add_argument("--allow-partial", action="store_true", help="load despite missing/unknown keys")
    p.add_argument("--force", action="store_true", help="re-run benchmarks already recorded")
    p.add_argument("overrides", nargs="*", help="key=value settings")
    return p.parse_intermixed_args(argv)


def cli(argv: list[str] | None = None) -> int:
    """Entry point; exit status 1 if a benchmark failed, 2 on a usage/checkpoint error."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        records = main(args.checkpoint, args.suite, args.data_root, args.only, args.out,
                       args.backbone, args.allow_partial, args.force, args.overrides)
    except (CheckpointError, KeyError, ValueError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return 1 if any(r["status"] == "failed" for r in records) else 0


if __name__ == "__main__":
    sys.exit(cli())
