"""Typed config: defaults ← YAML diffs ← key=value, with errors that name valid keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.config import (
    ConfigError,
    RunConfig,
    config_hash,
    default_run_dir,
    load_config,
    load_saved_config,
    save_config,
)


def test__defaults_are_vicreg_paper_defaults() -> None:
    cfg = load_config()
    assert cfg.method.name == "vicreg"
    m = cfg.method.cfg
    assert (m.invariance_weight, m.variance_weight, m.covariance_weight) == (25.0, 25.0, 1.0)
    assert m.projector == "8192-8192-8192"
    assert (cfg.optim.name, cfg.optim.base_lr, cfg.optim.weight_decay) == ("lars", 0.2, 1e-6)
    assert (cfg.optim.warmup_epochs, cfg.optim.final_lr_fraction) == (10.0, 0.001)


def test__typo_key_raises_naming_valid_keys() -> None:
    with pytest.raises(ConfigError, match=r"base_lrr.*valid keys:.*base_lr"):
        load_config(overrides=["optim.base_lrr=0.5"])
    with pytest.raises(ConfigError, match=r"variance_weigth.*valid keys:.*variance_weight"):
        load_config(overrides=["method.variance_weigth=0"])
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) trian"):
        load_config(overrides=["trian.epochs=3"])
    with pytest.raises(ConfigError, match=r"widht.*valid keys"):
        load_config(overrides=["backbone.name=tiny_cnn", "backbone.widht=3"])


def test__wrong_type_raises() -> None:
    with pytest.raises(ConfigError, match=r"train.epochs: expected int"):
        load_config(overrides=["train.epochs=ten"])
    with pytest.raises(ConfigError, match=r"train.compile: expected true/false"):
        load_config(overrides=["train.compile=3"])
    with pytest.raises(ConfigError, match=r"unknown method"):
        load_config(overrides=["method.name=vicrag"])


def test__yaml_diff_then_overrides(tmp_path: Path) -> None:
    diff = tmp_path / "exp.yaml"
    diff.write_text("train:\n  epochs: 7\n  batch_size: 64\nmethod:\n  projector: 64-64\n"
                    "aug:\n  recipe: none\n  crop_size: 28\n")
    cfg = load_config([diff], ["train.epochs=9", "optim.base_lr=0.3", "method.variance_weight=0"])
    assert cfg.train.epochs == 9 and cfg.train.batch_size == 64
    assert cfg.optim.base_lr == 0.3 and isinstance(cfg.optim.base_lr, float)
    assert cfg.method.cfg.projector == "64-64" and cfg.method.cfg.variance_weight == 0.0
    assert cfg.aug.recipe == "none" and cfg.aug.crop_size == 28


def test__view_list_override_and_int_to_float() -> None:
    views = "[{crop_size: 28}, {crop_size: 28, solarize_p: 0.2}]"
    cfg = load_config(overrides=[f"aug.views={views}", "aug.views.1.blur_p=0.5"])
    assert len(cfg.aug.views) == 2
    assert cfg.aug.views[1].blur_p == 0.5 and cfg.aug.views[1].solarize_p == 0.2
    assert cfg.aug.views[0].crop_scale == (0.08, 1.0)
    with pytest.raises(ConfigError, match="index out of range"):
        load_config(overrides=[f"aug.views={views}", "aug.views.5.blur_p=0.5"])


def test__hash_is_deterministic_and_ignores_cosmetic_keys() -> None:
    a = load_config(overrides=["train.seed=1"])
    b = load_config(overrides=["train.seed=1", "train.progress=false", "run_dir=/tmp/x"])
    c = load_config(overrides=["train.seed=2"])
    assert config_hash(a) == config_hash(b) != config_hash(c)
    assert default_run_dir(a).name.startswith("vicreg-resnet50-s1-")


def test__saved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(overrides=["backbone.name=tiny_cnn", "backbone.width=8", "train.epochs=2"])
    save_config(cfg, tmp_path / "config.yaml", {"git_sha": "abc"})
    again = load_saved_config(tmp_path / "config.yaml")
    assert again == cfg and isinstance(again, RunConfig)
    assert config_hash(again) == config_hash(cfg)


def test__backbone_b_same_copies_the_backbone_and_named_one_is_validated() -> None:
    cfg = load_config(overrides=["backbone.name=tiny_cnn", "backbone.width=4",
                                 "backbone_b=same"])
    assert (cfg.backbone_b.name, cfg.backbone_b.cfg) == ("tiny_cnn", {"width": 4})
    other = load_config(overrides=["backbone.name=tiny_cnn", "backbone_b=resnet18_small",
                                   "backbone_b.width=16"])
    assert (other.backbone_b.name, other.backbone_b.cfg) == ("resnet18_small", {"width": 16})
    shared = load_config(overrides=["backbone.name=tiny_cnn"])
    assert shared.backbone_b.name == ""
    assert len({config_hash(c) for c in (cfg, other, shared)}) == 3
    assert "+resnet18_small-" in default_run_dir(other).name
    assert "+" not in default_run_dir(shared).name


def test__backbone_b_bad_input_says_what_is_expected() -> None:
    with pytest.raises(ConfigError, match="backbone_b.name.*same"):
        load_config(overrides=["backbone_b=resnet9000"])
    with pytest.raises(ConfigError, match="without backbone_b.name"):
        load_config(overrides=["backbone_b.width=4"])
    with pytest.raises(ConfigError, match="unknown config key.*backbone_b"):
        load_config(overrides=["backbone_b=tiny_cnn", "backbone_b.depth=3"])


def test__backbone_b_round_trips_through_saved_config(tmp_path: Path) -> None:
    cfg = load_config(overrides=["backbone.name=tiny_cnn", "backbone_b=same",
                                 "backbone_b.width=8"])
    save_config(cfg, tmp_path / "config.yaml", {})
    again = load_saved_config(tmp_path / "config.yaml")
    assert again == cfg and config_hash(again) == config_hash(cfg)
