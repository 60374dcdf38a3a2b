"""Train and evaluate through Detectron2's Python API (only where ``detectron2`` imports).

:func:`run_job` is the entry point: a module-level function of one picklable
:class:`D2Job`, so the sweep code can submit it (``sweeps.job.Job(run_job, job, …)``) on a
node with N GPUs, and Detectron2's ``launch`` starts one process per GPU. Each process
registers our dataset roots under their own names (``sslbench.<d2 name>.<hash>``: the
builtin names point at ``$DETECTRON2_DATASETS``), registers MoCo's
``Res5ROIHeadsExtraNorm``, builds the ``CfgNode`` from our dict, trains with
``DefaultTrainer`` (evaluation once at the end, precise BN as configured, resuming from
the run folder's last checkpoint after a requeue), and rank 0 writes ``metrics.json``.
Detectron2's own per-iteration JSON log goes to ``train_metrics.json`` (its default name,
``metrics.json``, is our results file), and the logging set-up of ``default_setup`` is
undone after the run, so that each run's ``log.txt`` holds that run only.

This module imports nothing from Detectron2 at import time.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import inspect
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.detection.configs import to_cfgnode

METRICS_FILE = "metrics.json"
# Detectron2's JSONWriter (per-iteration losses, lr, timings); its default name is ours above.
TRAIN_METRICS_FILE = "train_metrics.json"


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
    from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter

    class Trainer(DefaultTrainer):
        """``DefaultTrainer`` with the evaluator chosen by the dataset's type, and its
        per-iteration JSON log in ``train_metrics.json``."""

        def build_writers(self) -> list[Any]:
            # NOTE: default_writers() writes OUTPUT_DIR/metrics.json, our results file: a run
            # that failed left Detectron2's JSON lines there, and every later attempt (a retry,
            # a requeue meant to resume) then failed to parse it instead of running.
            return [CommonMetricPrinter(self.max_iter),
                    JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, TRAIN_METRICS_FILE)),
                    TensorboardXWriter(self.cfg.OUTPUT_DIR)]

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


@contextlib.contextmanager
def _run_logging() -> Iterator[None]:
    """Remove, when the run ends, the log handlers that ``default_setup`` adds for it.

    NOTE: Detectron2's ``setup_logger`` adds a stdout and a ``<OUTPUT_DIR>/log.txt`` handler
    to the ``detectron2`` and ``fvcore`` loggers for each new output folder and never removes
    them: after a first run, a second one in the same process (the battery's VOC then COCO
    runs) also wrote into the first run's log.txt and printed every line twice.
    """
    from detectron2.utils.logger import setup_logger

    saved = [(lg, list(lg.handlers), lg.level, lg.propagate)
             for lg in (logging.getLogger("detectron2"), logging.getLogger("fvcore"))]
    setup_logger.cache_clear()  # its lru_cache would skip a folder that was set up before
    try:
        yield
    finally:
        for lg, handlers, level, propagate in saved:
            for handler in [h for h in lg.handlers if h not in handlers]:
                handler.flush()
                lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate
        setup_logger.cache_clear()


def _worker(job: D2Job) -> None:
    """One process of the run (rank 0 writes ``metrics.json``)."""
    with _run_logging():
        _train_and_test(job)


def _train_and_test(job: D2Job) -> None:
    from detectron2.engine import default_setup
    from detectron2.utils import comm

    register_extra_norm_heads()
    names = _register_datasets(job.datasets)
    cfg = to_cfgnode(job.config, job.extra_overrides)
    cfg.DATASETS.TRAIN = tuple(names[n] for n in cfg.DATASETS.TRAIN)
    cfg.DATASETS.TEST = tuple(names[n] for n in cfg.DATASETS.TEST)
    cfg.OUTPUT_DIR = job.run_dir
    cfg.freeze()
    # Logs to <run_dir>/log.txt and replaces config.yaml by Detectron2's full config.
    default_setup(cfg, argparse.Namespace(config_file="", eval_only=False, resume=job.resume))
    trainer_cls = _trainer_class()
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=job.resume)
    trainer.train()
    # NOTE: DefaultTrainer.train() returns None unless TEST.EXPECTED_RESULTS is set, but its
    # EvalHook has already evaluated the final model (with TEST.EVAL_PERIOD 0 too) and kept
    # the numbers in `_last_eval_results`; testing again would double the evaluation time.
    results = getattr(trainer, "_last_eval_results", None)
    if results is None:  # no EvalHook ran (hooks changed): evaluate here
        results = trainer_cls.test(cfg, trainer.model)
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
