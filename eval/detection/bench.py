"""Detection transfer benchmarks: ``voc07+12_det``, ``coco_det`` and ``coco_seg`` (issue #6).

Each benchmark fine-tunes a detector around the checkpoint's ResNet with a protocol preset
(``eval.detection.configs.PRESETS``) on one of two backends and reports Detectron2's
numbers: VOC ``AP``, ``AP50``, ``AP75`` (11-point AP on VOC07 test); COCO ``AP``, ``AP50``,
``AP75``, ``APs``, ``APm``, ``APl`` for boxes (``coco_det``) or masks (``coco_seg``).
Every metric carries ``extra["backend"]`` (``"detectron2"`` or ``"torchvision"``): the
two are different implementations and their numbers go in different table columns.

- ``detectron2``: the checkpoint converted by ``eval.detection.convert``, the config
  turned into a ``CfgNode``, ``DefaultTrainer`` launched on all (or ``num_gpus``) local
  GPUs with the linear scaling rule from the recipe's 8 (``eval.detection.d2_backend``).
- ``torchvision``: the same config on ``torchvision.models.detection`` on one device
  (``eval.detection.tv_models`` / ``tv_train``).

A run lives in ``<output_dir>/<preset>-<key>/`` (``config.yaml``, ``log.txt``,
``metrics.json``; Detectron2 runs also ``train_metrics.json``, its checkpoints, and its full
config in ``config.yaml``), keyed by checkpoint, backend, config and data. A folder whose
``metrics.json`` is not a finished run's is run again (Detectron2 resumes from its last
checkpoint there). ``coco_det`` and ``coco_seg`` share one Mask R-CNN run when their
settings agree. A run that fails (e.g. a NaN loss) raises :class:`DetectionRunFailed` with
its log's tail, so the battery records it as ``failed``, never as a number.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset

from eval.datasets import DatasetError
from eval.detection import d2_backend
from eval.detection.configs import (
    PRESETS,
    ConfigError,
    build_config,
    check_detectron2_compatible,
    get,
    to_yaml,
)
from eval.detection.data import (
    DetectionDataset,
    DetectionSplit,
    coco_json_path,
    load_split,
    voc_class_names,
)
from eval.detection.metrics import coco_ap, voc_detection_ap
from eval.detection.mini import ensure_mini_coco
from eval.detection.tv_models import NotAResNetError, build_detector, require_resnet
from eval.detection.tv_train import DetectionRunFailed, file_logger, predict, train
from eval.registry import BENCHMARKS, Context, Metric

log = logging.getLogger("sslbench.eval")
BACKENDS = ("auto", "detectron2", "torchvision")
# benchmark → (dataset family, COCO iou type / VOC box metrics, metric names)
TASKS = {"voc07+12_det": ("voc", "bbox", ("AP", "AP50", "AP75")),
         "coco_det": ("coco", "bbox", ("AP", "AP50", "AP75", "APs", "APm", "APl")),
         "coco_seg": ("coco", "segm", ("AP", "AP50", "AP75", "APs", "APm", "APl"))}


@dataclass(frozen=True)
class DetectionConfig:
    """Settings of one detection benchmark (overridable as ``<benchmark>.<field>=…``)."""

    preset: str = "voc_R50_C4_24k"  # a key of eval.detection.configs.PRESETS
    # Detectron2-style KEY=VALUE on top of the preset, e.g. SOLVER.BASE_LR=0.01 (YAML values;
    # on the command line a list: 'voc07+12_det.overrides=["SOLVER.STEPS=[100,200]"]').
    overrides: tuple[str, ...] = ()
    # auto (detectron2 if it imports and can build the model) | detectron2 | torchvision
    backend: str = "auto"
    # GPUs. detectron2: processes launched here, 0 = all visible. torchvision: 0 = the
    # recipe's batch on one device; N = batch/lr/schedule scaled as for N GPUs (linear rule).
    num_gpus: int = 0
    voc_root: str = ""  # the VOCdevkit folder; "" = the parent of data.voc07
    coco_root: str = ""  # the coco folder; "" = data.coco if defined, else <VOCdevkit>/../coco
    output_dir: str = "runs/detection"
    # reuse a finished run with the same key (coco_det + coco_seg share one) and resume an
    # unfinished one; false = train again from the checkpoint
    reuse: bool = True
    # torchvision backend on the CPU: intra-op threads during the run (0 = torch's setting).
    # The mini models' convolutions are tiny; on 2 shared cores 1 thread was 3–5× faster.
    cpu_threads: int = 0


VOC_PAPER = DetectionConfig()
# NOTE: MoCo's COCO recipe is C4 2× (eval-protocols §7.3, §9.12); the VICReg / Barlow
# Twins COCO settings are unverified (§10). We default to C4 1× (the stock 1× schedule
# with MoCo's C4-BN model); coco_R50_C4_2x and coco_R50_FPN_1x are presets away.
COCO_PAPER = DetectionConfig(preset="coco_R50_C4_1x")
# NOTE: the mini protocol always runs the torchvision backend, so its numbers do not
# depend on whether detectron2 happens to be installed; one CPU thread (measured 3–5×
# faster than two on the shared 2-core machines for these tiny convolutions).
VOC_MINI = DetectionConfig(preset="mini_voc_C4", backend="torchvision", cpu_threads=1)
COCO_MINI = DetectionConfig(preset="mini_coco_C4", backend="torchvision", cpu_threads=1)


def suite_benchmarks(protocol: str) -> dict[str, DetectionConfig]:
    """The detection entries of the ``paper`` or ``mini`` suite (none for ``fast``: a
    detector is fine-tuned, which cached features cannot do)."""
    if protocol == "paper":
        return {"voc07+12_det": VOC_PAPER, "coco_det": COCO_PAPER, "coco_seg": COCO_PAPER}
    if protocol == "mini":
        return {"voc07+12_det": VOC_MINI, "coco_det": COCO_MINI, "coco_seg": COCO_MINI}
    return {}


class DetectionNotApplicable(DatasetError):
    """The checkpoint's backbone cannot be a detection backbone (not a ResNet).

    NOTE: a subclass of DatasetError so that the battery records the benchmark as
    ``skipped`` with this message (a tiny_cnn or ViT run is not a failed run).
    """


def _roots(ctx: Context, cfg: DetectionConfig) -> tuple[Path, Path]:
    voc = Path(cfg.voc_root).expanduser() if cfg.voc_root else Path(ctx.data.voc07).parent
    coco = cfg.coco_root or getattr(ctx.data, "coco", "") or str(voc.parent / "coco")
    return voc, Path(coco).expanduser()


def _fingerprint(split: DetectionSplit) -> str:
    h = hashlib.sha1(f"{split.name}|{split.classes}|{len(split.images)}".encode())
    for r in split.images:
        h.update(f"{r.image_id}|{r.height}|{r.width}|".encode())
        h.update(r.boxes.tobytes() + r.labels.tobytes() + r.difficult.tobytes())
    return h.hexdigest()


def _load(cfg: dict[str, Any], task: str, voc_root: Path, coco_root: Path
          ) -> tuple[list[DetectionSplit], DetectionSplit]:
    train_names = list(get(cfg, "DATASETS.TRAIN"))
    test_names = list(get(cfg, "DATASETS.TEST"))
    if not train_names or len(test_names) != 1:
        raise ConfigError("DATASETS.TRAIN must name at least one split and DATASETS.TEST one")
    classes = voc_class_names(voc_root, (*train_names, *test_names)) if task == "voc" else ()
    splits = [load_split(n, voc_root, coco_root, classes) for n in (*train_names, *test_names)]
    if any(s.kind != task for s in splits):
        raise ConfigError(f"DATASETS {train_names + test_names} are not all {task} splits")
    if any(s.classes != splits[-1].classes for s in splits):
        raise DatasetError(f"{[s.name for s in splits]} do not share one class list")
    return splits[:-1], splits[-1]


def _choose_backend(cfg: DetectionConfig, backbone: str, d2cfg: dict[str, Any]) -> str:
    if cfg.backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {cfg.backend!r}")
    if cfg.backend == "torchvision":
        return "torchvision"
    if cfg.backend == "detectron2":
        if not d2_backend.available():
            raise ConfigError("backend=detectron2 but detectron2 is not installed "
                              "(use backend=torchvision, or install detectron2)")
        check_detectron2_compatible(d2cfg, backbone)
        return "detectron2"
    try:
        check_detectron2_compatible(d2cfg, backbone)
    except ConfigError as e:
        log.info("detection: torchvision backend (%s)", e)
        return "torchvision"
    return "detectron2" if d2_backend.available() else "torchvision"


def resolve_backend(cfg: DetectionConfig, backbone: str,
                    backbone_kwargs: dict[str, Any] | None = None) -> str | None:
    """The backend a benchmark will run on, as :func:`run_detection` chooses it.

    The backend is part of a detection record's identity (``eval.records.record_id``), so
    the battery asks before running: an explicit ``backend`` as is (a run that cannot honour
    it fails under that name); ``auto`` resolved for this backbone; None where ``auto``
    cannot be resolved (not a ResNet, an unknown preset or override: the run reports why).
    """
    if cfg.backend in ("detectron2", "torchvision"):
        return cfg.backend
    try:
        probe, _ = build_config(cfg.preset, backbone=backbone,
                                backbone_kwargs=backbone_kwargs or {}, overrides=cfg.overrides)
        return _choose_backend(cfg, backbone, probe)
    except ConfigError:
        return None


def _finished(path: Path) -> dict[str, Any] | None:
    """The body of a finished run's ``metrics.json``, or None (absent, partial, foreign)."""
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) and isinstance(body.get("results"), dict) else None


