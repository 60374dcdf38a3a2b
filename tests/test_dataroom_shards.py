"""Tar shards: the converter, the manifest checks, the streaming loader (determinism, rank ×
worker split, resume, pipe: URLs) and bad input, on tiny shards of synthetic JPEG trees."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dataroom import BadImageLedger, ViewSpec
from dataroom.cifar import read_cifar
from dataroom.decode import FALLBACK_RGB, load_rgb
from dataroom.pretrain import open_files
from dataroom.shards import (
    MANIFEST,
    ShardError,
    iter_samples,
    load_manifest,
    main,
    open_source,
    parse_size,
    verify,
    write_shards,
)
from dataroom.stream import ShardLoader, buffer_order
from dataroom.synthetic import write_tree
from dataroom.synthetic_sets import write_tiny_cifar

VIEWS = [ViewSpec(crop_size=16, scale=(0.3, 1.0)), ViewSpec(crop_size=12, scale=(0.2, 0.6))]
N_CLASSES, PER_CLASS = 3, 10  # 30 images
SHARD_SIZE = 14_000  # a few samples per shard


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    write_tree(root, {f"train/c{k}": PER_CLASS for k in range(N_CLASSES)}, size=(40, 56))
    return root


@pytest.fixture(scope="module")
def shards(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "set"
    write_shards(open_source(str(tree)), out, shard_size=SHARD_SIZE, seed=3)
    return out


def copy_set(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def stream(root: Path | str, **kw) -> list:
    args = dict(seed=7, global_batch=6, stop_step=10, num_workers=0, shuffle_buffer=4)
    args.update(kw)
    return list(ShardLoader(root, VIEWS, **args))


def same_batches(a: list, b: list) -> None:
    assert [x.step for x in a] == [y.step for y in b]
    for x, y in zip(a, b):
        assert torch.equal(x.indices, y.indices), x.step
        assert torch.equal(x.labels, y.labels)
        for u, v in zip(x.views, y.views):
            assert torch.equal(u, v)


# -- converter, manifest, round trip ------------------------------------------------------


def test_write_round_trip_bytes_labels_and_manifest(tree: Path, shards: Path) -> None:
    files = open_files("image_folder", tree, "train")
    m = load_manifest(shards)
    assert len(m.shards) >= 4 and m.num_samples == len(files) == N_CLASSES * PER_CLASS
    assert m.classes == files.classes and m.meta["dataset"] == "image_folder"
    assert all(s.bytes <= SHARD_SIZE + 10240 for s in m.shards)  # the tar's closing record
    order = np.random.default_rng(3).permutation(len(files))  # the documented write order
    seen = 0
    for s in m.shards:
        with open(shards / s.name, "rb") as f:
            for sample in iter_samples(f, s.name):
                src = int(order[seen])
                assert sample.key == f"{seen:09d}" and sample.ext == "jpg"
                assert sample.data == Path(files.paths[src]).read_bytes()  # copied as-is
                assert sample.label == files.labels[src]
                seen += 1
    assert seen == len(files)
    assert verify(shards).num_samples == seen
    doc = json.loads((shards / MANIFEST).read_text())
    assert doc["num_samples"] == seen and len(doc["shards"][0]["sha256"]) == 64
    assert not list(shards.glob(".*tmp*"))  # atomic writes leave nothing behind
    # plain POSIX tars: the system's tar lists the members, key.jpg then key.cls
    names = subprocess.run(["tar", "tf", str(shards / m.shards[0].name)], check=True,
                           capture_output=True, text=True).stdout.split()
    assert names[:2] == ["000000000.jpg", "000000000.cls"]


def test_array_dataset_is_stored_losslessly(tmp_path: Path) -> None:
    root = write_tiny_cifar(tmp_path / "c", train=20, test=4)
    out = tmp_path / "s"
    write_shards(open_source("cifar10", str(root), "train"), out, shard_size=10_000)
    arrays = read_cifar("cifar10", root, "train")
    order = np.random.default_rng(0).permutation(len(arrays))
    m = verify(out)
    k = 0
    for s in m.shards:
        with open(out / s.name, "rb") as f:
            for sample in iter_samples(f, s.name):
                assert sample.ext == "png"
                from dataroom.decode import open_image, to_rgb
                pixels = np.asarray(to_rgb(open_image(sample.data)))
                want = arrays.images.take(np.asarray([order[k]])).numpy()[0].transpose(1, 2, 0)
                assert np.array_equal(pixels, want)
                assert sample.label == arrays.labels[order[k]]
                k += 1
    assert k == 20 and m.classes == arrays.classes


def test_cli_write_verify_and_user_errors(tree: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    assert main(["write", str(tree), str(out), "--shard-size", "20KB", "-q"]) == 0
    assert main(["verify", str(out)]) == 0
    assert "ok:" in capsys.readouterr().out
    assert main(["write", str(tree), str(out), "-q"]) == 2  # not empty
    assert main(["write", "nosuchset", str(tmp_path / "x")]) == 2
    assert main(["write", str(tree), str(tmp_path / "y"), "--shard-size", "big"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(e.startswith("error: ") for e in err)
    proc = subprocess.run([sys.executable, "-m", "dataroom.shards", "verify", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: no shard manifest")
    assert parse_size("1GB") == 10 ** 9 and parse_size("64KiB") == 65536


# -- streaming ------------------------------------------------------------------------------


def test_epoch_serves_every_sample_once_with_its_label(shards: Path) -> None:
    m = load_manifest(shards)
    labels = {}
    for s, base in zip(m.shards, m.offsets):
        with open(shards / s.name, "rb") as f:
            for j, sample in enumerate(iter_samples(f, s.name)):
                labels[int(base) + j] = sample.label
    batches = stream(shards, stop_step=10)  # 30 images / 6 = 5 steps per epoch
    for epoch in (0, 1):
        rows = torch.cat([b.indices for b in batches if b.epoch == epoch]).tolist()
        assert sorted(rows) == list(range(30))
    for b in batches:
        assert b.num_bad == 0 and b.views[0].shape == (6, 3, 16, 16)
        assert b.views[1].shape == (6, 3, 12, 12) and b.views[0].dtype == torch.uint8
        assert b.labels.tolist() == [labels[i] for i in b.indices.tolist()]
    assert [b.step for b in batches] == list(range(10))
    order = [torch.cat([b.indices for b in batches if b.epoch == e]).tolist() for e in (0, 1)]
    assert order[0] != order[1]  # a new order each epoch


def test_ranks_and_slots_split_disjoint_and_complete(shards: Path) -> None:
    """2 ranks × 3 slots, global batch 4: per epoch (7 steps, 28 of 30 samples) every
    sample served at most once, all served samples of the epoch distinct over ranks."""
    per_rank = [stream(shards, global_batch=4, rank=r, world_size=2, slots=3, stop_step=14)
                for r in range(2)]
    for epoch in (0, 1):
        rows = [i for rank in per_rank for b in rank if b.epoch == epoch
                for i in b.indices.tolist()]
        assert len(rows) == 28 and len(set(rows)) == 28
    for rank in per_rank:
        assert [b.step for b in rank] == list(range(14))
        assert all(b.indices.numel() == 2 for b in rank)


def test_deterministic_and_workers_match_in_process_slots(shards: Path) -> None:
    a = stream(shards, slots=2)
    same_batches(a, stream(shards, slots=2))
    same_batches(a, stream(shards, num_workers=2))  # DataLoader workers, round-robin
    other = stream(shards, seed=8, slots=2)
    assert any(not torch.equal(x.indices, y.indices) for x, y in zip(a, other))


@pytest.mark.parametrize("k", [3, 5, 8])
def test_resume_at_step_k_equals_the_uninterrupted_stream(shards: Path, k: int) -> None:
    full = stream(shards, slots=2, stop_step=12)
    resumed = stream(shards, slots=2, start_step=k, stop_step=12)
    same_batches(full[k:], resumed)


def test_resume_with_workers(shards: Path) -> None:
    full = stream(shards, num_workers=2, stop_step=9)
    same_batches(full[4:], stream(shards, num_workers=2, start_step=4, stop_step=9))


def test_resume_skips_without_reading_image_bytes(shards: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import dataroom.stream as st

    decoded = []
    real = st.open_image
    monkeypatch.setattr(st, "open_image", lambda data, name: decoded.append(name)
                        or real(data, name))
    stream(shards, start_step=4, stop_step=5)
    assert len(decoded) == 6  # one batch decoded, the 24 earlier samples not


def test_buffer_order_is_a_permutation_with_bounded_lookahead() -> None:
    order = buffer_order(500, 16, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(500))
    assert (order - np.arange(500)).max() < 16  # read at most 16 outputs ahead
    assert not np.array_equal(order, np.arange(500))


def test_pipe_url_matches_local_files(shards: Path) -> None:
    local = stream(shards, slots=2)
    piped = stream(shards, slots=2, url=f"pipe:cat {shards}/{{name}}")
    same_batches(local, piped)
    same_batches(local, stream(shards / MANIFEST, slots=2, url=f"{shards}/{{name}}"))
    # the whole set named by one pipe: template (manifest fetched by the same command)
    same_batches(local, stream(f"pipe:cat {shards}/{{name}}", slots=2))


def test_pipe_command_failure_is_reported(shards: Path, tmp_path: Path) -> None:
    with pytest.raises(ShardError, match="exited with status"):
        stream(shards, url=f"pipe:cat {tmp_path}/nothing/{{name}}")


def test_pipe_names_cannot_inject_commands(shards: Path, tmp_path: Path) -> None:
    bad = copy_set(shards, tmp_path / "bad")
    doc = json.loads((bad / MANIFEST).read_text())
    doc["shards"][0]["name"] = "x;touch INJECTED;.tar"
    (bad / MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(ShardError, match="bad shard name"):
        stream(bad / MANIFEST, url=f"pipe:cat {shards}/{{name}}")
    assert not (Path.cwd() / "INJECTED").exists()


def test_pipe_process_group_is_killed_when_the_reader_stops(shards: Path,
                                                            tmp_path: Path) -> None:
    """A command still writing when the slot is done is killed, not left running."""
    pids = tmp_path / "pids"
    url = f"pipe:echo $$ >> {pids}; cat {shards}/{{name}}; sleep 30"
    stream(shards, url=url, stop_step=2)
    groups = {int(pid) for pid in pids.read_text().split()}
    assert len(groups) >= 2
    deadline = time.time() + 10  # signalled: give the members time to exit
    while live_members(groups) and time.time() < deadline:
        time.sleep(0.05)
    assert not live_members(groups)


def live_members(groups: set[int]) -> list[str]:
    """Processes (not zombies: those wait for a reaper) whose group is in ``groups``."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in groups and fields[0] != "Z":
            out.append(stat.parent.name)
    return out


