"""The checkpoint loader on files in each supported format, with random weights.

Every external file is built from the official architecture's key names (torchvision
resnet18/resnet50, timm ViT) wrapped as each release wraps it, so format detection,
prefix stripping, head dropping and backbone inference are all exercised.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torchvision
import yaml

from backbones import build_backbone
from eval.checkpoint import CheckpointError, load_backbone


@pytest.fixture(scope="module")
def r18_sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.resnet18().state_dict()


def _save(tmp_path: Path, name: str, obj: object) -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _assert_same_weights(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, sd[key]), key


def test_torchvision_state_dict_is_inferred(tmp_path: Path, r18_sd: dict) -> None:
    model, meta = load_backbone(_save(tmp_path, "tv.pth", r18_sd))
    assert meta["backbone"] == "resnet18" and meta["format"] == "torchvision"
    assert meta["method"] == "external" and not model.training
    assert sorted(meta["key_report"]["dropped_head"]) == ["fc.bias", "fc.weight"]
    _assert_same_weights(model, r18_sd)


@pytest.mark.parametrize(
    ("wrap", "fmt"),
    [
        # SimSiam: projection MLP in encoder.fc, predictor outside the encoder.
        (lambda sd: {"epoch": 100, "arch": "resnet18", "state_dict": {
            **{f"module.encoder.{k}": v for k, v in sd.items() if not k.startswith("fc.")},
            "module.encoder.fc.0.weight": torch.randn(8, 512),
            "module.encoder.fc.1.running_mean": torch.zeros(8),
            "module.predictor.0.weight": torch.randn(4, 8)}}, "simsiam"),
        # MoCo v1/v2: query and key encoders, the queue.
        (lambda sd: {"epoch": 200, "arch": "resnet18", "state_dict": {
            **{f"module.encoder_q.{k}": v for k, v in sd.items()},
            **{f"module.encoder_k.{k}": v + 1 for k, v in sd.items()},
            "module.queue": torch.randn(8, 16), "module.queue_ptr": torch.zeros(1)}}, "moco"),
        # VICReg / Barlow Twins full training checkpoint.
        (lambda sd: {"epoch": 1, "model": {
            **{f"module.backbone.{k}": v for k, v in sd.items() if not k.startswith("fc.")},
            "module.projector.0.weight": torch.randn(8, 512)}}, "fair_full"),
        # VICReg / Barlow Twins resnet50.pth: plain keys, no fc.
        (lambda sd: {k: v for k, v in sd.items() if not k.startswith("fc.")}, "torchvision"),
    ],
    ids=["simsiam", "moco", "vicreg_full", "vicreg_backbone_only"],
)
def test_official_formats(tmp_path: Path, r18_sd: dict, wrap: object, fmt: str) -> None:
    path = _save(tmp_path, "ckpt.pth", wrap(r18_sd))  # type: ignore[operator]
    model, meta = load_backbone(path)
    assert meta["backbone"] == "resnet18"
    assert meta["format"] == fmt
    assert meta["key_report"]["missing"] == [] and meta["key_report"]["unexpected"] == []
    _assert_same_weights(model, r18_sd)


def test_resnet50_vs_resnet18_inferred_from_shapes(tmp_path: Path) -> None:
    with torch.device("meta"):
        keys = torchvision.models.resnet50().state_dict()
    sd = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in keys.items()}
    path = _save(tmp_path, "r50.pth", {"state_dict": {f"module.encoder_q.{k}": v
                                                      for k, v in sd.items()}})
    _, meta = load_backbone(path)
    assert meta["backbone"] == "resnet50" and meta["num_features"] == 2048


def test_timm_vit_with_head(tmp_path: Path) -> None:
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32)
    sd = vit.state_dict()
    assert "head.weight" in sd  # an official timm file keeps its classifier
    model, meta = load_backbone(_save(tmp_path, "vit.pth", sd))
    assert meta["backbone"] == "vit_small_patch16" and meta["format"] == "timm"
    assert meta["backbone_kwargs"] == {"img_size": 32}
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 384)


def test_partial_load_refused_unless_allowed(tmp_path: Path, r18_sd: dict) -> None:
    sd = dict(r18_sd)
    del sd["layer4.1.bn2.weight"]
    sd["layer5.0.conv1.weight"] = torch.zeros(1)
    path = _save(tmp_path, "partial.pth", sd)
    with pytest.raises(CheckpointError, match="layer5.0.conv1.weight") as err:
        load_backbone(path, backbone="resnet18")
    assert "layer4.1.bn2.weight" in str(err.value) and "--allow-partial" in str(err.value)
    model, meta = load_backbone(path, backbone="resnet18", allow_partial=True)
    assert meta["key_report"]["missing"] == ["layer4.1.bn2.weight"]
    assert meta["key_report"]["unexpected"] == ["layer5.0.conv1.weight"]
    assert torch.equal(model.state_dict()["conv1.weight"], r18_sd["conv1.weight"])


def test_wrong_backbone_is_a_shape_error(tmp_path: Path, r18_sd: dict) -> None:
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_backbone(_save(tmp_path, "r18.pth", r18_sd), backbone="resnet50", allow_partial=True)


def _tiny_run(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    bb = build_backbone("tiny_cnn", width=8)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"config_hash": "abc", "config": {
        "method": {"name": "vicreg"}, "backbone": {"name": "tiny_cnn", "width": 8},
        "train": {"seed": 3, "epochs": 7}}}))
    return run, bb


def test_our_backbone_pth(tmp_path: Path) -> None:
    run, bb = _tiny_run(tmp_path)
    meta = {"backbone": "tiny_cnn", "backbone_kwargs": {"width": 8}, "num_features": 16,
            "method": "vicreg", "config_hash": "abc", "git_sha": "123", "steps_done": 5,
            "steps_total": 5}
    path = _save(run, "backbone.pth", {"format": "sslbench.backbone/1",
                                       "state_dict": bb.state_dict(), "meta": meta})
    model, out = load_backbone(path)
    assert out["format"] == "sslbench.backbone" and out["method"] == "vicreg"
    assert out["seed"] == 3 and out["epochs"] == 7 and out["run_dir"] == str(run)
    _assert_same_weights(model, bb.state_dict())


def test_our_training_checkpoint(tmp_path: Path) -> None:
    run, bb = _tiny_run(tmp_path)
    module = {f"method.backbone.{k}": v for k, v in bb.state_dict().items()}
    module.update({"method.projector.0.weight": torch.randn(4, 16),
                   "probe.weight": torch.randn(10, 16)})
    path = _save(run, "checkpoint.pth", {"step": 12, "module": module, "optimizer": {},
                                         "config_hash": "abc"})
    model, out = load_backbone(path)
    assert out["format"] == "sslbench.checkpoint" and out["backbone"] == "tiny_cnn"
    assert out["key_report"]["ignored"] == 2 and out["steps_done"] == 12
    _assert_same_weights(model, bb.state_dict())
