"""Validation in the schema: every closed set, range and registry name is checked when a
config is built, so ``--dry-run`` rejects a bad value in one line; experiment identity."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from trainer.config import (
    ConfigError,
    RunConfig,
    config_hash,
    default_run_dir,
    load_config,
    preflight,
    save_config,
    unhashed_keys,
)
from trainer.rundir import run_dir_of
from trainer.train import main as train_main

# (overrides joined by ";", what the one-line error must say) — the cases among them.
BAD = [
    ("train.precision=bfloat16", "train.precision='bfloat16' is not allowed; expected one of "
                                 "auto, fp32, bf16, fp16"),
    ("train.precision=fp8", "train.precision='fp8'"),
    ("optim.name=adam", "optim.name='adam' is not allowed; expected one of lars, sgd, adamw"),
    ("optim.schedule=cosine", "optim.schedule='cosine' is not allowed; expected one of "
                              "warmup_cosine"),
    ("optim.lr_scaling=log", "optim.lr_scaling='log'"),
    ("aug.recipe=nosuch", "aug.recipe='nosuch' is not allowed; expected one of byol, mocov2"),
    ("data.name=nosuch", "data.name='nosuch' is not allowed; expected one of cifar10, cifar100, "
                         "fashion_mnist, image_folder, imagenet, imagenet100, shards, stl10, "
                         "unlabeled_folder"),
    ("method.projector=abc", "method.projector='abc' is not allowed: expected widths"),
    ("method.projector=64-0", "method.projector='64-0'"),
    ("method.name=byol;method.reg_on=head", "method.reg_on='head' is not allowed; expected one "
                                            "of projector, predictor"),
    ("method.variance_weight=-1", "method.variance_weight=-1.0 is not allowed; expected >= 0"),
    ("train.log_every_steps=0", "train.log_every_steps=0 is not allowed; expected >= 1"),
    ("train.diag_samples=0", "train.diag_samples=0 is not allowed; expected >= 2"),
    ("train.epochs=-3", "train.epochs=-3 is not allowed; expected >= 1"),
    ("train.batch_size=-64", "train.batch_size=-64 is not allowed; expected >= 1"),
    ("train.ckpt_every_steps=-1", "train.ckpt_every_steps=-1"),
    ("train.device=gpu", "train.device='gpu' is not allowed: expected auto, cpu, cuda"),
    ("train.channels_last=maybe", "train.channels_last='maybe'"),
    ("optim.momentum=1.5", "optim.momentum=1.5 is not allowed; expected >= 0 and < 1"),
    ("optim.base_lr=0", "optim.base_lr=0.0 is not allowed; expected > 0"),
    ("aug.views=[{hflip_p: 2}]", "aug.views.0.hflip_p=2.0 is not allowed; expected >= 0 and <= 1"),
    ("aug.views=[{crop_scale: [0.9, 0.1]}]", "aug.views.0.crop_scale=[0.9, 0.1] is not allowed"),
    ("aug.views=[{interpolation: nearest}]", "aug.views.0.interpolation='nearest'"),
    ("backbone.name=nosuch", "backbone.name: unknown backbone 'nosuch'; available: "),
    ("method.name=nosuch", "method.name: unknown method 'nosuch'; available: barlow_twins"),
]


@pytest.mark.parametrize("item,message", BAD, ids=[b[0] for b in BAD])
def test__a_bad_value_is_one_line_naming_key_value_and_what_is_allowed(
        item: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(overrides=item.split(";"))
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("item", ["train.epochs=-3", "optim.name=adam", "method.projector=abc"])
def test__dry_run_rejects_and_nothing_is_written(item: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert train_main([], [item, f"run_dir={run}"], dry_run=True) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("config error: ") and item.split("=")[0] in err and "\n" not in err
    assert train_main([], [item, f"run_dir={run}"], dry_run=False) == 2
    assert not run.exists()


def test__factories_are_checked_at_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    """What only the method's factory knows (a predictor that does not end in the
    projector's width) is refused before training, not by a traceback at step 0."""
    assert train_main([], ["method.name=byol", "method.projector=64-32",
                           "method.predictor=64-16"], dry_run=True) == 2
    assert "must end in the projector's width 32" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test__cuda_without_cuda_is_refused_at_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert train_main([], ["train.device=cuda"], dry_run=True) == 2
    assert "train.device=cuda: this machine has no CUDA device" in capsys.readouterr().err
    preflight(load_config(overrides=["train.device=cuda"]), device=False)  # a login node


def test__damaged_config_files_name_the_file(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [3\n")
    assert train_main([str(bad)], [], dry_run=True) == 2
    err = capsys.readouterr().err
    assert f"{bad}: not valid YAML at line" in err and "\n" not in err.strip()
    assert train_main([str(tmp_path / "nosuch.yaml")], [], dry_run=True) == 2
    assert f"{tmp_path / 'nosuch.yaml'}: no such config file" in capsys.readouterr().err
    assert train_main([str(tmp_path)], [], dry_run=True) == 2
    assert "is a folder" in capsys.readouterr().err


def test__every_default_and_every_spec_passes_its_own_checks() -> None:
    """The checks must not refuse what the project ships: the defaults of every method."""
    import methods  # noqa: F401
    from methods.base import METHODS

    for name in METHODS.names():
        load_config(overrides=[f"method.name={name}"])


def test__bookkeeping_settings_are_not_part_of_the_identity() -> None:
    base = ["backbone.name=tiny_cnn", "train.epochs=2"]
    a = load_config(overrides=base)
    b = load_config(overrides=[*base, "data.root=/elsewhere/same-files",
                               "train.ckpt_every_steps=7", "train.device=cpu",
                               "train.log_every_steps=3", "train.progress=false"])
    c = load_config(overrides=[*base, "optim.base_lr=0.5"])
    assert config_hash(a) == config_hash(b) != config_hash(c)
    assert default_run_dir(a) == default_run_dir(b)
    assert {"data.root", "train.ckpt_every_steps", "train.device", "run_dir"} <= set(
        unhashed_keys())


def test__hashes_of_configs_with_default_bookkeeping_did_not_change() -> None:
    """Existing runs resume: with the default bookkeeping values, the hash is the one the
    first formula gave (canonical JSON without run_dir/progress/tensorboard/max_steps/
    log_every_steps)."""
    for cfg in (RunConfig(), load_config(overrides=["method.name=simsiam", "train.seed=3",
                                                    "optim.base_lr=0.05"])):
        d = cfg.to_dict()
        d.pop("backbone_b")
        d.pop("run_dir")
        for k in ("progress", "tensorboard", "max_steps", "log_every_steps"):
            d["train"].pop(k)
        for k in ("val_root", "class_list", "num_workers", "decode", "max_bad_fraction"):
            d["data"].pop(k)  # the image-file settings, later, at their defaults
        old = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()
        assert config_hash(cfg) == old


def test__a_folder_named_under_another_hash_is_found_again(tmp_path: Path) -> None:
    """A run folder named before a bookkeeping key left the hash (its name carries the old
    hash) is the folder of the same experiment now, not a new one."""
    cfg = load_config(overrides=["backbone.name=tiny_cnn", "train.ckpt_every_steps=20"])
    old = tmp_path / (default_run_dir(cfg).name[:-8] + "0ldha5h0")
    save_config(cfg, old / "config.yaml", {"config_hash": "0ldha5h0" * 8})
    assert run_dir_of(cfg, tmp_path) == old
    other = load_config(overrides=["backbone.name=tiny_cnn", "optim.base_lr=0.3"])
    assert run_dir_of(other, tmp_path) == default_run_dir(other, tmp_path)