# -- bad input --------------------------------------------------------------------------


def test_truncated_shard_fails_at_open_and_in_the_worker(shards: Path, tmp_path: Path) -> None:
    bad = copy_set(shards, tmp_path / "t")
    m = load_manifest(bad)
    victim = bad / m.shards[1].name
    victim.write_bytes(victim.read_bytes()[:3000])
    with pytest.raises(ShardError, match="truncated"):
        stream(bad)
    with pytest.raises(ShardError, match="truncated") as info:  # via a URL: size unchecked
        stream(bad / MANIFEST, url=f"{bad}/{{name}}", num_workers=1)
    assert "\n" not in str(info.value) and str(info.value).startswith(m.shards[1].name)
    with pytest.raises(ShardError, match="truncated"):
        verify(bad)


def test_shard_not_in_manifest_and_missing_shard(shards: Path, tmp_path: Path) -> None:
    extra = copy_set(shards, tmp_path / "e")
    (extra / "train-999999.tar").write_bytes((extra / "train-000000.tar").read_bytes())
    with pytest.raises(ShardError, match="not in the manifest: train-999999.tar"):
        stream(extra)
    missing = copy_set(shards, tmp_path / "m")
    (missing / "train-000002.tar").unlink()
    with pytest.raises(ShardError, match="missing"):
        stream(missing)