def _tail(path: Path, lines: int = 25) -> str:
    if not path.is_file():
        return "(no log written)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _run_torchvision(ctx: Context, d2cfg: dict[str, Any], train_splits: list[DetectionSplit],
                     test: DetectionSplit, run_dir: Path, name: str,
                     cpu_threads: int = 0) -> dict[str, Any]:
    runlog = file_logger(run_dir / "log.txt", run_dir.name)
    runlog.info("torchvision backend, backbone %s, config:\n%s", name, to_yaml(d2cfg))
    masks = bool(get(d2cfg, "MODEL.MASK_ON"))
    torch.manual_seed(ctx.run.seed)
    threads = torch.get_num_threads()
    if cpu_threads and ctx.device.type == "cpu":
        torch.set_num_threads(cpu_threads)
    try:
        return _train_and_test(ctx, d2cfg, train_splits, test, runlog, name, masks)
    finally:
        torch.set_num_threads(threads)


def _train_and_test(ctx: Context, d2cfg: dict[str, Any], train_splits: list[DetectionSplit],
                    test: DetectionSplit, runlog: logging.Logger, name: str,
                    masks: bool) -> dict[str, Any]:
    model = build_detector(copy.deepcopy(ctx.backbone), d2cfg, name)
    data = ConcatDataset([DetectionDataset(s, train=True, masks=masks) for s in train_splits])
    summary = train(model, data, d2cfg, ctx.device, runlog, seed=ctx.run.seed)
    preds = predict(model, test, d2cfg, ctx.device,
                    num_workers=get(d2cfg, "DATALOADER.NUM_WORKERS"))
    if test.kind == "voc":
        results: dict[str, Any] = {"bbox": voc_detection_ap(test, preds)}
    else:
        results = {"bbox": coco_ap(test, preds, "bbox")}
        if masks:
            results["segm"] = coco_ap(test, preds, "segm")
    runlog.info("results: %s", json.dumps(results))
    return {"results": results, "train_seconds": round(summary.seconds, 1),
            "iterations": summary.iterations}


