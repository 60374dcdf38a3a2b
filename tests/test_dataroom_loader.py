"""The pretraining loader on real JPEG/PNG folders: determinism, resume, ranks, bad data,
and the device decode path run on the CPU device."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dataroom import loader as loader_mod
from dataroom.badimages import BadImageLedger, TooManyBadImages
from dataroom.decode import FALLBACK_RGB
from dataroom.loader import StepBatchSampler, ViewSpec, epoch_order
from dataroom.pretrain import PretrainLoader
from dataroom.readers import imagenet, unlabeled_folder
from dataroom.synthetic import natural_image, write_image, write_tree
from trainer.augment import RECIPES, MultiViewAugment

VIEWS = [ViewSpec(24), ViewSpec(16, scale=(0.2, 1.0), interpolation="bilinear")]
SIZES = [(40, 56), (56, 40), (48, 48), (36, 64)]


def _tree(root: Path, per_class: int = 4, classes: int = 3) -> Path:
    for c in range(classes):
        for j in range(per_class):
            h, w = SIZES[(c + j) % len(SIZES)]
            write_image(root / "train" / f"n0{c}" / f"n0{c}_{j}.JPEG",
                        natural_image(h, w, 10 * c + j))
    return root


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tree(tmp_path_factory.mktemp("clean"))


@pytest.fixture(scope="module")
def odd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ImageNet's oddities and broken files among good JPEGs."""
    root = _tree(tmp_path_factory.mktemp("odd"))
    pixels = natural_image(40, 56, 77)
    write_image(root / "train/n00/n00_cmyk.JPEG", pixels, mode="CMYK")
    write_image(root / "train/n01/n01_png.JPEG", pixels, fmt="PNG")
    write_image(root / "train/n02/n02_grey.JPEG", pixels, mode="L")
    (root / "train/n00/n00_empty.JPEG").write_bytes(b"")
    (root / "train/n01/n01_corrupt.JPEG").write_bytes(b"\xff\xd8 not really a jpeg" * 10)
    buf = io.BytesIO()
    Image.fromarray(natural_image(48, 48, 78)).save(buf, "JPEG", quality=90)
    (root / "train/n02/n02_truncated.JPEG").write_bytes(buf.getvalue()[:700])
    return root


def _batches(root: Path, steps: int, **kw) -> list:
    kw = {"seed": 3, "global_batch": 4, "num_workers": 0, **kw}
    kw.setdefault("stop_step", kw.get("start_step", 0) + steps)
    return list(PretrainLoader(imagenet(root, "train"), VIEWS, **kw))


def _same(a, b) -> bool:
    return (a.step == b.step and all(torch.equal(x, y) for x, y in zip(a.views, b.views))
            and torch.equal(a.labels, b.labels) and torch.equal(a.sources, b.sources))


def test__batch_shapes_layout_and_labels(clean_root: Path) -> None:
    (b,) = _batches(clean_root, 1)
    assert [tuple(v.shape) for v in b.views] == [(4, 3, 24, 24), (4, 3, 16, 16)]
    assert all(v.dtype == torch.uint8 and v.is_contiguous() for v in b.views)
    fs = imagenet(clean_root, "train")
    perm = epoch_order(3, 0, len(fs))
    assert b.indices.tolist() == perm[:4].tolist()
    assert b.labels.tolist() == fs.labels[b.indices.numpy()].tolist() and b.num_bad == 0
    assert all(v.float().std() > 10 for v in b.views)  # real pixels, not a fill


def test__identical_for_0_1_2_workers_across_an_epoch_boundary(odd_root: Path) -> None:
    runs = [_batches(odd_root, 5, num_workers=n) for n in (0, 1, 2)]
    assert [b.step for b in runs[0]] == [0, 1, 2, 3, 4] and runs[0][4].epoch == 1
    for other in runs[1:]:
        assert all(_same(a, b) for a, b in zip(runs[0], other))


def test__resume_at_step_k_gives_the_uninterrupted_batches(clean_root: Path) -> None:
    whole = _batches(clean_root, 7, num_workers=1)
    resumed = _batches(clean_root, 3, start_step=4, num_workers=2)
    assert [b.step for b in resumed] == [4, 5, 6]
    assert all(_same(a, b) for a, b in zip(whole[4:], resumed))


