"""A picklable callable that runs the detection benchmarks of one checkpoint, for SLURM.

Detection fine-tuning needs a GPU node for hours while the rest of the battery does not,
so a sweep can submit it on its own, e.g. with the sweeps' generic job::

    from eval.detection.job import DetectionJob, run_detection_job
    Job(run_detection_job, DetectionJob("runs/x/backbone.pth", out="results/records"),
        run_dir="runs/x", kind="eval")   # submitted with tasks_per_node=1, gpus_per_node=8

Inside, ``eval.run_all.main`` runs the chosen benchmarks and writes their records;
Detectron2's ``launch`` starts one process per visible GPU. Re-running after a requeue
skips benchmarks already recorded and resumes a Detectron2 run from its folder's last
checkpoint (the run folder is keyed by checkpoint and config). One node per job: this
module does not set up multi-node rendezvous. eval/ never imports submitit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DETECTION_BENCHMARKS = ("voc07+12_det", "coco_det", "coco_seg")


@dataclass(frozen=True)
class DetectionJob:
    """Arguments of ``eval.run_all.main`` restricted to detection benchmarks.

    Attributes:
        checkpoint: Any checkpoint ``eval/run_all.py`` accepts.
        benchmarks: Which detection benchmarks.
        suite: ``paper`` (or ``mini`` for a smoke run).
        data_root: ``--data-root``.
        out: Records folder.
        overrides: ``key=value`` as on the command line (``coco_det.num_gpus=4`` …).
        force: Re-run benchmarks already recorded.
    """

    checkpoint: str
    benchmarks: tuple[str, ...] = DETECTION_BENCHMARKS
    suite: str = "paper"
    data_root: str | None = None
    out: str = "results/records"
    overrides: tuple[str, ...] = ()
    force: bool = False

    def __call__(self) -> list[dict[str, Any]]:
        """Run and return the records (``eval.run_all.main``)."""
        from eval import run_all

        return run_all.main(self.checkpoint, self.suite, self.data_root,
                            ",".join(self.benchmarks), self.out, force=self.force,
                            overrides=list(self.overrides))


def run_detection_job(job: DetectionJob) -> list[dict[str, Any]]:
    """Module-level entry for ``sweeps.job.Job(fn, arg)``: returns ``job()``."""
    return job()