def _run_detectron2(ctx: Context, d2cfg: dict[str, Any], extra: list[str],
                    splits: list[DetectionSplit], run_dir: Path, num_gpus: int,
                    voc_root: Path, coco_root: Path, resume: bool = True) -> dict[str, Any]:
    from eval.detection.convert import save_detectron2, torchvision_to_detectron2

    weights, report = torchvision_to_detectron2(ctx.backbone.state_dict())
    path = save_detectron2(weights, run_dir / "backbone_d2.pkl",
                           {"checkpoint_sha256": ctx.checkpoint_sha256,
                            "backbone": ctx.meta.get("backbone"),
                            "dropped": report.dropped_num_batches_tracked})
    d2cfg = copy.deepcopy(d2cfg)
    d2cfg["MODEL"]["WEIGHTS"] = str(path)
    specs: dict[str, dict[str, Any]] = {}
    for s in splits:
        parts = s.name.split("_")  # voc_2007_trainval / coco_2017_val
        if s.kind == "voc":
            specs[s.name] = {"kind": "voc", "dirname": str(voc_root / f"VOC{parts[1]}"),
                             "split": parts[2], "year": int(parts[1]), "classes": s.classes}
        else:
            specs[s.name] = {"kind": "coco", "json": str(coco_json_path(coco_root, parts[2])),
                             "image_root": str(coco_root / f"{parts[2]}2017")}
    if not torch.cuda.is_available():
        extra = [*extra, "MODEL.DEVICE=cpu"]
    job = d2_backend.D2Job(d2cfg, extra, specs, str(run_dir), num_gpus, resume=resume)
    start = time.time()
    results = d2_backend.run_job(job)
    return {"results": results, "train_seconds": round(time.time() - start, 1),
            "iterations": get(d2cfg, "SOLVER.MAX_ITER")}


