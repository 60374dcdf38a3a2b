"""The shared pretraining loop. It never names a method, a backbone or a dataset.

It owns what every method needs: the multi-view data path, the optimizer and
schedule, AMP, DDP + global-batch BN, the online linear probe, collapse
diagnostics, logging, atomic checkpoints with auto-resume, and the export of
``backbone.pth``, the only artefact the eval battery reads.

Everything random is a function of (seed, epoch, step): the data order of an epoch
and the augmentation of a step are re-derived on resume, so a killed run resumes
to bit-identical weights on CPU, and N processes see exactly the global batch and
augmentations that one process would.

The data come from a registered dataset: an in-memory ``ImageSet`` (each step slices its
rows and crops on the device) or a ``StreamSet`` (image files: its loader yields each
step's ``dataroom.Batch`` of pre-cropped uint8 views, restarted at the resume step, and
the device adds the colour augmentation; replaced images are counted per epoch and the
count is checkpointed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

import methods  # noqa: F401  (fills the registry)
from backbones import BACKBONES
from dataroom import BadImageLedger, Batch, ViewSpec
from methods.base import METHODS, Method, StepOutput
from methods.dist import all_reduce_mean, is_distributed
from trainer.augment import EvalTransform, MultiViewAugment, resolve_views
from trainer.config import RunConfig, check_batch, config_hash, default_run_dir, preflight
from trainer.datasets import ImageSet, StreamSet, build_train_set
from trainer.diagnostics import MetricsLogger, embedding_stats
from trainer.dist import DistInfo, convert_sync_bn, init_distributed
from trainer.hardware import cpu_prefers_bf16
from trainer.io import atomic_torch_save, atomic_write_text, git_sha
from trainer.optim import build_optimizer, lr_factor, peak_lr, scaled_step, set_lr
from trainer.progress import progress_bar
from trainer.rundir import claim_run_dir, read_checkpoint

log = logging.getLogger("sslbench.trainer")
BACKBONE_FORMAT = "sslbench.backbone/1"


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


class TrainModule(nn.Module):
    """The method plus the online probe, wrapped together so DDP syncs both."""

    def __init__(self, method: Method, num_classes: int) -> None:
        super().__init__()
        self.method = method
        self.probe = nn.Linear(method.backbone.num_features, num_classes)

    def forward(self, views: list[Tensor], labels: Tensor) -> tuple[StepOutput, Tensor, Tensor]:
        out = self.method(views)
        # detached: the probe never trains the backbone
        logits = self.probe(out.features.detach().to(self.probe.weight.dtype))
        return out, logits, probe_loss(logits, labels)


def probe_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy over the labelled rows; label -1 (an unlabeled image, e.g. STL-10's
    unlabeled split) counts nowhere, and a batch without labels gives 0, not NaN."""
    labelled = labels >= 0
    losses = F.cross_entropy(logits, labels.clamp_min(0), reduction="none")
    return (losses * labelled).sum() / labelled.sum().clamp_min(1)


@dataclass
class Run:
    """Everything built for one run."""

    cfg: RunConfig
    info: DistInfo
    run_dir: Path
    train_set: ImageSet | StreamSet  # held in memory, or read while training (files)
    val_set: ImageSet | None  # held-out images of the online probe (None: probe off)
    augment: MultiViewAugment
    eval_tf: EvalTransform
    module: TrainModule
    model: nn.Module  # module, possibly DDP-wrapped and compiled
    optimizer: torch.optim.Optimizer
    probe_optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    steps_per_epoch: int
    peak_lr: float
    _perm: tuple[int, Tensor] | None = None  # (epoch, its data order), derived, not saved
    bad_images: BadImageLedger | None = None  # a streamed set's replaced images per epoch
    probe_note: str = ""  # where the probe's held-out images come from, or why it is off

    @property
    def streamed(self) -> bool:
        """Whether the training images are read while training (a :class:`StreamSet`)."""
        return isinstance(self.train_set, StreamSet)

    @property
    def probe_fit_on_val(self) -> bool:
        """An unlabeled training set with labelled held-out images: the probe is fitted on
        half of them at each epoch end and scored on the other half."""
        return self.streamed and not self.train_set.classes and self.val_set is not None

    def epoch_order(self, epoch: int) -> Tensor:
        """The data order of ``epoch``: a function of (seed, epoch), drawn once per epoch."""
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(len(self.train_set), generator=g))
        return self._perm[1]

    @property
    def autocast(self) -> Any:
        p = _precision(self.cfg, self.info)
        if p == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if p == "bf16" else torch.float16
        return torch.autocast(self.info.device.type, dtype=dtype)


