"""Detection with the torchvision backend, end to end on the mini VOC and mini COCO (CPU).

A randomly initialised narrow ``resnet18_small`` is fine-tuned for a few hundred
iterations; AP on training images must rise well above its value at initialisation.
Also: the registered benchmarks (records carry the backend; coco_det and coco_seg share
one run), a diverging run reported as failed with its log, and bad inputs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
import torch

from backbones import build_backbone
from eval.config import DataPaths, RunSettings
from eval.datasets import DatasetError
from eval.detection import bench
from eval.detection.configs import build_config
from eval.detection.data import DetectionDataset, load_split, voc_class_names
from eval.detection.metrics import coco_ap, voc_detection_ap
from eval.detection.tv_models import build_detector
from eval.detection.tv_train import DetectionRunFailed, predict, train
from eval.features import FeatureCache
from eval.registry import BENCHMARKS, Context
from tests.detection_utils import one_thread, tiny_coco  # noqa: F401  (autouse fixture)

CPU = torch.device("cpu")
MEAN_STD = ([0.286] * 3, [0.353] * 3)  # Fashion-MNIST, as the mini suite normalises
WIDTH = 8
LOG = logging.getLogger("sslbench.tests.detection")


@pytest.fixture(scope="module")
def coco_root(fmnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_coco(tmp_path_factory.mktemp("det-e2e") / "coco", fmnist_root, 96, 16)


def _detector(preset: str, num_classes: int, *overrides: str) -> tuple[torch.nn.Module, dict]:
    cfg, extra = build_config(preset, backbone="resnet18_small", backbone_kwargs={"width": WIDTH},
                              num_classes=num_classes, overrides=overrides,
                              pixel_mean_std=MEAN_STD)
    assert extra == []
    torch.manual_seed(0)
    return build_detector(build_backbone("resnet18_small", width=WIDTH), cfg), cfg


def test_mini_voc_faster_rcnn_c4_learns(tmp_path: Path) -> None:
    from eval.mini import ensure_mini

    try:
        ensure_mini(tmp_path / "mini")
    except FileNotFoundError as e:
        pytest.skip(f"the mini VOC needs the real Fashion-MNIST: {e}")
    voc_root = tmp_path / "mini" / "VOCdevkit"
    classes = voc_class_names(voc_root, ("voc_2007_trainval",))
    split = load_split("voc_2007_trainval", voc_root, voc_classes=classes)
    probe = split.subset(range(48))
    model, cfg = _detector("mini_voc_C4", len(classes), "SOLVER.MAX_ITER=250",
                           "SOLVER.STEPS=[180, 230]", "TEST.PRECISE_BN.NUM_ITER=5")
    before = voc_detection_ap(probe, predict(model, probe, cfg, CPU))
    summary = train(model, DetectionDataset(split, train=True), cfg, CPU, LOG)
    after = voc_detection_ap(probe, predict(model, probe, cfg, CPU))
    print(f"mini VOC (250 it, {summary.seconds:.0f}s): AP50 {before['AP50']:.2f} → "
          f"{after['AP50']:.2f}, AP {before['AP']:.2f} → {after['AP']:.2f}")
    assert after["AP50"] > before["AP50"] + 5 and after["AP"] > before["AP"]


def test_mini_coco_mask_rcnn_c4_learns(coco_root: Path) -> None:
    split = load_split("coco_2017_train", coco_root=coco_root)
    probe = split.subset(range(48))
    model, cfg = _detector("mini_coco_C4", len(split.classes), "SOLVER.MAX_ITER=250",
                           "SOLVER.STEPS=[180, 230]", "TEST.PRECISE_BN.NUM_ITER=5")
    preds = predict(model, probe, cfg, CPU)
    before = {t: coco_ap(probe, preds, t) for t in ("bbox", "segm")}
    summary = train(model, DetectionDataset(split, train=True, masks=True), cfg, CPU, LOG)
    preds = predict(model, probe, cfg, CPU)
    after = {t: coco_ap(probe, preds, t) for t in ("bbox", "segm")}
    print(f"mini COCO (250 it, {summary.seconds:.0f}s): "
          + ", ".join(f"{t} AP50 {before[t]['AP50']:.2f} → {after[t]['AP50']:.2f}"
                      for t in before))
    for t in ("bbox", "segm"):
        assert after[t]["AP50"] > before[t]["AP50"] + 5, t


def test_mini_coco_mask_rcnn_fpn_trains_and_predicts(coco_root: Path) -> None:
    split = load_split("coco_2017_train", coco_root=coco_root)
    model, cfg = _detector("mini_coco_FPN", len(split.classes), "SOLVER.MAX_ITER=3",
                           "TEST.PRECISE_BN.ENABLED=false")
    summary = train(model, DetectionDataset(split, train=True, masks=True), cfg, CPU, LOG)
    assert set(summary.last_losses) >= {"loss_classifier", "loss_box_reg", "loss_mask",
                                        "loss_objectness", "loss_rpn_box_reg"}
    preds = predict(model, split.subset(range(4)), cfg, CPU)
    assert len(preds) == 4 and all(p.masks is not None for p in preds.values())


# -------------------------------------------------------------- the registered benchmarks


def _context(backbone: str, kwargs: dict, data_root: Path) -> Context:
    model = build_backbone(backbone, **kwargs).eval()
    run = RunSettings(device="cpu", num_workers=0, mean=tuple(MEAN_STD[0]),
                      std=tuple(MEAN_STD[1]))
    return Context(model, {"backbone": backbone, "backbone_kwargs": kwargs}, "sha-test", run,
                   DataPaths().resolve(str(data_root)), FeatureCache(None))


def test_benchmarks_record_backend_and_share_the_mask_rcnn_run(
        tmp_path: Path, fmnist_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSLBENCH_FASHION_MNIST", str(fmnist_root))  # small mini COCO source
    calls = []
    real_train = bench.train
    monkeypatch.setattr(bench, "train", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    ctx = _context("resnet18_small", {"width": WIDTH}, tmp_path / "data")
    cfg = dataclasses.replace(bench.COCO_MINI, output_dir=str(tmp_path / "runs"), overrides=(
        "SOLVER.MAX_ITER=4", "TEST.PRECISE_BN.NUM_ITER=2"))
    det = BENCHMARKS.get("coco_det").factory(ctx, cfg)
    seg = BENCHMARKS.get("coco_seg").factory(ctx, cfg)
    # The mini COCO has only small objects: APm / APl are undefined, so not recorded.
    assert [m.name for m in det] == [m.name for m in seg] == ["AP", "AP50", "AP75", "APs"]
    assert det[0].extra["undefined"] == ["APm", "APl"]
    for m in (*det, *seg):
        assert m.extra["backend"] == "torchvision" and m.extra["model"] == "Mask R-CNN R18-C4"
    assert det[0].extra["iou_type"] == "bbox" and seg[0].extra["iou_type"] == "segm"
    assert det[0].extra["run_dir"] == seg[0].extra["run_dir"] and calls == [1]
    run_dir = Path(det[0].extra["run_dir"])
    assert {"config.yaml", "log.txt", "metrics.json"} <= {p.name for p in run_dir.iterdir()}
    assert set(ctx.fingerprints) == {"coco_2017_train", "coco_2017_val"}
    assert (tmp_path / "data" / "coco" / "annotations" / "instances_val2017.json").is_file()


def test_diverging_run_is_failed_with_its_log(coco_root: Path, tmp_path: Path) -> None:
    ctx = _context("resnet18_small", {"width": WIDTH}, tmp_path / "data")
    # NaN learning rate: the weights are NaN after the first step, the loss at iteration 1.
    cfg = dataclasses.replace(bench.COCO_MINI, coco_root=str(coco_root),
                              output_dir=str(tmp_path / "runs"),
                              overrides=("SOLVER.BASE_LR=.nan", "SOLVER.MAX_ITER=5"))
    with pytest.raises(DetectionRunFailed, match=r"(?s)infinite or NaN at iteration 1.*log: "
                                                 r".*log\.txt.*non-finite loss") as info:
        bench.coco_det(ctx, cfg)
    assert not isinstance(info.value, DatasetError)  # the battery records it as failed
    run_dir = next((tmp_path / "runs").iterdir())
    assert (run_dir / "FAILED").is_file() and not (run_dir / "metrics.json").exists()


def test_not_a_resnet_is_skipped_with_a_clear_reason(tmp_path: Path) -> None:
    ctx = _context("tiny_cnn", {"width": 4}, tmp_path)
    with pytest.raises(bench.DetectionNotApplicable, match="needs a ResNet backbone.*tiny_cnn"):
        bench.voc0712_det(ctx, bench.VOC_PAPER)
    assert issubclass(bench.DetectionNotApplicable, DatasetError)


def test_missing_data_names_the_layout(tmp_path: Path) -> None:
    ctx = _context("resnet18_small", {"width": WIDTH}, tmp_path)
    with pytest.raises(DatasetError, match=r"VOC2007/ImageSets/Main/trainval\.txt not found.*"
                                           r"Expected PASCAL VOC"):
        bench.voc0712_det(ctx, bench.VOC_PAPER)
    with pytest.raises(DatasetError, match=r"instances_train2017\.json not found.*Expected COCO"):
        bench.coco_det(ctx, bench.COCO_PAPER)
    with pytest.raises(ValueError, match="needs a voc preset"):
        bench.voc0712_det(ctx, bench.COCO_PAPER)


def test_torchvision_backend_refuses_keys_it_does_not_implement(tmp_path: Path,
                                                                 coco_root: Path) -> None:
    ctx = _context("resnet18_small", {"width": WIDTH}, tmp_path)
    cfg = dataclasses.replace(bench.COCO_MINI, coco_root=str(coco_root),
                              overrides=("SOLVER.CLIP_GRADIENTS.ENABLED=True",))
    with pytest.raises(ValueError, match="does not implement.*CLIP_GRADIENTS"):
        bench.coco_det(ctx, cfg)


def test_detectron2_path_glue_without_detectron2(tmp_path: Path, coco_root: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """What the benchmark hands to Detectron2 (run_job faked: detectron2 is not needed)."""
    import pickle

    from eval.detection import d2_backend

    jobs = []

    def fake_run_job(job: d2_backend.D2Job) -> dict:
        jobs.append(job)
        return {"bbox": {"AP": 40.0, "AP50": 60.0, "AP75": 42.0, "APs": 20.0, "APm": 45.0,
                         "APl": 55.0}, "segm": {"AP": 35.0, "AP50": 57.0, "AP75": 37.0,
                                                "APs": 15.0, "APm": 40.0, "APl": 50.0}}

    monkeypatch.setattr(d2_backend, "available", lambda: True)
    monkeypatch.setattr(d2_backend, "run_job", fake_run_job)
    ctx = _context("resnet50", {"width": 8}, tmp_path)
    cfg = dataclasses.replace(bench.COCO_PAPER, coco_root=str(coco_root), num_gpus=2,
                              output_dir=str(tmp_path / "runs"),
                              overrides=("SOLVER.AMP.ENABLED=True",))
    metrics = bench.coco_seg(ctx, cfg)
    assert [(m.name, m.value) for m in metrics][:2] == [("AP", 35.0), ("AP50", 57.0)]
    assert metrics[0].extra["backend"] == "detectron2" and metrics[0].extra["num_gpus"] == 2
    (job,) = jobs
    assert job.num_gpus == 2 and job.config["SOLVER"]["IMS_PER_BATCH"] == 4  # 16 × 2/8
    assert job.config["SOLVER"]["MAX_ITER"] == 360000 and job.config["MODEL"]["MASK_ON"]
    assert job.config["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 10
    assert job.config["MODEL"]["PIXEL_MEAN"] == [round(255 * 0.286, 4)] * 3
    assert "SOLVER.AMP.ENABLED=True" in job.extra_overrides  # for Detectron2 to validate
    assert ("MODEL.DEVICE=cpu" in job.extra_overrides) == (not torch.cuda.is_available())
    assert job.datasets["coco_2017_val"] == {
        "kind": "coco", "json": str(coco_root / "annotations" / "instances_val2017.json"),
        "image_root": str(coco_root / "val2017")}
    with open(job.config["MODEL"]["WEIGHTS"], "rb") as f:
        weights = pickle.load(f)
    assert weights["matching_heuristics"] and "res5.2.conv3.norm.running_var" in weights["model"]
    assert Path(job.run_dir) == Path(metrics[0].extra["run_dir"])


def test_detection_job_is_a_picklable_run_all_call(monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    from eval import run_all
    from eval.detection.job import DetectionJob, run_detection_job

    seen = []
    monkeypatch.setattr(run_all, "main", lambda *a, **k: seen.append((a, k)) or ["rec"])
    job = pickle.loads(pickle.dumps(DetectionJob("ckpt.pth", ("coco_det",), out="recs",
                                                 overrides=("coco_det.num_gpus=8",))))
    assert run_detection_job(job) == ["rec"]
    assert seen == [(("ckpt.pth", "paper", None, "coco_det", "recs"),
                     {"force": False, "overrides": ["coco_det.num_gpus=8"]})]


def test_run_all_records_detection_ok_and_failed(tmp_path: Path) -> None:
    """Through the battery: torchvision records, and a NaN run recorded as failed + log."""
    from eval import run_all, suites

    if "coco_det" not in suites.SUITES["mini"]().benchmarks:
        pytest.skip("the detection benchmarks are not in eval/suites.py's mini suite yet")
    model = build_backbone("resnet18_small", width=WIDTH)
    ckpt = tmp_path / "backbone.pth"
    torch.save({"format": "sslbench.backbone/1", "state_dict": model.state_dict(),
                "meta": {"backbone": "resnet18_small", "backbone_kwargs": {"width": WIDTH}}},
               ckpt)
    try:
        from eval.mini import ensure_mini

        ensure_mini(tmp_path / "mini")
    except FileNotFoundError as e:
        pytest.skip(f"the mini suite needs the real Fashion-MNIST: {e}")
    runs = str(tmp_path / "runs")
    records = run_all.main(str(ckpt), "mini", str(tmp_path / "mini"), "coco_det,coco_seg",
                           str(tmp_path / "records"), overrides=[
        f"coco_det.output_dir={runs}", f"coco_seg.output_dir={runs}",
        'coco_det.overrides=["SOLVER.MAX_ITER=3", "TEST.PRECISE_BN.NUM_ITER=1"]',
        'coco_seg.overrides=["SOLVER.BASE_LR=.nan", "SOLVER.MAX_ITER=3"]'])
    det = [r for r in records if r["benchmark"] == "coco_det"]
    assert det and all(r["status"] == "ok" and r["extra"]["backend"] == "torchvision"
                       for r in det)
    (seg,) = [r for r in records if r["benchmark"] == "coco_seg"]
    assert seg["status"] == "failed" and seg["value"] is None
    assert "NaN at iteration 1" in seg["reason"] and "log.txt" in seg["reason"]


# ------------------------------------------------- the backend in records, reuse, retries


def _fake_results(ap: float) -> dict[str, dict[str, float]]:
    names = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    return {"bbox": {n: ap + i for i, n in enumerate(names)},
            "segm": {n: ap - 5 + i for i, n in enumerate(names)}}


def test_resolve_backend_matches_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from eval.detection import d2_backend

    monkeypatch.setattr(d2_backend, "available", lambda: True)
    assert bench.resolve_backend(bench.COCO_PAPER, "resnet50") == "detectron2"
    # auto: Detectron2 cannot build a 3×3 stem, so torchvision.
    assert bench.resolve_backend(bench.COCO_PAPER, "resnet18_small") == "torchvision"
    assert bench.resolve_backend(bench.COCO_MINI, "resnet50") == "torchvision"  # explicit
    assert bench.resolve_backend(bench.COCO_PAPER, "tiny_cnn") is None  # not a ResNet
    monkeypatch.setattr(d2_backend, "available", lambda: False)
    assert bench.resolve_backend(bench.COCO_PAPER, "resnet50") == "torchvision"


def test_run_all_keeps_both_backends_of_one_cell(tmp_path: Path, coco_root: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A torchvision run after a Detectron2 one is neither skipped as 'already recorded'
    nor written over the Detectron2 records; a failure is recorded under its backend, a
    skip (backend-independent) without one, and a later success removes that skip."""
    from eval import run_all
    from eval.detection import d2_backend

    calls: list[str] = []

    def fake_d2(job: d2_backend.D2Job) -> dict:
        calls.append("detectron2")
        return _fake_results(40.0)

    def fake_tv(*args: object, **kwargs: object) -> dict:
        calls.append("torchvision")
        if fail_tv:
            raise RuntimeError("boom")
        return {"results": _fake_results(30.0), "train_seconds": 0.0, "iterations": 1}

    fail_tv = False
    monkeypatch.setattr(d2_backend, "available", lambda: True)
    monkeypatch.setattr(d2_backend, "run_job", fake_d2)
    monkeypatch.setattr(bench, "_run_torchvision", fake_tv)
    ckpt = tmp_path / "backbone.pth"
    torch.save({"format": "sslbench.backbone/1",
                "state_dict": build_backbone("resnet50", width=8).state_dict(),
                "meta": {"backbone": "resnet50", "backbone_kwargs": {"width": 8}}}, ckpt)
    out = tmp_path / "records"

    def run(backend: str, *extra: str, force: bool = False) -> list[dict]:
        return run_all.main(str(ckpt), "paper", str(tmp_path / "data"), "coco_det", str(out),
                            force=force, overrides=[
            "device=cpu", f"coco_det.coco_root={coco_root}",
            f"coco_det.output_dir={tmp_path / 'runs'}", f"coco_det.backend={backend}", *extra])

    (skip,) = run("detectron2", f"coco_det.coco_root={tmp_path / 'nowhere'}")
    assert skip["status"] == "skipped" and skip["extra"] == {}
    assert (out / f"{skip['id']}.json").is_file()
    d2 = run("detectron2")
    assert not (out / f"{skip['id']}.json").exists()  # superseded, not a stale column
    tv = run("torchvision")
    again = run("detectron2")  # recorded: not run again
    assert calls == ["detectron2", "torchvision"]
    assert {r["id"] for r in again} == {r["id"] for r in d2}
    assert len(list(out.glob("*.json"))) == 12  # 6 metrics × 2 backends
    by_backend = {b: {r["metric"]: r["value"] for r in recs} for b, recs in
                  (("detectron2", d2), ("torchvision", tv))}
    assert by_backend["detectron2"]["AP"] == 40.0 and by_backend["torchvision"]["AP"] == 30.0
    assert all(r["extra"]["backend"] == "detectron2" for r in d2)
    fail_tv = True
    (failed,) = run("torchvision", "coco_det.reuse=false", force=True)
    assert failed["status"] == "failed" and failed["extra"] == {"backend": "torchvision"}
    ap = {(r["metric"], r["extra"]["backend"]): r for r in
          (json.loads(p.read_text()) for p in out.glob("*.json"))}
    assert len(ap) == 12  # the failure replaced torchvision's AP record, nothing else
    assert ap[("AP", "torchvision")]["status"] == "failed"
    assert ap[("AP", "detectron2")]["status"] == "ok"