def test__each_rank_decodes_only_its_rows(clean_root: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    whole = _batches(clean_root, 3, global_batch=6)
    real = loader_mod.read_bytes
    read: dict[int, list[str]] = {0: [], 1: []}
    parts = {}
    for rank in (0, 1):
        monkeypatch.setattr(loader_mod, "read_bytes",
                            lambda p, rank=rank: read[rank].append(p) or real(p))
        parts[rank] = _batches(clean_root, 3, global_batch=6, rank=rank, world_size=2)
    fs = imagenet(clean_root, "train")
    for step, full in enumerate(whole):
        for rank in (0, 1):
            part = parts[rank][step]
            rows = slice(3 * rank, 3 * rank + 3)
            assert torch.equal(part.indices, full.indices[rows])
            assert all(torch.equal(p, f[rows]) for p, f in zip(part.views, full.views))
    for rank in (0, 1):
        asked = [fs.paths[i] for b in parts[rank] for i in b.indices.tolist()]
        assert read[rank] == asked  # each of its own images read once, nothing else
    for step, full in enumerate(whole):  # per step: disjoint reads that cover the batch
        mine, theirs = (set(read[r][3 * step:3 * step + 3]) for r in (0, 1))
        assert not mine & theirs
        assert mine | theirs == {fs.paths[i] for i in full.indices.tolist()}
    sampler = StepBatchSampler(12, 6, seed=3, rank=1, world_size=2)
    assert [k[2] for k in sampler.keys(0)] == epoch_order(3, 0, 12)[3:6].tolist()


def test__bad_images_are_replaced_deterministically_and_reported(odd_root: Path) -> None:
    fs = imagenet(odd_root, "train")
    batches = _batches(odd_root, 4, global_batch=4)  # 4 steps × 4 = 16 = 1⅓ epochs of 18
    names = {p.split("/")[-1] for b in batches for p, _ in b.bad}
    bad_rows = [(b, r) for b in batches for r in range(4) if b.sources[r] != b.indices[r]]
    assert sum(b.num_bad for b in batches) == len(bad_rows) >= 1
    assert names <= {"n00_empty.JPEG", "n01_corrupt.JPEG", "n02_truncated.JPEG"}
    reasons = " ".join(r for b in batches for _, r in b.bad)
    for b, r in bad_rows:
        src = int(b.sources[r])
        assert src >= 0 and fs.paths[src].split("/")[-1] not in names
        assert b.labels[r] == fs.labels[src]  # the substitute's label
    assert any(k in reasons for k in ("empty file", "not an image", "cannot decode"))
    again = _batches(odd_root, 4, global_batch=4, num_workers=2)
    assert all(_same(a, b) and a.bad == b.bad for a, b in zip(batches, again))


def test__every_file_broken_gives_the_mean_grey_image(tmp_path: Path) -> None:
    for j in range(4):
        (tmp_path / f"broken_{j}.jpg").write_bytes(b"nope" * j)
    fs = unlabeled_folder(tmp_path)
    (b,) = list(PretrainLoader(fs, VIEWS, seed=0, global_batch=4, stop_step=1, num_workers=0))
    assert b.num_bad == 4 and (b.sources == -1).all() and (b.labels == -1).all()
    grey = torch.tensor(FALLBACK_RGB, dtype=torch.uint8).view(1, 3, 1, 1)
    assert all(torch.equal(v, grey.expand_as(v)) for v in b.views)
    assert len(b.bad) == 4 * (1 + 3)  # each row: its file, then 3 substitutes


def test__ledger_stops_above_the_fraction_with_the_first_paths(odd_root: Path) -> None:
    batches = _batches(odd_root, 4, global_batch=4)
    loose, strict = BadImageLedger(16, max_fraction=0.5), BadImageLedger(16, max_fraction=0.01)
    for b in batches:
        for ledger in (loose, strict):
            ledger.add(b.epoch, b.num_bad, b.bad)
        loose.check(b.epoch)
    epoch = next(b.epoch for b in batches if b.num_bad)
    with pytest.raises(TooManyBadImages, match=r"could not be decoded.*max_bad_fraction=0.01 "
                                               r"of the 16 images.*First bad files: .*JPEG \("):
        strict.check(epoch)
    restored = BadImageLedger(16, 0.01)
    restored.load_state_dict(strict.state_dict())
    assert restored.counts == strict.counts and restored.first_bad == strict.first_bad


def test__device_path_on_the_cpu_matches_the_cpu_path(odd_root: Path) -> None:
    cpu = _batches(odd_root, 4)
    dev = _batches(odd_root, 4, decode="gpu", device="cpu", num_workers=1)
    diffs = []
    for a, b in zip(cpu, dev):
        assert torch.equal(a.sources, b.sources) and torch.equal(a.labels, b.labels)
        assert a.bad == b.bad and a.step == b.step
        for x, y in zip(a.views, b.views):
            diffs.append((x.int() - y.int()).abs().flatten())
    d = torch.cat(diffs).float()
    # same boxes and flips; PIL vs torch antialiased resampling differ by rounding only
    assert d.mean() < 0.6 and torch.quantile(d, 0.99) <= 2


def test__colour_of_precropped_views_draws_forward_colour_parameters() -> None:
    views = [replace_crop(v) for v in RECIPES.build("vicreg", 16)]
    aug = MultiViewAugment(views, (0.4,) * 3, (0.2,) * 3)
    x = torch.from_numpy(np.stack([natural_image(16, 16, s) for s in range(6)])).permute(0, 3, 1, 2)
    full = aug(x.contiguous(), seed=9, global_batch=8, offset=2)
    coloured = aug.colour([x, x], seed=9, global_batch=8, offset=2)
    for a, b in zip(full, coloured):  # the crop of `full` is the identity here
        assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(coloured[0], coloured[1])


def replace_crop(view):
    """The view with an identity crop (whole image, no flip)."""
    from dataclasses import replace

    return replace(view, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0.0)


def test__sampler_refuses_bad_shapes() -> None:
    with pytest.raises(ValueError, match="not a positive multiple of the 3 processes"):
        StepBatchSampler(100, 8, world_size=3)
    with pytest.raises(ValueError, match="exceeds the 5 images"):
        StepBatchSampler(5, 8)
    assert len(StepBatchSampler(100, 8, start_step=3, stop_step=10)) == 7


def test__write_tree_makes_distinct_photograph_like_files(tmp_path: Path) -> None:
    paths = write_tree(tmp_path, {"a": 2}, size=(32, 32))
    a, b = (np.asarray(Image.open(p)) for p in paths)
    assert a.std() > 20 and np.abs(a.astype(int) - b.astype(int)).mean() > 10