def _finite(value: Any) -> bool:
    """A real number (Detectron2's metrics.json has null where COCOeval gave NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _describe(d2cfg: dict[str, Any]) -> str:
    kind = "Mask R-CNN" if get(d2cfg, "MODEL.MASK_ON") else "Faster R-CNN"
    fpn = get(d2cfg, "MODEL.BACKBONE.NAME") == "build_resnet_fpn_backbone"
    return f"{kind} R{get(d2cfg, 'MODEL.RESNETS.DEPTH')}-{'FPN' if fpn else 'C4'}"


def run_detection(ctx: Context, cfg: DetectionConfig, benchmark: str) -> list[Metric]:
    """Train (or reuse) the benchmark's detector and return its metrics.

    Raises:
        DetectionNotApplicable: The backbone is not a ResNet (recorded as skipped).
        DatasetError: Data missing or malformed; the message names the expected layout.
        ConfigError: Unknown preset/key, or a setting the chosen backend cannot honour.
        DetectionRunFailed: Training diverged or crashed; the message has the log's tail.
    """
    task, iou_type, names = TASKS[benchmark]
    if cfg.preset not in PRESETS:
        raise ConfigError(f"unknown preset '{cfg.preset}'; valid: {', '.join(PRESETS)}")
    if PRESETS[cfg.preset].task != task:
        raise ConfigError(f"{benchmark} needs a {task} preset, '{cfg.preset}' is "
                          f"{PRESETS[cfg.preset].task}")
    name, kwargs = ctx.meta["backbone"], ctx.meta.get("backbone_kwargs") or {}
    try:
        require_resnet(ctx.backbone, name)
    except NotAResNetError as e:
        raise DetectionNotApplicable(str(e)) from None
    voc_root, coco_root = _roots(ctx, cfg)
    if PRESETS[cfg.preset].mini and task == "coco" and not coco_json_path(coco_root,
                                                                           "train").is_file():
        ensure_mini_coco(coco_root)  # generated once; an existing (mini) COCO is used as is
    probe, _ = build_config(cfg.preset, backbone=name, backbone_kwargs=kwargs,
                            overrides=cfg.overrides)
    train_splits, test = _load(probe, task, voc_root, coco_root)
    for s in (*train_splits, test):
        ctx.fingerprints[f"{s.name}"] = _fingerprint(s)
    backend = _choose_backend(cfg, name, probe)
    if backend == "detectron2":
        num_gpus: int | None = cfg.num_gpus or max(torch.cuda.device_count(), 1)
    else:
        num_gpus = cfg.num_gpus or None
    d2cfg, extra = build_config(
        cfg.preset, backbone=name, backbone_kwargs=kwargs, num_classes=len(test.classes),
        num_gpus=num_gpus, overrides=(f"SEED={ctx.run.seed}", *cfg.overrides),
        pixel_mean_std=(list(ctx.mean), list(ctx.std)))
    if backend == "torchvision" and extra:
        raise ConfigError(f"the torchvision backend does not implement {extra}; its keys are "
                          "those of eval.detection.configs.D2_DEFAULTS")
    if iou_type == "segm" and not get(d2cfg, "MODEL.MASK_ON"):
        raise ConfigError(f"{benchmark} needs MODEL.MASK_ON true")
    if backend == "detectron2" and get(d2cfg, "SOLVER.MAX_ITER") < 1:
        # Detectron2's LR scheduler fails on an empty schedule with an obscure message.
        raise ConfigError(f"detectron2 needs SOLVER.MAX_ITER ≥ 1, got "
                          f"{get(d2cfg, 'SOLVER.MAX_ITER')} (after the linear scaling rule)")
    key_body = {"checkpoint": ctx.checkpoint_sha256, "backend": backend, "config": d2cfg,
                "extra": extra, "data": [ctx.fingerprints[s.name] for s in (*train_splits, test)]}
    key = hashlib.sha1(json.dumps(key_body, sort_keys=True, default=str).encode()).hexdigest()
    run_dir = Path(cfg.output_dir).expanduser() / f"{cfg.preset}-{key[:16]}"
    done = run_dir / "metrics.json"
    finished = _finished(done) if cfg.reuse else None
    if finished is not None:
        body = finished
        log.info("%s: reusing %s", benchmark, run_dir)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "FAILED").unlink(missing_ok=True)  # a previous attempt's
        (run_dir / "config.yaml").write_text(to_yaml(d2cfg))
        try:
            if backend == "torchvision":
                body = _run_torchvision(ctx, d2cfg, train_splits, test, run_dir, name,
                                        cfg.cpu_threads)
            else:
                # reuse=false asks for a new run: train from the converted backbone
                # again instead of resuming from (or re-evaluating) the folder's checkpoint
                body = _run_detectron2(ctx, d2cfg, extra, [*train_splits, test], run_dir,
                                       int(num_gpus or 1), voc_root, coco_root,
                                       resume=cfg.reuse)
        except (DatasetError, ConfigError):
            raise
        except Exception as e:  # noqa: BLE001 (reported with the run's log, never as a number)
            cause = str(e) if isinstance(e, DetectionRunFailed) else f"{type(e).__name__}: {e}"
            message = (f"{backend} {cfg.preset} run failed: {cause}\n"
                       f"log: {run_dir / 'log.txt'}\n{_tail(run_dir / 'log.txt')}")
            (run_dir / "FAILED").write_text(message + "\n")
            raise DetectionRunFailed(message) from e
        body["backend"] = backend
        done.write_text(json.dumps(body, indent=1))
    values = body["results"].get(iou_type) or {}
    if not _finite(values.get(names[0])):
        raise DetectionRunFailed(f"{run_dir}: no finite {iou_type} {names[0]} in metrics.json "
                                 f"({values})\n{_tail(run_dir / 'log.txt')}")
    extra_info = {
        "backend": backend, "preset": cfg.preset, "model": _describe(d2cfg),
        "iou_type": iou_type, "train_sets": [s.name for s in train_splits],
        "test_set": test.name, "num_classes": len(test.classes),
        "iterations": get(d2cfg, "SOLVER.MAX_ITER"),
        "ims_per_batch": get(d2cfg, "SOLVER.IMS_PER_BATCH"),
        "base_lr": get(d2cfg, "SOLVER.BASE_LR"), "num_gpus": num_gpus,
        "overrides": list(cfg.overrides), "run_dir": str(run_dir),
        "train_seconds": body.get("train_seconds"),
        "ap_definition": ("VOC07 11-point" if "2007" in test.name else "VOC all-point")
        if task == "voc" else "COCOeval"}
    # COCOeval gives -1 (NaN here) for a size range without ground truth (the mini COCO
    # has only small objects): such a metric is left out, not recorded as a number.
    undefined = [n for n in names if not _finite(values.get(n))]
    if undefined:
        extra_info["undefined"] = undefined
    metrics = [Metric(n, float(values[n]), dict(extra_info)) for n in names if n not in undefined]
    if task == "voc" and "per_class_AP50" in values:
        next(m for m in metrics if m.name == "AP50").extra["per_class_AP50"] = \
            values["per_class_AP50"]
    return metrics


@BENCHMARKS.register("voc07+12_det", DetectionConfig)
def voc0712_det(ctx: Context, cfg: DetectionConfig) -> list[Metric]:
    """VOC07+12 trainval → VOC07 test detection: AP, AP50, AP75 (11-point)."""
    return run_detection(ctx, cfg, "voc07+12_det")


@BENCHMARKS.register("coco_det", DetectionConfig)
def coco_det(ctx: Context, cfg: DetectionConfig) -> list[Metric]:
    """COCO 2017 train → val box AP of the Mask R-CNN (AP, AP50, AP75, APs, APm, APl)."""
    return run_detection(ctx, cfg, "coco_det")


@BENCHMARKS.register("coco_seg", DetectionConfig)
def coco_seg(ctx: Context, cfg: DetectionConfig) -> list[Metric]:
    """COCO 2017 train → val mask AP of the same Mask R-CNN run as ``coco_det``."""
    return run_detection(ctx, cfg, "coco_seg")