def test_a_run_folder_without_our_results_is_run_again(tmp_path: Path, coco_root: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A crashed run leaves no (or a foreign) metrics.json: the next attempt runs (resumes)."""
    from eval.detection import d2_backend

    attempts = []

    def fake_run_job(job: d2_backend.D2Job) -> dict:
        attempts.append(job.run_dir)
        if len(attempts) == 1:  # crashed after Detectron2's JSON lines were written there
            (Path(job.run_dir) / "metrics.json").write_text('{"iteration": 19}\n'
                                                            '{"iteration": 39}\n')
            raise RuntimeError("killed")
        return _fake_results(40.0)

    monkeypatch.setattr(d2_backend, "available", lambda: True)
    monkeypatch.setattr(d2_backend, "run_job", fake_run_job)
    ctx = _context("resnet50", {"width": 8}, tmp_path)
    cfg = dataclasses.replace(bench.COCO_PAPER, coco_root=str(coco_root), backend="detectron2",
                              output_dir=str(tmp_path / "runs"))
    with pytest.raises(DetectionRunFailed, match="RuntimeError: killed"):
        bench.coco_det(ctx, cfg)
    metrics = bench.coco_det(ctx, cfg)
    assert metrics[0].value == 40.0 and attempts[0] == attempts[1]
    body = json.loads((Path(attempts[0]) / "metrics.json").read_text())
    assert body["backend"] == "detectron2" and body["results"]["bbox"]["AP"] == 40.0


def test_detectron2_refuses_an_empty_schedule(tmp_path: Path, coco_root: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from eval.detection import d2_backend

    monkeypatch.setattr(d2_backend, "available", lambda: True)
    monkeypatch.setattr(d2_backend, "run_job", lambda job: pytest.fail("must not run"))
    ctx = _context("resnet50", {"width": 8}, tmp_path)
    cfg = dataclasses.replace(bench.COCO_PAPER, coco_root=str(coco_root), backend="detectron2",
                              output_dir=str(tmp_path / "runs"), overrides=("SOLVER.MAX_ITER=0",))
    with pytest.raises(ValueError, match=r"detectron2 needs SOLVER\.MAX_ITER ≥ 1, got 0"):
        bench.coco_det(ctx, cfg)


def test_reuse_false_trains_again_instead_of_resuming(tmp_path: Path, coco_root: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from eval.detection import d2_backend

    jobs: list[d2_backend.D2Job] = []

    def fake_run_job(job: d2_backend.D2Job) -> dict:
        jobs.append(job)
        return _fake_results(40.0 + len(jobs))

    monkeypatch.setattr(d2_backend, "available", lambda: True)
    monkeypatch.setattr(d2_backend, "run_job", fake_run_job)
    ctx = _context("resnet50", {"width": 8}, tmp_path)
    cfg = dataclasses.replace(bench.COCO_PAPER, coco_root=str(coco_root), backend="detectron2",
                              output_dir=str(tmp_path / "runs"))
    assert bench.coco_det(ctx, cfg)[0].value == 41.0
    assert bench.coco_det(ctx, cfg)[0].value == 41.0  # finished: reused, not run
    again = bench.coco_det(ctx, dataclasses.replace(cfg, reuse=False))
    assert again[0].value == 42.0 and [j.resume for j in jobs] == [True, False]
    assert jobs[0].run_dir == jobs[1].run_dir
