"""Detection: torchvision → Detectron2 conversion and the Detectron2 configs built in code.

Everything here runs without detectron2; the tests at the end that need it skip (with the
reason) where it is not installed and check our mirror against the real thing where it is.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml

from backbones import build_backbone
from eval.detection import configs
from eval.detection.configs import ConfigError, build_config
from eval.detection.convert import (
    ConversionError,
    convert_checkpoint,
    d2_name,
    main,
    torchvision_to_detectron2,
)
from eval.detection.tv_models import NotAResNetError, require_resnet

ROOT = Path(__file__).resolve().parent.parent
NORM = ("norm.weight", "norm.bias", "norm.running_mean", "norm.running_var")


def detectron2_r50_keys() -> set[str]:
    """Detectron2's ResNet-50 parameter and buffer names, written from its module layout
    (BasicStem.conv1 with .norm; res2..res5 of BottleneckBlocks conv1..3 (+ shortcut in
    each stage's first block), each Conv2d with a .norm)."""
    keys = {"stem.conv1.weight", *(f"stem.conv1.{n}" for n in NORM)}
    for stage, blocks in zip(range(2, 6), (3, 4, 6, 3)):
        for b in range(blocks):
            for conv in ("conv1", "conv2", "conv3", *(("shortcut",) if b == 0 else ())):
                name = f"res{stage}.{b}.{conv}"
                keys |= {f"{name}.weight", *(f"{name}.{n}" for n in NORM)}
    return keys


@pytest.fixture(scope="module")
def r50_sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_backbone("resnet50")
    for m in model.modules():  # non-trivial statistics, so that copying them is checked
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return model.state_dict()


def test_every_resnet50_key_maps_to_detectron2_names(r50_sd: dict) -> None:
    weights, report = torchvision_to_detectron2(r50_sd)
    assert set(weights) == detectron2_r50_keys()
    # Nothing lost: every key but the BN counters converted, one to one.
    bnt = [k for k in r50_sd if k.endswith("num_batches_tracked")]
    assert sorted(report.dropped_num_batches_tracked) == sorted(bnt) and len(bnt) == 53
    assert set(report.converted) == set(r50_sd) - set(bnt)
    assert len(set(report.converted.values())) == len(report.converted) == len(weights)
    assert report.dropped_head == []
    for src, dst in report.converted.items():
        assert isinstance(weights[dst], np.ndarray)
        assert weights[dst].shape == tuple(r50_sd[src].shape)
        assert np.array_equal(weights[dst], r50_sd[src].numpy())


@pytest.mark.parametrize("src,dst", [
    ("conv1.weight", "stem.conv1.weight"),
    ("bn1.weight", "stem.conv1.norm.weight"),
    ("bn1.running_var", "stem.conv1.norm.running_var"),
    ("layer1.0.conv1.weight", "res2.0.conv1.weight"),
    ("layer1.0.bn2.running_var", "res2.0.conv2.norm.running_var"),
    ("layer3.5.bn3.bias", "res4.5.conv3.norm.bias"),
    ("layer4.2.conv3.weight", "res5.2.conv3.weight"),
    ("layer2.0.downsample.0.weight", "res3.0.shortcut.weight"),
    ("layer2.0.downsample.1.weight", "res3.0.shortcut.norm.weight"),
    ("layer4.0.downsample.1.running_mean", "res5.0.shortcut.norm.running_mean"),
])
def test_documented_examples(src: str, dst: str) -> None:
    assert d2_name(src) == dst


def test_torchvision_classifier_is_dropped_and_reported() -> None:
    sd = torchvision.models.resnet50().state_dict()
    weights, report = torchvision_to_detectron2(sd)
    assert report.dropped_head == ["fc.weight", "fc.bias"]
    assert set(weights) == detectron2_r50_keys()


def test_unmapped_key_is_an_error(r50_sd: dict) -> None:
    sd = dict(r50_sd)
    sd["layer1.0.se.fc1.weight"] = torch.zeros(4, 4)
    with pytest.raises(ConversionError, match=r"layer1\.0\.se\.fc1\.weight"):
        torchvision_to_detectron2(sd)


@pytest.mark.parametrize("name,kwargs", [("tiny_cnn", {"width": 4}),
                                         ("vit_small_patch16", {"img_size": 32})])
def test_non_resnet_is_a_clear_error(name: str, kwargs: dict) -> None:
    model = build_backbone(name, **kwargs)
    with pytest.raises(ConversionError, match="ResNet"):
        torchvision_to_detectron2(model.state_dict())
    with pytest.raises(NotAResNetError, match=f"'{name}'.*no such stages"):
        require_resnet(model, name)
    with pytest.raises(ConfigError, match=f"needs a ResNet backbone.*'{name}'"):
        configs.resnet_settings(name, kwargs)


def _save_ours(path: Path, name: str, **kwargs: object) -> Path:
    model = build_backbone(name, **kwargs)
    torch.save({"format": "sslbench.backbone/1", "state_dict": model.state_dict(),
                "meta": {"backbone": name, "backbone_kwargs": kwargs, "method": "vicreg"}}, path)
    return path


def test_cli_converts_our_checkpoint(tmp_path: Path) -> None:
    src = _save_ours(tmp_path / "backbone.pth", "resnet50", width=16)
    out = tmp_path / "d2" / "model.pkl"
    proc = subprocess.run([sys.executable, "-m", "eval.detection.convert", str(src), str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "dropped 53 num_batches_tracked" in proc.stdout
    with open(out, "rb") as f:
        body = pickle.load(f)
    assert body["__author__"] == "sslbench" and body["matching_heuristics"] is True
    assert set(body["model"]) == detectron2_r50_keys()
    assert body["model"]["res2.0.conv1.weight"].shape == (16, 16, 1, 1)  # narrow: width 16
    assert body["sslbench"]["d2_resnets"]["STEM_OUT_CHANNELS"] == 16
    assert body["sslbench"]["backbone"] == "resnet50"


def test_cli_refuses_tiny_cnn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _save_ours(tmp_path / "tiny.pth", "tiny_cnn", width=4)
    assert main([str(src), str(tmp_path / "x.pkl")]) == 2
    assert "needs a ResNet backbone" in capsys.readouterr().err
    assert not (tmp_path / "x.pkl").exists()


def test_convert_checkpoint_plain_torchvision_state_dict(tmp_path: Path) -> None:
    src = tmp_path / "tv.pth"
    torch.save(torchvision.models.resnet18().state_dict(), src)  # fc dropped by the loader
    report = convert_checkpoint(src, tmp_path / "r18.pkl")
    assert len(report.converted) == 100 and report.dropped_head == []


# ------------------------------------------------------------------------------ configs


def test_voc_preset_is_the_moco_recipe() -> None:
    cfg, extra = build_config("voc_R50_C4_24k", backbone="resnet50")
    assert extra == []
    assert cfg["MODEL"]["MASK_ON"] is False and cfg["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 20
    assert cfg["MODEL"]["ROI_HEADS"]["NAME"] == "Res5ROIHeadsExtraNorm"
    resnets = cfg["MODEL"]["RESNETS"]
    assert (resnets["NORM"], resnets["STRIDE_IN_1X1"], resnets["DEPTH"]) == ("SyncBN", False, 50)
    assert resnets["OUT_FEATURES"] == ["res4"]
    assert cfg["MODEL"]["BACKBONE"]["FREEZE_AT"] == 0
    assert cfg["MODEL"]["PIXEL_MEAN"] == [123.675, 116.280, 103.530]
    assert cfg["MODEL"]["PIXEL_STD"] == [58.395, 57.120, 57.375]
    assert cfg["INPUT"]["FORMAT"] == "RGB"
    assert cfg["INPUT"]["MIN_SIZE_TRAIN"] == list(range(480, 801, 32))
    assert cfg["INPUT"]["MIN_SIZE_TEST"] == 800
    assert cfg["MODEL"]["RPN"]["PRE_NMS_TOPK_TEST"] == 6000
    assert cfg["DATASETS"] == {"TRAIN": ["voc_2007_trainval", "voc_2012_trainval"],
                               "TEST": ["voc_2007_test"]}
    assert {k: cfg["SOLVER"][k] for k in ("IMS_PER_BATCH", "BASE_LR", "MAX_ITER", "STEPS",
                                          "WARMUP_ITERS")} == {
        "IMS_PER_BATCH": 16, "BASE_LR": 0.02, "MAX_ITER": 24000, "STEPS": [18000, 22000],
        "WARMUP_ITERS": 100}
    assert cfg["TEST"]["PRECISE_BN"] == {"ENABLED": True, "NUM_ITER": 200}


@pytest.mark.parametrize("preset,steps,max_iter,fpn", [
    ("coco_R50_C4_1x", [60000, 80000], 90000, False),
    ("coco_R50_C4_2x", [120000, 160000], 180000, False),
    ("coco_R50_FPN_1x", [60000, 80000], 90000, True),
])
def test_coco_presets(preset: str, steps: list[int], max_iter: int, fpn: bool) -> None:
    cfg, _ = build_config(preset, backbone="resnet50")
    assert cfg["MODEL"]["MASK_ON"] is True
    assert cfg["SOLVER"]["STEPS"] == steps and cfg["SOLVER"]["MAX_ITER"] == max_iter
    assert cfg["DATASETS"] == {"TRAIN": ["coco_2017_train"], "TEST": ["coco_2017_val"]}
    assert cfg["INPUT"]["MIN_SIZE_TRAIN"] == [640, 672, 704, 736, 768, 800]
    assert cfg["MODEL"]["RESNETS"]["NORM"] == "SyncBN" and cfg["INPUT"]["FORMAT"] == "RGB"
    backbone = "build_resnet_fpn_backbone" if fpn else "build_resnet_backbone"
    assert cfg["MODEL"]["BACKBONE"]["NAME"] == backbone
    if fpn:
        assert cfg["MODEL"]["RPN"]["IN_FEATURES"] == ["p2", "p3", "p4", "p5", "p6"]
        assert cfg["MODEL"]["ROI_BOX_HEAD"]["NUM_FC"] == 2


def test_linear_scaling_rule() -> None:
    cfg, _ = build_config("voc_R50_C4_24k", backbone="resnet50", num_gpus=2)
    s = cfg["SOLVER"]
    assert (s["IMS_PER_BATCH"], s["BASE_LR"], s["MAX_ITER"], s["STEPS"], s["WARMUP_ITERS"]) == (
        4, 0.005, 96000, [72000, 88000], 400)
    assert s["REFERENCE_WORLD_SIZE"] == 0  # Detectron2 must not scale again
    same, _ = build_config("voc_R50_C4_24k", backbone="resnet50", num_gpus=8)
    assert same["SOLVER"]["IMS_PER_BATCH"] == 16 and same["SOLVER"]["MAX_ITER"] == 24000
    with pytest.raises(ConfigError, match="does not scale"):  # 12 images on 8 GPUs → 1.5 on 1
        configs.scale_to_gpus(configs.merge(cfg, {"SOLVER": {"IMS_PER_BATCH": 12}}), 1, 8)


def test_overrides_are_typed_and_unknown_keys_passed_on() -> None:
    cfg, extra = build_config("coco_R50_C4_1x", backbone="resnet50", overrides=[
        "SOLVER.BASE_LR=1", "SOLVER.STEPS=[10, 20]", "MODEL.RESNETS.NORM=naiveSyncBN",
        "SOLVER.AMP.ENABLED=True"])
    assert cfg["SOLVER"]["BASE_LR"] == 1.0 and isinstance(cfg["SOLVER"]["BASE_LR"], float)
    assert cfg["SOLVER"]["STEPS"] == [10, 20] and cfg["MODEL"]["RESNETS"]["NORM"] == "naiveSyncBN"
    assert extra == ["SOLVER.AMP.ENABLED=True"]
    with pytest.raises(ConfigError, match="expected int"):
        build_config("coco_R50_C4_1x", backbone="resnet50", overrides=["SOLVER.MAX_ITER=ten"])
    with pytest.raises(ConfigError, match="names a group"):
        build_config("coco_R50_C4_1x", backbone="resnet50", overrides=["SOLVER=1"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        build_config("coco_R50_C4_1x", backbone="resnet50", overrides=["SOLVER.BASE_LR"])
    with pytest.raises(ConfigError, match="unknown detection preset"):
        build_config("voc_R50_FPN", backbone="resnet50")


@pytest.mark.parametrize("name,kwargs,expected", [
    ("resnet50", {}, {"DEPTH": 50, "NUM_GROUPS": 1, "WIDTH_PER_GROUP": 64,
                      "RES2_OUT_CHANNELS": 256, "STEM_OUT_CHANNELS": 64}),
    ("resnet50", {"width": 32}, {"DEPTH": 50, "WIDTH_PER_GROUP": 32, "RES2_OUT_CHANNELS": 128,
                                 "STEM_OUT_CHANNELS": 32}),
    ("wide_resnet50_2", {}, {"DEPTH": 50, "WIDTH_PER_GROUP": 128, "RES2_OUT_CHANNELS": 256}),
    ("resnext50_32x4d", {}, {"DEPTH": 50, "NUM_GROUPS": 32, "WIDTH_PER_GROUP": 4}),
    ("resnet101", {}, {"DEPTH": 101}),
    ("resnet18", {}, {"DEPTH": 18, "RES2_OUT_CHANNELS": 64}),
])
def test_resnet_settings(name: str, kwargs: dict, expected: dict) -> None:
    cfg, _ = build_config("coco_R50_FPN_1x", backbone=name, backbone_kwargs=kwargs)
    assert {k: cfg["MODEL"]["RESNETS"][k] for k in expected} == expected


def test_detectron2_compatibility_checks() -> None:
    cfg, _ = build_config("voc_R50_C4_24k", backbone="resnet50_small")
    with pytest.raises(ConfigError, match="torchvision backend only"):
        configs.check_detectron2_compatible(cfg, "resnet50_small")
    cfg, _ = build_config("voc_R50_C4_24k", backbone="resnet18")
    with pytest.raises(ConfigError, match="ResNet-50 or deeper"):
        configs.check_detectron2_compatible(cfg, "resnet18")
    cfg, _ = build_config("coco_R50_FPN_1x", backbone="resnet18")
    configs.check_detectron2_compatible(cfg, "resnet18")  # FPN builds R18 in Detectron2


def test_mini_preset_scales_inputs_for_a_7x7_stem() -> None:
    small, _ = build_config("mini_voc_C4", backbone="resnet18_small")
    big, _ = build_config("mini_voc_C4", backbone="resnet18")
    assert big["INPUT"]["MIN_SIZE_TEST"] == 4 * small["INPUT"]["MIN_SIZE_TEST"]
    assert big["MODEL"]["ANCHOR_GENERATOR"]["SIZES"] == [[32, 64, 128]]


def test_yaml_round_trip_and_cfgnode_mirror() -> None:
    for preset in configs.PRESETS:
        cfg, _ = build_config(preset, backbone="resnet50", num_classes=7, weights="w.pkl")
        assert yaml.safe_load(configs.to_yaml(cfg)) == cfg
        assert configs.flatten(cfg).keys() == configs.flatten(configs.D2_DEFAULTS).keys()


# ------------------------------------------------------------------ with detectron2 only


def test_defaults_mirror_matches_detectron2() -> None:
    d2config = pytest.importorskip("detectron2.config", reason="detectron2 is not installed")
    real = d2config.get_cfg()
    for key, value in configs.flatten(configs.D2_DEFAULTS).items():
        node = real
        for part in key.split("."):
            node = node[part]
        got = list(node) if isinstance(node, tuple) else node
        assert got == value, key


def test_presets_become_cfgnodes_and_weights_load(tmp_path: Path) -> None:
    pytest.importorskip("detectron2", reason="detectron2 is not installed")
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from eval.detection.convert import save_detectron2
    from eval.detection.d2_backend import register_extra_norm_heads

    register_extra_norm_heads()
    model = build_backbone("resnet50")
    path = save_detectron2(torchvision_to_detectron2(model.state_dict())[0], tmp_path / "w.pkl")
    for preset in ("voc_R50_C4_24k", "coco_R50_FPN_1x"):
        cfg, extra = build_config(preset, backbone="resnet50", weights=str(path))
        node = configs.to_cfgnode(cfg, [*extra, "MODEL.DEVICE=cpu", "MODEL.RESNETS.NORM=BN"])
        d2model = build_model(node)
        DetectionCheckpointer(d2model).load(str(path))
        sd = d2model.state_dict()
        # Every backbone weight came from the file (C4: res5 lives in the ROI heads).
        src = model.state_dict()
        got = sd["backbone.res2.0.conv1.weight"] if "backbone.res2.0.conv1.weight" in sd \
            else sd["backbone.bottom_up.res2.0.conv1.weight"]
        assert torch.equal(got, src["layer1.0.conv1.weight"])
