"""Train and evaluate through Detectron2's Python API (only where ``detectron2`` imports).

:func:`run_job` is the entry point: a module-level function of one picklable
:class:`D2Job`, so the sweep code can submit it (``sweeps.job.Job(run_job, job, …)``) on a
node with N GPUs, and Detectron2's ``launch`` starts one process per GPU. Each process
registers our dataset roots under their own names (``sslbench.<d2 name>.<hash>``: the
builtin names point at ``$DETECTRON2_DATASETS``), registers MoCo's
``Res5ROIHeadsExtraNorm``, builds the ``CfgNode`` from our dict, trains with
``DefaultTrainer`` (evaluation once at the end, precise BN as configured, resuming from
the run folder's last checkpoint after a requeue), and rank 0 writes ``metrics.json``.

This module imports nothing from Detectron2 at import time.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import inspect
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.detection.configs import to_cfgnode

METRICS_FILE = "metrics.json"


def available() -> bool:
    """True when ``import detectron2`` would succeed."""
    return importlib.util.find_spec("detectron2") is not None


@dataclass
class D2Job:
    """One Detectron2 training + evaluation run.

    Attributes:
        config: Our nested-dict config (``eval.detection.configs.build_config``).
        extra_overrides: ``KEY=VALUE`` for keys outside our mirror of the defaults.
        datasets: ``{d2 split name: spec}``; spec ``{"kind": "voc", "dirname", "split",
            "year", "classes"}`` or ``{"kind": "coco", "json", "image_root"}``.
        run_dir: ``OUTPUT_DIR`` (log.txt, checkpoints, metrics.json).
        num_gpus: Processes to launch on this machine (0: run on the CPU in-process).
        dist_url: ``launch``'s rendezvous (``"auto"`` picks a free local port).
        resume: Continue from ``run_dir``'s last checkpoint if there is one.
    """

    config: dict[str, Any]
    extra_overrides: list[str] = field(default_factory=list)
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    run_dir: str = "."
    num_gpus: int = 1
    dist_url: str = "auto"
    resume: bool = True


def registered_name(name: str, spec: dict[str, Any]) -> str:
    """Our registration name of a split (the builtin names are taken)."""
    digest = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
    return f"sslbench.{name}.{digest}"


def _register_datasets(datasets: dict[str, dict[str, Any]]) -> dict[str, str]:
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances
    from detectron2.data.datasets.pascal_voc import register_pascal_voc

    names = {}
    for name, spec in datasets.items():
        new = registered_name(name, spec)
        names[name] = new
        if new in DatasetCatalog.list():
            continue
        if spec["kind"] == "voc":
            register_pascal_voc(new, spec["dirname"], spec["split"], int(spec["year"]),
                                list(spec["classes"]))
            MetadataCatalog.get(new).evaluator_type = "pascal_voc"
        else:
            register_coco_instances(new, {}, spec["json"], spec["image_root"])
    return names


def register_extra_norm_heads() -> None:
    """Register ``Res5ROIHeadsExtraNorm``: ``Res5ROIHeads`` with a norm after res5 (MoCo).

    The norm is ``get_norm(MODEL.RESNETS.NORM, res5 channels)``, appended to the res5
    block so that both the box and the mask branches see its output (eval-protocols §7.3).
    """
    from detectron2.layers import get_norm
    from detectron2.modeling import ROI_HEADS_REGISTRY
    from detectron2.modeling.roi_heads import Res5ROIHeads

    if "Res5ROIHeadsExtraNorm" in ROI_HEADS_REGISTRY:
        return

    def add_norm(built: Any, cfg: Any) -> Any:
        seq, out_channels = built
        seq.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
        return seq, out_channels

    if isinstance(inspect.getattr_static(Res5ROIHeads, "_build_res5_block"), classmethod):
        class Res5ROIHeadsExtraNorm(Res5ROIHeads):  # detectron2 ≥ 0.3 (configurable heads)
            @classmethod
            def _build_res5_block(cls, cfg: Any) -> Any:
                return add_norm(super()._build_res5_block(cfg), cfg)
    else:
        class Res5ROIHeadsExtraNorm(Res5ROIHeads):  # type: ignore[no-redef]  (older releases)
            def _build_res5_block(self, cfg: Any) -> Any:
                return add_norm(super()._build_res5_block(cfg), cfg)

    ROI_HEADS_REGISTRY.register(Res5ROIHeadsExtraNorm)


def _trainer_class() -> type:
    from detectron2.data import MetadataCatalog
    from detectron2.engine import DefaultTrainer
    from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator

    class Trainer(DefaultTrainer):
        """``DefaultTrainer`` with the evaluator chosen by the dataset's type."""

        @classmethod
        def build_evaluator(cls, cfg: Any, dataset_name: str, output_folder: str | None = None
                            ) -> Any:
            if MetadataCatalog.get(dataset_name).evaluator_type == "pascal_voc":
                return PascalVOCDetectionEvaluator(dataset_name)
            return COCOEvaluator(dataset_name, output_dir=output_folder
                                 or os.path.join(cfg.OUTPUT_DIR, "inference"))

    return Trainer


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    try:
        value = float(obj)
    except (TypeError, ValueError):
        return str(obj)
    return value if math.isfinite(value) else None


def _worker(job: D2Job) -> None:
    """One process of the run (rank 0 writes ``metrics.json``)."""
    from detectron2.engine import default_setup
    from detectron2.utils import comm

    register_extra_norm_heads()
    names = _register_datasets(job.datasets)
    cfg = to_cfgnode(job.config, job.extra_overrides)
    cfg.DATASETS.TRAIN = tuple(names[n] for n in cfg.DATASETS.TRAIN)
    cfg.DATASETS.TEST = tuple(names[n] for n in cfg.DATASETS.TEST)
    cfg.OUTPUT_DIR = job.run_dir
    cfg.freeze()
    default_setup(cfg, argparse.Namespace(config_file="", eval_only=False, resume=job.resume))
    trainer_cls = _trainer_class()
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=job.resume)
    results = trainer.train() or trainer_cls.test(cfg, trainer.model)
    if comm.is_main_process():
        path = Path(job.run_dir) / METRICS_FILE
        path.write_text(json.dumps({"backend": "detectron2", "results": _plain(dict(results))},
                                   indent=1))


def run_job(job: D2Job) -> dict[str, dict[str, float | None]]:
    """Launch the run on this machine and return ``{"bbox": {...}, "segm": {...}}``.

    Raises:
        ImportError: detectron2 is not installed.
        Exception: Whatever the run raised (a diverging loss raises ``FloatingPointError``
            in Detectron2); the caller reports it with the log.
    """
    from detectron2.engine import launch

    Path(job.run_dir).mkdir(parents=True, exist_ok=True)
    (Path(job.run_dir) / METRICS_FILE).unlink(missing_ok=True)
    launch(_worker, max(job.num_gpus, 1), num_machines=1,
           machine_rank=0, dist_url=job.dist_url, args=(job,))
    body = json.loads((Path(job.run_dir) / METRICS_FILE).read_text())
    return {task: {k: v for k, v in values.items() if not k.startswith("AP-")}
            for task, values in body["results"].items() if isinstance(values, dict)}
