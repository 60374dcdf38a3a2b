# ruff: noqa: F811  (the fixtures imported from test_eval_run_all are parameters here)
"""Eval records know what produced them: settings identity, torn records, impossible
settings, partial loads, damaged checkpoints (one line, exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from eval.run_all import cli, main, resolve_suite
from eval.suites import SUITES
from tests.test_eval_run_all import _one_thread, checkpoint, mini_root  # noqa: F401  (fixtures)


@pytest.mark.parametrize("suite", sorted(SUITES))
def test__every_suite_passes_its_own_checks(suite: str) -> None:
    resolve_suite(suite, [], None)


@pytest.mark.parametrize("item,message", [
    ("knn.ks=0", "knn.ks=[0] is not allowed; expected every value >= 1"),
    ("knn.temperature=0", "knn.temperature=0.0 is not allowed; expected > 0"),
    ("imagenet_linear.epochs=0", "imagenet_linear.epochs=0 is not allowed"),
    ("imagenet_linear.mode=fast", "imagenet_linear.mode='fast' is not allowed; expected one of "
                                  "augmented, features"),
    ("voc07_lowshot.ks=[]", "voc07_lowshot.ks=[] is not allowed"),
    ("voc07_svm.folds=1", "voc07_svm.folds=1 is not allowed; expected >= 2"),
    ("device=gpu", "run.device='gpu' is not allowed"),
])
def test__impossible_settings_are_refused_in_one_line(item: str, message: str,
                                                      checkpoint: Path, tmp_path: Path,
                                                      capsys) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        resolve_suite("mini", [item], None)
    assert cli([str(checkpoint), "--suite", "mini", "--out", str(tmp_path), item]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {message}" or (err.startswith("error: ") and message in err)
    assert not list(tmp_path.glob("*.json"))


def _knn(checkpoint: Path, root: Path, out: Path, *extra: str, **kw) -> list[dict]:
    return main(str(checkpoint), "mini", str(root), only="knn", out=str(out),
                overrides=["cache_dir=", *extra], **kw)


@pytest.mark.slow
def test__new_settings_run_and_are_recorded_beside_the_old(mini_root: Path, checkpoint: Path,
                                                           tmp_path: Path, capsys) -> None:
    """The issue's case: with records present, knn.ks=10 knn.temperature=0.5 measured and
    recorded; the default records stay; a rerun of either is 'already recorded'."""
    out = tmp_path / "rec"
    old = {r["id"]: r for r in _knn(checkpoint, mini_root, out)}
    assert {r["metric"] for r in old.values()} == {"top1_k20", "top5_k20", "top1_k200",
                                                    "top5_k200"}
    assert all(r["variant"] is None and sorted(r["group"]) == sorted(old) for r in old.values())
    capsys.readouterr()
    new = _knn(checkpoint, mini_root, out, "knn.ks=10", "knn.temperature=0.5")
    assert "already recorded" not in capsys.readouterr().out
    assert {r["metric"] for r in new} == {"top1_k10", "top5_k10"}
    rec = next(r for r in new if r["metric"] == "top1_k10")
    assert rec["variant"] == "temperature=0.5"
    assert rec["config"]["benchmark"]["temperature"] == 0.5 and rec["status"] == "ok"
    # same k as a default record, other temperature: its own id, the default one untouched
    t05 = _knn(checkpoint, mini_root, out, "knn.temperature=0.5")
    ids = {p.stem for p in out.glob("*.json")}
    assert set(old) <= ids and rec["id"] in ids and {r["id"] for r in t05} <= ids
    assert len(ids) == 4 + 2 + 4
    k20 = {r["variant"]: r["value"] for r in map(lambda p: json.loads(p.read_text()),
                                                  out.glob("*.json"))
           if r["metric"] == "top1_k20"}
    assert set(k20) == {None, "temperature=0.5"}
    capsys.readouterr()
    _knn(checkpoint, mini_root, out)
    _knn(checkpoint, mini_root, out, "knn.ks=10", "knn.temperature=0.5")
    assert capsys.readouterr().out.count("already recorded") == 2
    # a setting that does not change the value (the device, threads) reuses the records
    _knn(checkpoint, mini_root, out, "device=cpu", "threads=1")
    assert "already recorded" in capsys.readouterr().out


@pytest.mark.slow
def test__the_same_settings_on_another_data_root_are_measured_again(
        mini_root: Path, checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "rec"
    first = _knn(checkpoint, mini_root, out)
    other = tmp_path / "elsewhere"
    other.symlink_to(mini_root, target_is_directory=True)  # same files, another --data-root
    capsys.readouterr()
    again = _knn(checkpoint, other, out)
    printed = capsys.readouterr().out
    assert "already recorded" not in printed
    assert f"knn: recorded with data_root {mini_root}, now {other}" in printed
    # measured again under the same ids: the records now name the new root
    assert sorted(r["id"] for r in again) == sorted(r["id"] for r in first)
    stored = [json.loads(p.read_text()) for p in out.glob("*.json")]
    assert len(stored) == len(first) and {r["config"]["data_root"] for r in stored} == {str(other)}
    assert {r["config"]["data"]["voc07"] for r in stored} == {str(other / "VOCdevkit/VOC2007")}
    _knn(checkpoint, other, out)
    assert "already recorded" in capsys.readouterr().out


@pytest.mark.slow
def test__a_torn_record_is_measured_again(mini_root: Path, checkpoint: Path,
                                          tmp_path: Path, capsys) -> None:
    out = tmp_path / "rec"
    first = _knn(checkpoint, mini_root, out)
    k200 = next(r for r in first if r["metric"] == "top1_k200")
    path = out / f"{k200['id']}.json"
    path.write_text(path.read_text()[:40])
    capsys.readouterr()
    again = _knn(checkpoint, mini_root, out)
    printed = capsys.readouterr().out
    assert "already recorded" not in printed and f"{path}: unreadable" in printed
    assert json.loads(path.read_text())["value"] == k200["value"]
    assert sorted(r["id"] for r in again) == sorted(r["id"] for r in first)


@pytest.mark.slow
def test__a_partial_load_is_marked_in_the_records(mini_root: Path, checkpoint: Path,
                                                  tmp_path: Path, capsys) -> None:
    obj = torch.load(checkpoint, weights_only=True)
    dropped = sorted(obj["state_dict"])[0]
    del obj["state_dict"][dropped]
    partial = tmp_path / "run" / "backbone.pth"
    partial.parent.mkdir()
    torch.save(obj, partial)
    assert cli([str(partial), "--suite", "mini", "--only", "knn", "--out", str(tmp_path)]) == 2
    assert "--allow-partial" in capsys.readouterr().err
    records = _knn(partial, mini_root, tmp_path / "rec", allow_partial=True)
    assert records and all(r["partial_load"] for r in records)
    assert all(r["key_report"]["missing"] == 1 for r in records)
    full = _knn(checkpoint, mini_root, tmp_path / "rec")
    assert not any(r["partial_load"] for r in full)


DAMAGE = {
    "empty": lambda p: p.write_bytes(b""),
    "text": lambda p: p.write_text("not a checkpoint\n"),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:100]),
    "folder": lambda p: p.mkdir(),
    "missing": lambda p: None,
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test__a_damaged_checkpoint_is_one_line_and_exit_2(damage: str, checkpoint: Path,
                                                      tmp_path: Path, capsys) -> None:
    path = tmp_path / "backbone.pth"
    if damage in ("truncated",):
        path.write_bytes(checkpoint.read_bytes())
    DAMAGE[damage](path)
    assert cli([str(path), "--suite", "mini", "--out", str(tmp_path / "rec")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}: ") and "\n" not in err, err


def test__an_unreadable_run_config_beside_the_checkpoint_is_named(checkpoint: Path,
                                                                 tmp_path: Path,
                                                                 capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "backbone.pth").write_bytes(checkpoint.read_bytes())
    (run / "config.yaml").write_text("config: [unclosed\n")
    assert cli([str(run / "backbone.pth"), "--suite", "mini", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'config.yaml'}: the run's config.yaml beside the checkpoint is unreadable" \
        in err


def test__identity_leaves_out_what_does_not_change_the_value() -> None:
    """Paths, threads, the device and the detection backend *setting* (the resolved backend
    is the record's own) are not a variant; a temperature or a seed is."""
    from eval.config import as_dict, identity, variant

    suite = SUITES["paper"]()

    def var(*items: str) -> dict[str, str]:
        spec, _ = resolve_suite("paper", list(items), None)
        return {n: variant(identity(as_dict(c), as_dict(spec.run)),
                           identity(as_dict(suite.benchmarks[n]), as_dict(suite.run)))
                for n, c in spec.benchmarks.items()}

    assert set(var("device=cpu", "threads=2", "num_workers=1", "cache_dir=",
                   "coco_det.backend=torchvision", "voc07+12_det.output_dir=/tmp/x",
                   "knn.ks=10").values()) == {""}
    got = var("knn.temperature=0.5", "seed=3")
    assert got["knn"] == "temperature=0.5 run.seed=3" and got["voc07_svm"] == "run.seed=3"