def test_count_and_checksum_mismatch(shards: Path, tmp_path: Path) -> None:
    bad = copy_set(shards, tmp_path / "c")
    doc = json.loads((bad / MANIFEST).read_text())
    doc["shards"][0]["samples"] -= 1
    doc["num_samples"] -= 1
    (bad / MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(ShardError, match="more samples than"):
        stream(bad, stop_step=5, global_batch=29)
    with pytest.raises(ShardError, match="samples, the manifest lists"):
        verify(bad)
    flipped = copy_set(shards, tmp_path / "f")
    p = flipped / load_manifest(flipped).shards[0].name
    data = bytearray(p.read_bytes())
    data[800] ^= 0xFF  # inside the first image: same size, other bytes
    p.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="SHA-256"):
        verify(flipped)


def test_corrupt_sample_is_a_counted_skip(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    write_tree(tree, {"train/a": 5, "train/b": 5}, size=(40, 56))
    (tree / "train/b/b_0002.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "s"
    write_shards(open_source(str(tree)), out, shard_size=SHARD_SIZE)
    batches = stream(out, global_batch=5, stop_step=2)
    assert sum(b.num_bad for b in batches) == 1
    (b,) = [b for b in batches if b.num_bad]
    row = int(torch.nonzero(b.sources < 0)[0, 0])
    assert b.bad[0][0].endswith(".tar:" + f"{int(b.indices[row]):09d}")
    assert b.views[0][row].flatten(1).T.unique(dim=0).tolist() == [list(FALLBACK_RGB)]
    assert b.labels[row] == 1  # the row keeps its own label
    ledger = BadImageLedger(10, max_fraction=0.0)
    for x in batches:
        ledger.add(x.epoch, x.num_bad, x.bad)
    with pytest.raises(Exception, match="could not be decoded"):
        ledger.check(0)


def test_views_match_the_file_decoder_geometry(shards: Path) -> None:
    """A streamed view is the crop of the stored image the geometry names (the same
    contract as the file loader): recompute row 0 from the decoded file."""
    from dataroom.decode import cut_views
    from dataroom.geometry import view_geometry

    b = stream(shards, stop_step=1)[0]
    m = load_manifest(shards)
    idx = int(b.indices[0])
    shard = int(np.searchsorted(m.offsets, idx, side="right")) - 1
    with open(shards / m.shards[shard].name, "rb") as f:
        data = [s.data for s in iter_samples(f, "x")][idx - int(m.offsets[shard])]
    tmp = shards.parent / "one.jpg"
    tmp.write_bytes(data)
    img = load_rgb(str(tmp))
    from dataroom.decode import open_image
    outs = [np.empty((3, v.crop_size, v.crop_size), np.uint8) for v in VIEWS]
    geo = [view_geometry(7, 0, [idx], v, [img.height], [img.width], s.scale, s.ratio,
                         s.hflip_p) for v, s in enumerate(VIEWS)]
    cut_views(open_image(data), np.stack([g[0][0] for g in geo]),
              [bool(g[1][0]) for g in geo], [16, 12], ["bicubic"] * 2, outs)
    for v in range(2):
        assert np.array_equal(b.views[v][0].numpy(), outs[v])


def test_shard_speed_benchmark_writes_its_report(tmp_path: Path) -> None:
    from benchmarks.shard_speed import main as bench

    out = tmp_path / "r.json"
    report = bench(["--photos", "none", "--images", "8", "--height", "40", "--width", "56",
                    "--batch", "4", "--rounds", "1", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert doc["schema"] == "sslbench.shard_speed/1" == report["schema"]
    assert set(doc["results"]) == {"files", "shards", "shards_pipe", "files_read",
                                   "shards_read"}
    assert all(r["images_per_round"] == 8 for r in doc["results"].values())


def test_stl10_train_plus_unlabeled_keeps_minus_one_labels(tmp_path: Path) -> None:
    from dataroom.synthetic_sets import write_tiny_stl10

    root = write_tiny_stl10(tmp_path / "stl", train=6, test=2, unlabeled=8)
    out = tmp_path / "s"
    assert main(["write", "stl10", str(out), "--root", str(root), "--split",
                 "train+unlabeled", "-q"]) == 0
    m = verify(out)
    assert m.num_samples == 14 and m.meta["split"] == "train+unlabeled"
    assert m.shards[0].name.startswith("train_unlabeled-")
    batches = stream(out, global_batch=7, stop_step=2)
    labels = torch.cat([b.labels for b in batches])
    assert (labels == -1).sum() == 8 and labels.max() < 10


def test_device_decode_is_refused_clearly(shards: Path) -> None:
    with pytest.raises(ShardError, match="CPU only"):
        ShardLoader(shards, VIEWS, seed=0, global_batch=6, num_workers=0, decode="gpu")