def _auto_fast(info: DistInfo) -> bool:
    """``auto``: bf16 + channels_last on a GPU, and on a CPU with bf16 matrix units."""
    return info.device.type == "cuda" or (info.device.type == "cpu" and cpu_prefers_bf16())


def _precision(cfg: RunConfig, info: DistInfo) -> str:
    p = cfg.train.precision
    return ("bf16" if _auto_fast(info) else "fp32") if p == "auto" else p


def _channels_last(cfg: RunConfig, info: DistInfo) -> bool:
    c = cfg.train.channels_last
    if c == "auto":
        return _auto_fast(info)
    if not isinstance(c, bool):
        raise ValueError(f"train.channels_last must be auto, true or false, got {c!r}")
    return c


def build_run(cfg: RunConfig, info: DistInfo, run_dir: Path) -> Run:
    """Datasets, augmentation, model, optimizers: everything but the loop."""
    torch.manual_seed(cfg.train.seed)  # same initial weights on every rank
    train_set = build_train_set(cfg.data)
    views = resolve_views(cfg.aug)
    val_set: ImageSet | None
    probe_note = ""
    if isinstance(train_set, StreamSet):
        probe_note = train_set.note
        val_set = None
        if train_set.val is not None and info.is_main:  # only rank 0 scores the probe
            val_set = train_set.val(views[0].crop_size, cfg.data.val_samples)
    else:
        if cfg.data.num_samples:
            train_set = train_set.subset(cfg.data.num_samples)
        val_set = build_train_set(cfg.data, split="test")
        val_set = val_set.subset(min(cfg.data.val_samples, len(val_set)))
    augment = MultiViewAugment(views, train_set.mean, train_set.std).to(info.device)
    eval_tf = EvalTransform(views[0].crop_size, views[0].crop_size, train_set.mean,
                            train_set.std).to(info.device)
    backbone = BACKBONES.build(cfg.backbone.name, **cfg.backbone.cfg)
    method = METHODS.get(cfg.method.name).factory(backbone, cfg.method.cfg)
    if cfg.backbone_b.name:  # unshared branches: view b gets its own network
        method.set_branch_b(BACKBONES.build(cfg.backbone_b.name, **cfg.backbone_b.cfg))
    module = TrainModule(method, max(1, len(train_set.classes)))  # 1: unlabeled (unused)
    if info.world_size > 1 and cfg.train.sync_bn:
        module = convert_sync_bn(module, info.device)
    module = module.to(info.device)
    if _channels_last(cfg, info):
        module = module.to(memory_format=torch.channels_last)
    fused = info.device.type == "cuda"
    optimizer = build_optimizer(module.method.param_groups(), cfg.optim, use_fused=fused)
    probe_optimizer = torch.optim.SGD(module.probe.parameters(), lr=cfg.train.probe_lr,
                                      momentum=0.9)
    model: nn.Module = module
    if info.world_size > 1:
        model = DistributedDataParallel(module, device_ids=[info.device.index]
                                        if info.device.type == "cuda" else None)
    if cfg.train.compile:
        model = torch.compile(model)
    global_batch = cfg.train.batch_size
    if global_batch % info.world_size:
        raise ValueError(f"train.batch_size={global_batch} is not divisible by the "
                         f"{info.world_size} processes")
    check_batch(cfg, len(train_set))
    steps_per_epoch = len(train_set) // global_batch
    scaler = torch.amp.GradScaler(info.device.type, enabled=_precision(cfg, info) == "fp16")
    ledger = (BadImageLedger(steps_per_epoch * global_batch, cfg.data.max_bad_fraction)
              if isinstance(train_set, StreamSet) else None)
    return Run(cfg, info, run_dir, train_set, val_set, augment, eval_tf, module, model, optimizer,
               probe_optimizer, scaler, steps_per_epoch, peak_lr(cfg.optim, global_batch),
               bad_images=ledger, probe_note=probe_note)


# ----------------------------------------------------------------------------- checkpoints


def _checkpoint_path(run_dir: Path) -> Path:
    return run_dir / "checkpoint.pth"


