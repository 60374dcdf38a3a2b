"""The Detectron2 backend for real, on the CPU (skipped, with the reason, without detectron2).

- Our VOC metric (``eval.detection.metrics``) against Detectron2's
  ``PascalVOCDetectionEvaluator`` on the same predictions: the same AP, AP50, AP75.
- The registered benchmarks through Detectron2 on tiny VOC and COCO sets (a narrow
  ResNet-50, 2 iterations): conversion, config → ``CfgNode``, dataset registration,
  ``DefaultTrainer`` with the extra-norm C4 heads, the evaluators, ``metrics.json``; one
  evaluation per run; each run's ``log.txt`` holds that run only; a failed run can be
  retried (Detectron2's own JSON log does not take our ``metrics.json``).
- The same transfer submitted as a SLURM job (submitit, the local cluster) when one runs.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("detectron2", reason="detectron2 is not installed: the Detectron2 backend "
                                         "runs only where it imports")

from backbones import build_backbone  # noqa: E402
from eval.config import DataPaths, RunSettings  # noqa: E402
from eval.detection import bench, d2_backend  # noqa: E402
from eval.detection.data import load_split, voc_class_names  # noqa: E402
from eval.detection.metrics import Prediction, voc_detection_ap  # noqa: E402
from eval.detection.tv_train import DetectionRunFailed  # noqa: E402
from eval.features import FeatureCache  # noqa: E402
from eval.registry import Context  # noqa: E402
from tests.detection_utils import one_thread, tiny_coco  # noqa: E402,F401  (autouse fixture)

# pycocotools and Detectron2's COCO code against NumPy 2 (copy=False in __array__).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
MEAN_STD = ([0.286] * 3, [0.353] * 3)
CLASSES = ("bag", "shirt", "sneaker")
FAST = ("SOLVER.MAX_ITER=2", "TEST.PRECISE_BN.NUM_ITER=1")


def _voc_xml(image_id: str, objects: list[tuple[str, tuple[int, ...], int]]) -> str:
    objs = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b, d in objects)
    return (f"<annotation><filename>{image_id}.jpg</filename><size><width>64</width>"
            f"<height>64</height><depth>3</depth></size>{objs}</annotation>\n")


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """VOCdevkit/VOC2007: 64×64 images, two shapes each (one per class shape), every class
    in both splits, one ``difficult`` object in the test split."""
    root = tmp_path_factory.mktemp("d2-voc") / "VOCdevkit"
    folder = root / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (folder / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    splits = {"trainval": [], "test": []}
    for n in range(24):
        split = "trainval" if n < 16 else "test"
        image_id = f"{n + 1:06d}"
        canvas = rng.integers(0, 40, (64, 64)).astype(np.uint8)
        objects = []
        for k, cell in enumerate(rng.permutation(4)[:2]):
            c = (n + k) % len(CLASSES)
            h, w = ((20, 20), (26, 12), (12, 26))[c]
            top, left = 32 * (cell // 2) + 3, 32 * (cell % 2) + 3
            canvas[top:top + h, left:left + w] = 200 + 20 * c
            difficult = int(split == "test" and n == 16 and k == 0)
            objects.append((CLASSES[c], (left + 1, top + 1, left + w, top + h), difficult))
        Image.fromarray(canvas).convert("RGB").save(folder / "JPEGImages" / f"{image_id}.jpg",
                                                    quality=95)
        (folder / "Annotations" / f"{image_id}.xml").write_text(_voc_xml(image_id, objects))
        splits[split].append(image_id)
    for split, ids in splits.items():
        (folder / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


@pytest.fixture(scope="module")
def coco_root(fmnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_coco(tmp_path_factory.mktemp("d2-coco") / "coco", fmnist_root, 16, 8)


def _context(tmp_path: Path) -> Context:
    model = build_backbone("resnet50", width=8).eval()
    run = RunSettings(device="cpu", num_workers=0, mean=tuple(MEAN_STD[0]),
                      std=tuple(MEAN_STD[1]))
    return Context(model, {"backbone": "resnet50", "backbone_kwargs": {"width": 8}}, "sha-d2",
                   run, DataPaths().resolve(str(tmp_path)), FeatureCache(None))


def test_voc_metric_matches_detectron2_evaluator(voc_root: Path) -> None:
    from detectron2.evaluation import PascalVOCDetectionEvaluator
    from detectron2.structures import Boxes, Instances

    classes = voc_class_names(voc_root, ("voc_2007_test",))
    assert classes == CLASSES
    split = load_split("voc_2007_test", voc_root, voc_classes=classes)
    spec = {"kind": "voc", "dirname": str(voc_root / "VOC2007"), "split": "test", "year": 2007,
            "classes": list(classes)}
    name = d2_backend._register_datasets({"voc_2007_test": spec})["voc_2007_test"]
    # Ground truth moved by whole pixels (d2 writes boxes with one decimal), some labels
    # wrong, a duplicate and a false positive per image; distinct scores (no rank ties).
    rng = np.random.default_rng(1)
    preds = {}
    scores = iter(rng.permutation(np.arange(1, 1000))[:200] / 1000.0)
    for i, rec in enumerate(split.images):
        boxes = rec.boxes + rng.integers(-4, 5, rec.boxes.shape)
        labels = np.where(rng.random(len(rec.labels)) < 0.2, (rec.labels + 1) % 3, rec.labels)
        boxes = np.concatenate([boxes, boxes[:1] + 1, [[5.0, 5.0, 25.0, 30.0]]])
        labels = np.concatenate([labels, labels[:1], [int(rng.integers(3))]])
        preds[i] = Prediction(boxes.astype(np.float32),
                              np.array([next(scores) for _ in labels], np.float32), labels)
    ours = voc_detection_ap(split, preds)
    evaluator = PascalVOCDetectionEvaluator(name)
    evaluator.reset()
    for i, rec in enumerate(split.images):
        p = preds[i]
        inst = Instances((rec.height, rec.width), pred_boxes=Boxes(torch.from_numpy(p.boxes)),
                         scores=torch.from_numpy(p.scores),
                         pred_classes=torch.from_numpy(p.labels.astype(np.int64)))
        evaluator.process([{"image_id": rec.image_id}], [{"instances": inst}])
    theirs = evaluator.evaluate()["bbox"]
    assert 0 < theirs["AP50"] < 100
    for key in ("AP", "AP50", "AP75"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-6), key


def test_benchmarks_run_through_detectron2(tmp_path: Path, voc_root: Path, coco_root: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = []
    real = d2_backend.run_job
    monkeypatch.setattr(d2_backend, "run_job", lambda job: jobs.append(job) or real(job))
    ctx = _context(tmp_path)
    runs = str(tmp_path / "runs")
    coco = dataclasses.replace(bench.COCO_MINI, backend="detectron2", coco_root=str(coco_root),
                               output_dir=runs, overrides=FAST)
    det, seg = bench.coco_det(ctx, coco), bench.coco_seg(ctx, coco)
    voc = bench.voc0712_det(ctx, dataclasses.replace(
        bench.VOC_MINI, backend="detectron2", voc_root=str(voc_root), output_dir=runs,
        overrides=FAST))
    assert len(jobs) == 2  # coco_seg reused coco_det's Mask R-CNN run
    assert [m.name for m in voc] == ["AP", "AP50", "AP75"]
    assert {m.name for m in det} | set(det[0].extra.get("undefined", [])) == {
        "AP", "AP50", "AP75", "APs", "APm", "APl"}
    for m in (*det, *seg, *voc):
        assert m.extra["backend"] == "detectron2" and np.isfinite(m.value)
    assert det[0].extra["model"] == "Mask R-CNN R50-C4" and seg[0].extra["iou_type"] == "segm"
    assert voc[0].extra["model"] == "Faster R-CNN R50-C4"
    assert voc[0].extra["ap_definition"] == "VOC07 11-point"
    coco_dir, voc_dir = Path(det[0].extra["run_dir"]), Path(voc[0].extra["run_dir"])
    # The first run's log does not receive the second run's lines.
    assert "voc_2007" not in (coco_dir / "log.txt").read_text()
    assert "coco_2017" not in (voc_dir / "log.txt").read_text()
    for run_dir in (coco_dir, voc_dir):
        body = json.loads((run_dir / "metrics.json").read_text())
        assert body["backend"] == "detectron2" and "bbox" in body["results"]
        assert (run_dir / d2_backend.TRAIN_METRICS_FILE).is_file()  # Detectron2's JSON lines
        log = (run_dir / "log.txt").read_text()
        assert log.count("in csv format") == 1, "the final model was evaluated twice"
    assert set(json.loads((coco_dir / "metrics.json").read_text())["results"]) == {"bbox",
                                                                                  "segm"}
    # The res5 head (C4) and the backbone stages came from the converted checkpoint.
    with open(voc_dir / "backbone_d2.pkl", "rb") as f:
        assert "res5.2.conv3.norm.running_var" in pickle.load(f)["model"]


def test_failed_detectron2_run_is_reported_and_can_be_retried(tmp_path: Path,
                                                             coco_root: Path) -> None:
    ctx = _context(tmp_path)
    cfg = dataclasses.replace(bench.COCO_MINI, backend="detectron2", coco_root=str(coco_root),
                              output_dir=str(tmp_path / "runs"),
                              overrides=("SOLVER.BASE_LR=.nan", "SOLVER.MAX_ITER=5"))
    for _attempt in range(2):  # the retry runs again; before, it failed parsing metrics.json
        with pytest.raises(DetectionRunFailed, match=r"(?s)detectron2 mini_coco_C4 run failed: "
                                                     r"FloatingPointError.*log: .*log\.txt"):
            bench.coco_det(ctx, cfg)
    run_dir = next((tmp_path / "runs").iterdir())
    assert (run_dir / "FAILED").is_file() and not (run_dir / "metrics.json").exists()


def test_detectron2_transfer_as_a_slurm_job(slurm_cluster, tmp_path: Path,
                                            voc_root: Path) -> None:
    """The submitit/SLURM path: DetectionJob in sweeps' Job, on the local cluster."""
    submitit = pytest.importorskip("submitit")
    from eval.detection.job import DetectionJob, run_detection_job
    from sweeps.job import Job

    torch.manual_seed(0)
    ckpt = tmp_path / "r50w8.pth"
    torch.save({"format": "sslbench.backbone/1",
                "state_dict": build_backbone("resnet50", width=8).state_dict(),
                "meta": {"backbone": "resnet50", "backbone_kwargs": {"width": 8},
                         "method": "random"}}, ckpt)
    job = DetectionJob(str(ckpt), benchmarks=("voc07+12_det",), suite="mini",
                       data_root=str(tmp_path / "data"), out=str(tmp_path / "records"),
                       overrides=("voc07+12_det.backend=detectron2",
                                  f"voc07+12_det.voc_root={voc_root}",
                                  f"voc07+12_det.output_dir={tmp_path / 'runs'}",
                                  f"voc07+12_det.overrides={json.dumps(list(FAST))}"))
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    executor.update_parameters(timeout_min=10, cpus_per_task=1, tasks_per_node=1, nodes=1)
    records = executor.submit(Job(run_detection_job, job, run_dir=str(tmp_path),
                                  num_threads=1, kind="eval")).result()
    assert [r["metric"] for r in records] == ["AP", "AP50", "AP75"]
    for r in records:
        assert r["status"] == "ok" and r["extra"]["backend"] == "detectron2"
        assert np.isfinite(r["value"])
    assert len(list((tmp_path / "records").glob("*.json"))) == 3
