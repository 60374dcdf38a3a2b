"""The standard-benchmark recipes: every (spec, method) pair plans (``--dry-run``), builds,
chains its eval suite, and carries solo-learn's published settings."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

import methods  # noqa: F401
from backbones import BACKBONES
from eval.run_all import resolve_suite
from methods.base import METHODS
from sweeps.launch import describe, main, plan
from trainer.augment import resolve_views
from trainer.datasets import DATASETS

REPO = Path(__file__).resolve().parent.parent
SPECS = {"cifar10": 32, "cifar100": 32, "stl10": 96, "imagenet100": 224}
METHODS_5 = ("vicreg", "barlow_twins", "simclr", "byol", "simsiam")
# solo-learn scripts/pretrain/{cifar,imagenet-100}/<method>.yaml: (optimizer, lr, weight decay)
SOLO_CIFAR = {"vicreg": ("lars", 0.3, 1e-4), "barlow_twins": ("lars", 0.3, 1e-4),
              "simclr": ("lars", 0.4, 1e-4), "byol": ("lars", 1.0, 1e-5),
              "simsiam": ("sgd", 0.5, 1e-5)}
SOLO_IN100 = {"vicreg": ("lars", 0.3, 1e-4), "barlow_twins": ("lars", 0.3, 1e-4),
              "simclr": ("lars", 0.3, 1e-4), "byol": ("lars", 0.5, 1e-6),
              "simsiam": ("sgd", 0.5, 1e-5)}


@pytest.mark.usefixtures("imagenet_env")  # imagenet100 reads an ImageNet folder
@pytest.mark.parametrize("method", METHODS_5)
@pytest.mark.parametrize("spec", sorted(SPECS))
def test__every_spec_and_method_plans_builds_and_chains_its_eval(spec, method, tmp_path,
                                                                  capsys) -> None:
    path = REPO / "sweeps" / "specs" / f"{spec}.yaml"
    assert main(method, str(path), "local", [], "", str(tmp_path), True, False) == 0
    out = capsys.readouterr().out
    assert f"eval: eval/run_all.py --suite {spec} after each run" in out
    sweep = plan(method, path, "local", [], root=tmp_path)
    assert sweep.name == f"{spec}-{method}" and len(sweep.runs) == 1
    cfg = sweep.runs[0].cfg
    assert cfg.method.name == method and cfg.data.name == spec and spec in DATASETS
    views = resolve_views(cfg.aug)
    assert len(views) == 2 and {v.crop_size for v in views} == {SPECS[spec]}
    with torch.device("meta"):  # what the trainer builds, without memory
        backbone = BACKBONES.build(cfg.backbone.name, **cfg.backbone.cfg)
        METHODS.get(cfg.method.name).factory(backbone, cfg.method.cfg)
    suite, _ = resolve_suite(sweep.eval.suite, list(sweep.eval.extra_args), None)
    assert set(suite.benchmarks) == {f"{spec}_knn", f"{spec}_linear"}
    published = SOLO_IN100 if spec == "imagenet100" else SOLO_CIFAR
    o = cfg.optim
    assert (o.name, o.base_lr, o.weight_decay) == published[method]
    assert (o.schedule, o.warmup_epochs, o.final_lr_fraction) == ("warmup_cosine", 10.0, 0.0)
    assert cfg.train.batch_size == 256 and cfg.train.probe_lr == 0.1
    assert cfg.train.epochs == {"imagenet100": 400, "stl10": 400}.get(spec, 1000)
    assert cfg.backbone.name == ("resnet18_small" if spec.startswith("cifar") else "resnet18")
    assert str(sweep.runs[0].folder) in describe(sweep, {sweep.runs[0].key: "new"})


@pytest.mark.usefixtures("imagenet_env")
def test__recipe_details_follow_solo_learn() -> None:
    def cfg(spec: str, method: str):  # noqa: ANN202
        return plan(method, REPO / "sweeps" / "specs" / f"{spec}.yaml", "local", []).runs[0].cfg

    vic = cfg("cifar10", "vicreg")
    assert vic.method.cfg.projector == "2048-2048-2048" and vic.optim.lars_eta == 0.02
    a, b = resolve_views(vic.aug)
    assert a == b and a.crop_scale == (0.2, 1.0) and a.solarize_p == 0.1 and a.blur_p == 0.0
    byol = cfg("cifar10", "byol")
    assert byol.method.cfg.base_tau == 0.99 and byol.method.cfg.predictor == "4096-256"
    a, b = resolve_views(byol.aug)
    assert (a.solarize_p, b.solarize_p, a.blur_p, b.blur_p) == (0.0, 0.2, 0.0, 0.0)
    simclr = cfg("cifar10", "simclr")
    assert simclr.method.cfg.temperature == 0.2 and simclr.method.cfg.projector == "2048-256"
    assert resolve_views(simclr.aug)[0].brightness == 0.8
    siam = cfg("cifar10", "simsiam")
    assert siam.method.cfg.predictor == "512-2048" and siam.method.cfg.fix_pred_lr
    assert resolve_views(siam.aug)[0].saturation == 0.4
    assert cfg("cifar10", "barlow_twins").method.cfg.bias_lr_ratio == 0.1
    assert cfg("imagenet100", "byol").method.cfg.predictor == "8192-256"
    assert cfg("imagenet100", "simclr").method.cfg.projector == "4096-512"
    in_vic = resolve_views(cfg("imagenet100", "vicreg").aug)
    assert in_vic[0].blur_p == 0.5 and in_vic[0].crop_scale == (0.2, 1.0)
    # CIFAR-100 and STL-10 reuse the CIFAR-10 recipes (only dataset, sizes and length differ)
    for method in METHODS_5:
        c10, c100 = cfg("cifar10", method), cfg("cifar100", method)
        assert (c10.method, c10.optim, c10.aug) == (c100.method, c100.optim, c100.aug)
        stl = cfg("stl10", method)
        assert (stl.method, stl.optim) == (c10.method, c10.optim)


def test__make_sweep_dry_run(tmp_path) -> None:
    proc = subprocess.run(
        ["make", "--no-print-directory", "sweep", "METHOD=simclr",
         "SPEC=sweeps/specs/cifar10.yaml", "CLUSTER=local", "DRY_RUN=1",
         f"ARGS=--root {tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "eval: eval/run_all.py --suite cifar10 after each run" in proc.stdout
    assert f"{tmp_path}/cifar10-simclr/simclr-resnet18_small-s0-" in proc.stdout
    assert not list(tmp_path.iterdir())  # a dry run writes nothing
