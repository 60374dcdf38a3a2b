"""The standard small SSL benchmarks: CIFAR-10, CIFAR-100, STL-10, ImageNet-100.

Per dataset, two benchmarks on its labelled train / test split (``<dataset>_linear``,
``<dataset>_knn``), read by the same data-room readers as pretraining:

- linear: solo-learn's offline linear evaluation (``main_linear.py``, configs
  ``scripts/linear/imagenet-100/*.yaml``): a linear head on the frozen backbone in eval mode,
  trained on RandomResizedCrop(scale 0.08–1) + flip views for 100 epochs, SGD momentum 0.9,
  batch 256, weight decay 0, lr ×0.1 at epochs 60 and 80; the test images are only
  resized/center-cropped (solo-learn ``prepare_transforms``: none for CIFAR, Resize(96) for
  STL-10, Resize(256) + CenterCrop(224) for ImageNet-100). The lr is solo-learn's per method
  (``lr_by_method``; another method uses ``lr``). The reported value is the last epoch's.
- kNN: DINO's weighted kNN (k = 20 and 200, T = 0.07) on center-crop avgpool features.

NOTE: solo-learn publishes no offline linear config for CIFAR or STL-10 (``scripts/linear``
has ImageNet-100 and ImageNet only), and its CIFAR README numbers do not say whether they
are the online probe or an offline evaluation; we run the ImageNet-100 linear protocol on
them with solo-learn's CIFAR / STL-10 transforms.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from eval.bench_classification import KNNConfig, knn_on
from eval.images import EvalTransform
from eval.registry import BENCHMARKS, Context, Metric
from eval.train_probe import Schedule, linear_augmented

# solo-learn scripts/linear/imagenet-100/<method>.yaml, optimizer.lr (batch 256, one GPU).
SOLO_LINEAR_LRS = ("vicreg=0.3", "barlow_twins=0.1", "byol=0.3", "simclr=1.0", "simsiam=30.0")


@dataclass(frozen=True)
class SoloLinearConfig:
    """solo-learn's offline linear evaluation (defaults: CIFAR, 32 px)."""

    train_split: str = "train"
    test_split: str = "test"
    resize: int = 32  # test: Resize(resize) → CenterCrop(crop); train: RandomResizedCrop(crop)
    crop: int = 32
    epochs: int = 100
    batch_size: int = 256
    lr: float = 0.1  # a method absent from lr_by_method
    lr_by_method: tuple[str, ...] = SOLO_LINEAR_LRS  # "<method>=<lr>" (the checkpoint's method)
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "multistep"  # cosine | multistep (×0.1 at each milestone)
    milestones: tuple[int, ...] = (60, 80)
    eval_every: int = 1  # also report the best epoch (extra only)


def method_lr(cfg: SoloLinearConfig, method: str) -> float:
    """The lr for checkpoints of ``method``: its ``lr_by_method`` entry, else ``cfg.lr``."""
    table = {}
    for item in cfg.lr_by_method:
        name, sep, value = item.partition("=")
        try:
            table[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or table[name.strip()] <= 0:
            raise ValueError(f"lr_by_method: '{item}' is not <method>=<positive lr>")
    return table.get(method, cfg.lr)


def solo_linear(ctx: Context, cfg: SoloLinearConfig, dataset: str) -> list[Metric]:
    """Linear head on the frozen backbone, trained on augmented views; top-1/top-5 on test."""
    train, test = ctx.load(dataset, cfg.train_split), ctx.load(dataset, cfg.test_split)
    method = str(ctx.meta.get("method") or "")
    lr = method_lr(cfg, method)
    sched = Schedule(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=lr,
                     weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                     schedule=cfg.schedule, milestones=cfg.milestones, eval_every=cfg.eval_every)
    res = linear_augmented(ctx.backbone, train, test, taps=("avgpool",), head_bn=False,
                           sched=sched, train_crop=cfg.crop,
                           test_tf=EvalTransform(cfg.resize, cfg.crop), mean=ctx.mean,
                           std=ctx.std, num_workers=ctx.run.num_workers, device=ctx.device,
                           seed=ctx.run.seed)["avgpool"]
    extra = {"lr": lr, "epochs": cfg.epochs, "best_top1_on_val": res["best_top1"]}
    return [Metric(m, res[m], extra) for m in ("top1", "top5")]


# (dataset, its display name, test split, resize, crop)
DATASETS = (("cifar10", "CIFAR-10", "test", 32, 32), ("cifar100", "CIFAR-100", "test", 32, 32),
            ("stl10", "STL-10", "test", 96, 96), ("imagenet100", "ImageNet-100", "val", 256, 224))


def defaults(dataset: str) -> tuple[SoloLinearConfig, KNNConfig]:
    """The paper-protocol settings of ``<dataset>_linear`` and ``<dataset>_knn``."""
    _, _, test, resize, crop = next(d for d in DATASETS if d[0] == dataset)
    sizes = {"test_split": test, "resize": resize, "crop": crop}
    return replace(SoloLinearConfig(), **sizes), replace(KNNConfig(), **sizes)


def _register(dataset: str, title: str) -> None:
    def linear(ctx: Context, cfg: SoloLinearConfig) -> list[Metric]:
        return solo_linear(ctx, cfg, dataset)

    def knn(ctx: Context, cfg: KNNConfig) -> list[Metric]:
        return knn_on(ctx, cfg, dataset)

    linear.__doc__ = f"{title} linear evaluation (solo-learn offline protocol), top-1/top-5."
    knn.__doc__ = f"{title} weighted kNN (DINO), top-1/top-5 for each k."
    BENCHMARKS.register(f"{dataset}_linear", SoloLinearConfig)(linear)
    BENCHMARKS.register(f"{dataset}_knn", KNNConfig)(knn)


for _dataset, _title, *_ in DATASETS:
    _register(_dataset, _title)