def save_checkpoint(run: Run, step: int) -> None:
    """Atomically write everything needed to resume after ``step`` steps (rank 0)."""
    if not run.info.is_main:
        return
    state = {
        "step": step,
        "module": run.module.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "probe_optimizer": run.probe_optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": torch.get_rng_state(),
        "config_hash": config_hash(run.cfg),
    }
    if run.bad_images is not None:
        state["bad_images"] = run.bad_images.state_dict()
    atomic_torch_save(state, _checkpoint_path(run.run_dir))


def load_checkpoint(run: Run, state: dict[str, Any] | None = None) -> int:
    """Restore the latest checkpoint of the run folder; returns the step to resume at.

    ``state``: the checkpoint already read (rank 0 reads it to check the folder first).
    Whether it belongs to this run is checked by :func:`trainer.rundir.claim_run_dir`.
    """
    if state is None:
        state = read_checkpoint(run.run_dir, run.info.device)
    if state is None:
        return 0
    run.module.load_state_dict(state["module"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.probe_optimizer.load_state_dict(state["probe_optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"].cpu())
    if run.bad_images is not None:
        run.bad_images.load_state_dict(state.get("bad_images", {}))
    log.info("resumed %s at step %d", run.run_dir, state["step"])
    return int(state["step"])


def export_backbone(run: Run, step: int, total_steps: int) -> Path:
    """Write ``backbone.pth``: torchvision-format state dict + metadata (rank 0).

    With unshared branches ``backbone.pth`` holds branch a (the one the online probe
    reads) and its metadata records branch b, whose weights go to ``backbone_b.pth``
    in the same format, so the eval battery can read either.
    """
    method, cfg = run.module.method, run.cfg
    common = {
        "method": cfg.method.name,
        "config_hash": config_hash(cfg),
        "git_sha": git_sha(),
        "steps_done": step,
        "steps_total": total_steps,
        **method.export_meta(),
    }
    files = [("backbone.pth", method.backbone, cfg.backbone, "a")]
    if method.backbone_b is not None:
        files.append(("backbone_b.pth", method.backbone_b, cfg.backbone_b, "b"))
        common["branch_b"] = {"backbone": cfg.backbone_b.name,
                              "backbone_kwargs": dict(cfg.backbone_b.cfg),
                              "num_features": int(method.backbone_b.num_features),
                              "file": "backbone_b.pth"}
    for fname, net, plugin, branch in files:
        meta = {"backbone": plugin.name, "backbone_kwargs": dict(plugin.cfg),
                "num_features": int(net.num_features), "branch": branch, **common}
        sd = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        if run.info.is_main:
            atomic_torch_save({"format": BACKBONE_FORMAT, "state_dict": sd, "meta": meta},
                              run.run_dir / fname)
    return run.run_dir / "backbone.pth"


# ----------------------------------------------------------------------------- the loop


def _batch(run: Run, step: int) -> tuple[list[Tensor], Tensor]:
    """This rank's slice of the global batch of ``step``, augmented on the device."""
    cfg, info = run.cfg, run.info
    epoch, it = divmod(step, run.steps_per_epoch)
    perm = run.epoch_order(epoch)
    global_batch = cfg.train.batch_size
    local = global_batch // info.world_size
    idx = perm[it * global_batch:(it + 1) * global_batch][info.rank * local:(info.rank + 1) * local]
    x = run.train_set.images[idx].to(info.device, non_blocking=True)
    y = run.train_set.labels[idx].to(info.device, non_blocking=True)
    views = run.augment(x, seed=cfg.train.seed * 1_000_000_007 + step, global_batch=global_batch,
                        offset=info.rank * local)
    if _channels_last(cfg, info):
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    return views, y


def _stream_batch(run: Run, batch: Batch) -> tuple[list[Tensor], Tensor]:
    """This rank's rows of a streamed step: views already cropped and flipped by the loader
    (uint8), coloured and normalised on the device with the step's global-batch draws."""
    cfg, info = run.cfg, run.info
    global_batch = cfg.train.batch_size
    batch = batch.to(info.device, non_blocking=True)
    views = run.augment.colour(batch.views, seed=cfg.train.seed * 1_000_000_007 + batch.step,
                               global_batch=global_batch,
                               offset=info.rank * (global_batch // info.world_size))
    if _channels_last(cfg, info):
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    return views, batch.labels


def open_stream(run: Run, start: int, stop: int) -> Iterator[Batch]:
    """This rank's loader batches of steps ``start..stop - 1`` of a streamed set."""
    cfg, info = run.cfg, run.info
    assert isinstance(run.train_set, StreamSet)
    workers = cfg.data.num_workers
    return run.train_set.open(
        views=[ViewSpec.of(v) for v in resolve_views(cfg.aug)], seed=cfg.train.seed,
        global_batch=cfg.train.batch_size, rank=info.rank, world_size=info.world_size,
        start_step=start, stop_step=stop, num_workers=None if workers < 0 else workers,
        decode=cfg.data.decode, device=info.device,
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def train_step(run: Run, step: int, total_steps: int, batch: Batch | None = None,
               mark: Callable[[str], None] | None = None
               ) -> tuple[StepOutput, Tensor, Tensor, float]:
    """One optimisation step; returns the method output, probe logits, labels and lr.

    ``batch``: the loader's batch of ``step`` for a streamed set (None: in memory).
    ``mark``: called with each phase's name as it ends ("augment", "forward",
    "backward+optimizer"), for timing the step's parts (benchmarks/step_breakdown.py)."""
    if batch is None:
        views, y = _batch(run, step)
    else:
        if batch.step != step:
            raise RuntimeError(f"the loader gave step {batch.step}'s batch at step {step}")
        views, y = _stream_batch(run, batch)
    if mark is not None:
        mark("augment")
    factor = lr_factor(run.cfg.optim, step, run.steps_per_epoch, run.cfg.train.epochs)
    lr = set_lr(run.optimizer, run.peak_lr, factor)
    with run.autocast:
        out, logits, probe_loss = run.model(views, y)
    if mark is not None:
        mark("forward")
    run.optimizer.zero_grad(set_to_none=True)
    run.probe_optimizer.zero_grad(set_to_none=True)
    if scaled_step(run.scaler, out.loss + probe_loss, (run.optimizer, run.probe_optimizer)):
        # NOTE: an fp16 step the scaler skipped (overflowed gradients) moved no online
        # weight, so the hook (BYOL's EMA target) must not move either.
        run.module.method.after_optimizer_step(step, total_steps)
    if mark is not None:
        mark("backward+optimizer")
    return out, logits, y, lr


def _check_finite(loss_sum: Tensor, step: int, run: Run) -> None:
    bad = all_reduce_mean((~torch.isfinite(loss_sum)).float())
    if bad.item() > 0:
        raise NonFiniteLossError(
            f"loss became NaN/inf by step {step} of {run.run_dir}; stopped. The last good "
            f"checkpoint ({_checkpoint_path(run.run_dir)}) is kept; lower optim.base_lr or use "
            "train.precision=fp32")


@torch.no_grad()
def probe_val_accuracy(run: Run, batch_size: int = 512) -> float:
    """Accuracy of the online probe on held-out images (eval-mode backbone).

    For an unlabeled training set the probe is fitted on the held-out images instead
    (:func:`fit_probe_on_val`)."""
    if run.probe_fit_on_val:
        return fit_probe_on_val(run, batch_size)
    module = run.module
    was_training = module.training
    module.eval()
    correct = 0
    for i in range(0, len(run.val_set), batch_size):
        x = run.val_set.images[i:i + batch_size].to(run.info.device)
        y = run.val_set.labels[i:i + batch_size].to(run.info.device)
        with run.autocast:
            h = module.method.backbone(run.eval_tf(x))
        correct += (module.probe(h.float()).argmax(1) == y).sum().item()
    module.train(was_training)
    return correct / max(len(run.val_set), 1)


@torch.no_grad()
def _val_features(run: Run, batch_size: int) -> Tensor:
    module = run.module
    was_training = module.training
    module.eval()
    feats = []
    for i in range(0, len(run.val_set), batch_size):
        x = run.val_set.images[i:i + batch_size].to(run.info.device)
        with run.autocast:
            feats.append(module.method.backbone(run.eval_tf(x)).float())
    module.train(was_training)
    return torch.cat(feats)


def fit_probe_on_val(run: Run, batch_size: int = 512, steps: int = 300) -> float:
    """Top-1 of a linear probe fitted on the even-numbered held-out images (evenly spread
    over the classes) and scored on the odd ones; frozen eval-mode features, standardised,
    zero-initialised full-batch Adam: deterministic, and no draw from the run's RNG."""
    assert run.val_set is not None
    h, y = _val_features(run, batch_size), run.val_set.labels.to(run.info.device)
    fit, score = slice(0, None, 2), slice(1, None, 2)
    if len(y[score]) == 0:
        return 0.0
    mu, sd = h[fit].mean(0), h[fit].std(0, unbiased=False).clamp_min(1e-6)
    h = (h - mu) / sd
    weight = torch.zeros(len(run.val_set.classes), h.shape[1], device=h.device,
                         requires_grad=True)
    bias = torch.zeros(len(run.val_set.classes), device=h.device, requires_grad=True)
    opt = torch.optim.Adam([weight, bias], lr=0.01, weight_decay=1e-4)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(h[fit] @ weight.T + bias, y[fit]).backward()
            opt.step()
    with torch.no_grad():
        pred = (h[score] @ weight.T + bias).argmax(1)
    return (pred == y[score]).float().mean().item()


class _EpochMeter:
    """Running sums of the logged quantities over an epoch (device tensors, few syncs)."""

    def __init__(self, diag_samples: int) -> None:
        self.sums: dict[str, Tensor] = {}
        self.count = 0
        self.correct = 0.0
        self.seen = 0
        self.embeddings: list[Tensor] = []
        self.diag_samples = diag_samples

    def add(self, out: StepOutput, logits: Tensor, y: Tensor) -> None:
        parts = {"loss": out.loss.detach(), **out.logs}
        for k, v in parts.items():
            self.sums[k] = self.sums.get(k, 0) + v.float()
        self.count += 1
        self.correct += (logits.argmax(1) == y).sum()  # -1 (unlabeled) is never a class
        self.seen += (y >= 0).sum()
        self.embeddings.append(out.embeddings.float())
        while sum(len(e) for e in self.embeddings[1:]) >= self.diag_samples:
            self.embeddings.pop(0)  # keep the most recent diag_samples rows

    def means(self) -> dict[str, float]:
        out = {k: all_reduce_mean(v / self.count).item() for k, v in self.sums.items()}
        acc = torch.as_tensor(self.correct / torch.as_tensor(self.seen).clamp_min(1)).float()
        out["probe_train_acc"] = all_reduce_mean(acc).item()
        return out


def _epoch_end(run: Run, meter: _EpochMeter, logger: MetricsLogger, epoch: int, step: int,
               lr: float) -> dict[str, float]:
    z = torch.cat(meter.embeddings)[-run.cfg.train.diag_samples:]
    record = {"epoch": epoch, "lr": lr, **meter.means(), **embedding_stats(z)}
    if run.bad_images is not None:
        record["bad_images"] = run.bad_images.count(epoch - 1)
    if run.streamed and not run.train_set.classes:
        del record["probe_train_acc"]  # an unlabeled set: the probe never trains on it
    if run.info.is_main and run.val_set is not None:
        record["probe_val_acc"] = probe_val_accuracy(run)
    elif run.streamed and run.val_set is None:
        record["probe"] = "off"
    logger.log("epoch", step, record)
    return record


def train(cfg: RunConfig) -> Path:
    """Pretrain (or resume) the run described by ``cfg``; returns its run folder.

    Raises:
        ConfigError: The config cannot run here (no CUDA device, a factory refuses it).
        dataroom.DatasetError: The dataset's files are missing or malformed (before step 0).
        dataroom.TooManyBadImages: More of an epoch's images could not be decoded than
            ``data.max_bad_fraction`` allows (the first bad files are listed).
        RunFolderError: The folder holds another experiment's weights or a damaged file.
        FolderLockedError: Another process trains in the folder.
    """
    preflight(cfg, data=False)  # before anything is written (the data: in build_run)
    info = init_distributed(cfg.train.device)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    run = build_run(cfg, info, run_dir)
    total_steps = run.steps_per_epoch * cfg.train.epochs
    stop = min(total_steps, cfg.train.max_steps) if cfg.train.max_steps else total_steps
    resolved = {"world_size": info.world_size, "device": str(info.device),
                "precision": _precision(cfg, info),
                "channels_last": _channels_last(cfg, info), "peak_lr": run.peak_lr,
                "steps_per_epoch": run.steps_per_epoch, "total_steps": total_steps,
                "train_images": len(run.train_set)}
    if run.streamed:
        resolved["probe"] = run.probe_note
        if info.is_main:
            log.info("%s", run.probe_note)
    with contextlib.ExitStack() as held:  # rank 0 holds the folder's lock until the end
        state = claim_run_dir(held, run_dir, cfg, info, resolved, stop, total_steps)
        start = load_checkpoint(run, state)
        finished = stop < total_steps or (run_dir / "DONE").exists()
        if start >= stop and (run_dir / "backbone.pth").exists() and finished:
            log.info("%s already finished (%d steps)", run_dir, start)
            return run_dir
        _loop(run, start, stop, total_steps)
        export_backbone(run, stop, total_steps)
        if info.is_main and stop == total_steps:
            atomic_write_text(run_dir / "DONE", f"{stop}\n")
    return run_dir


def _loop(run: Run, start: int, stop: int, total_steps: int) -> None:
    cfg, info = run.cfg, run.info
    logger = MetricsLogger(run.run_dir, info.is_main, cfg.train.tensorboard)
    bar = progress_bar(total=stop, initial=start,
                       disable=not (info.is_main and cfg.train.progress), desc=run.run_dir.name)
    meter = _EpochMeter(cfg.train.diag_samples)
    loss_sum = torch.zeros((), device=info.device)
    run.model.train()
    t0, lr = time.perf_counter(), 0.0
    # a streamed set: the loader restarts at ``start`` (its batches are functions of
    # (seed, step)); bad images are counted here and summed over ranks when logged
    stream = iter(open_stream(run, start, stop)) if run.streamed else None
    pending_bad: dict[int, int] = {}
    try:
        for step in range(start, stop):
            batch = next(stream) if stream is not None else None
            if batch is not None:
                pending_bad[batch.epoch] = pending_bad.get(batch.epoch, 0) + batch.num_bad
                if batch.bad:
                    run.bad_images.add(batch.epoch, 0, batch.bad)  # this rank's paths
            out, logits, y, lr = train_step(run, step, total_steps, batch)
            loss_sum = loss_sum + out.loss.detach()
            meter.add(out, logits, y)
            done = step + 1
            epoch_end = done % run.steps_per_epoch == 0
            save = epoch_end or done == stop or (cfg.train.ckpt_every_steps
                                                 and done % cfg.train.ckpt_every_steps == 0)
            if save or done % cfg.train.log_every_steps == 0:
                _check_finite(loss_sum, done, run)  # before logging; never save a NaN state
                bad = {}
                if run.bad_images is not None:  # stops above data.max_bad_fraction
                    bad = {"bad_images": _count_bad(run, pending_bad, step // run.steps_per_epoch)}
                ips = (done - start) * cfg.train.batch_size / (time.perf_counter() - t0)
                parts = {k: v.item() for k, v in out.logs.items()}
                logger.log("step", done, {"loss": out.loss.item(), "lr": lr, "img_per_s": ips,
                                          **parts, **bad})
                bar.set_postfix(loss=f"{out.loss.item():.3f}", img_s=f"{ips:.0f}",
                                **{k: f"{v:.3g}" for k, v in parts.items()},
                                **({"bad": bad["bad_images"]} if bad else {}), refresh=False)
            bar.update(1)
            if epoch_end:
                _epoch_end(run, meter, logger, done // run.steps_per_epoch, done, lr)
                meter = _EpochMeter(cfg.train.diag_samples)
            if save:
                save_checkpoint(run, done)
    finally:
        del stream  # a streamed set's loader workers end here
        bar.close()
        logger.close()
    if is_distributed():
        torch.distributed.barrier()


def _count_bad(run: Run, pending: dict[int, int], epoch: int) -> int:
    """Add the bad images counted since the last call (summed over ranks) to the ledger,
    stop above ``data.max_bad_fraction`` (``TooManyBadImages``), and return ``epoch``'s
    count. Every rank calls it at the same steps."""
    assert run.bad_images is not None
    if pending:
        epochs = sorted(pending)
        counts = torch.tensor([pending[e] for e in epochs], dtype=torch.int64,
                              device=run.info.device)
        if is_distributed():
            torch.distributed.all_reduce(counts)
        for e, n in zip(epochs, counts.tolist()):
            run.bad_images.add(e, n)
            if is_distributed() and run.bad_images.over(e):  # the same on every rank
                per_rank: list[Any] = [None] * torch.distributed.get_world_size()
                torch.distributed.all_gather_object(per_rank, run.bad_images.first_bad)
                run.bad_images.merge(per_rank)  # the stop lists every rank's files
            run.bad_images.check(e)
        pending.clear()
    return run.bad_images.count(epoch)
