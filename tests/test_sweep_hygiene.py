"""Sweep planning rejects what would run wrong; one launcher per sweep; parallelism holds
across launches; bookkeeping settings keep a run's folder; a damaged sweep.json is one line."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sweeps import launch, manifest, status
from sweeps.spec import SpecError
from tests.test_sweeps import tiny_base, write_spec
from trainer.config import save_config
from trainer.io import folder_lock


def test__a_method_overrides_typo_is_refused(tmp_path: Path, capsys) -> None:
    """``simsaim:`` would leave SimSiam on the base recipe (LARS 0.2, not SGD 0.05)."""
    spec = write_spec(tmp_path / "s.yaml", base=tiny_base(),
                      method_overrides={"simsaim": {"optim": {"name": "sgd"}}})
    with pytest.raises(SpecError, match=r"method_overrides.simsaim: unknown method 'simsaim'; "
                                        r"available methods: barlow_twins, byol, simclr"):
        launch.plan(method="simsiam", spec=spec, cluster="local", root=tmp_path)
    assert launch.cli(["--spec", str(spec), "--dry-run", "--cluster", "local"]) == 2
    assert "simsaim" in capsys.readouterr().err


@pytest.mark.parametrize("item,message", [
    ("slurm.array_parallelism=-1", "array_parallelism=-1 is not allowed; expected >= 0"),
    ("slurm.nodes=0", "nodes=0 is not allowed; expected >= 1"),
    ("eval.suite=nosuch", "suite='nosuch' is not allowed; expected one of , paper, fast, mini"),
    ("train.precision=bfloat16", "train.precision='bfloat16' is not allowed"),
    ("method.projector=abc", "method.projector='abc' is not allowed"),
])
def test__dry_run_refuses_bad_sweep_options_in_one_line(item: str, message: str, tmp_path: Path,
                                                        capsys) -> None:
    spec = write_spec(tmp_path / "s.yaml", base=tiny_base())
    rc = launch.cli(["--spec", str(spec), "--dry-run", "--cluster", "local", "--root",
                     str(tmp_path / "r"), item])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and "\n" not in err, err
    assert not (tmp_path / "r").exists()


def test__every_planned_run_is_checked_including_factories(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", base=tiny_base(),
                      grid={"train.precision": ["fp32", "bfloat16"]})
    with pytest.raises(SpecError, match=r"grid.train.precision='bfloat16'.*expected one of"):
        launch.plan(spec=spec, cluster="local", root=tmp_path)
    spec = write_spec(tmp_path / "t.yaml", base=tiny_base(),
                      runs=[{"name": "ok"}, {"name": "byol", "method": {
                          "name": "byol", "projector": "32-16", "predictor": "32-8"}}])
    with pytest.raises(SpecError, match=r"run 'byol'.*must end in the projector's width 16"):
        launch.plan(spec=spec, cluster="local", root=tmp_path)


def test__chained_eval_settings_are_checked_at_planning(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", base=tiny_base(),
                      eval={"suite": "mini", "extra_args": ["knn.ks=0"]})
    with pytest.raises(SpecError, match=r"eval: knn.ks=\[0\] is not allowed"):
        launch.plan(spec=spec, cluster="local", root=tmp_path)
    spec = write_spec(tmp_path / "t.yaml", base=tiny_base(),
                      eval={"suite": "mini", "extra_args": ["--only", "nosuch"]})
    with pytest.raises(SpecError, match=r"eval: --only: nosuch not in suite 'mini'"):
        launch.plan(spec=spec, cluster="local", root=tmp_path)


def test__bookkeeping_overrides_keep_the_folders_and_old_names_are_found(tmp_path: Path) -> None:
    """A relaunch with another checkpoint cadence (or data.root) plans the same folders,
    so finished runs stay done; a folder named under an earlier hash is reused."""
    spec = write_spec(tmp_path / "s.yaml", base=tiny_base(), seeds=[0, 1])
    root = tmp_path / "runs"
    first = launch.plan(spec=spec, cluster="local", root=root)
    again = launch.plan(spec=spec, cluster="local", root=root,
                        overrides=["train.ckpt_every_steps=7", "data.root=/same/files",
                                   "train.device=cpu"])
    assert [r.folder for r in first.runs] == [r.folder for r in again.runs]
    run = first.runs[0]
    old = run.folder.with_name(run.folder.name[:-8] + "0ldha5h0")
    save_config(run.cfg, old / "config.yaml", {"config_hash": "0" * 64})
    (old / "DONE").write_text("24\n")
    sweep = launch.plan(spec=spec, cluster="local", root=root)
    assert sweep.runs[0].folder == old
    assert launch.decide(sweep, {}, {})[sweep.runs[0].key] == "done"


def test__a_damaged_sweep_json_is_one_line(tmp_path: Path, capsys) -> None:
    spec = write_spec(tmp_path / "s.yaml", base=tiny_base())
    sweep = launch.plan(spec=spec, cluster="local", root=tmp_path)
    sweep.folder.mkdir(parents=True)
    (sweep.folder / "sweep.json").write_text('{"runs": {"a": ')
    assert launch.cli(["--spec", str(spec), "--dry-run", "--cluster", "local", "--root",
                       str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {sweep.folder / 'sweep.json'}: unreadable") and "\n" not in err
    assert "move it aside" in err
    assert status.main([str(sweep.folder)]) == 2
    assert "sweep.json: unreadable" in capsys.readouterr().err


def test__a_second_launcher_of_one_sweep_stops_naming_the_first(tmp_path: Path,
                                                                capsys) -> None:
    spec = write_spec(tmp_path / "s.yaml", base=tiny_base())
    sweep = launch.plan(spec=spec, cluster="local", root=tmp_path)
    with folder_lock(sweep.folder, "sweep launcher, local"):
        rc = launch.cli(["--spec", str(spec), "--cluster", "local", "--root", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith(f"error: {sweep.folder} is in use by pid ")
    assert "(sweep launcher, local, since" in err
    assert not any(p.name != ".lock" for p in sweep.folder.iterdir())


def test__array_parallelism_counts_jobs_left_by_an_earlier_launcher(
        fmnist_root: Path, tmp_path: Path, monkeypatch) -> None:
    """A launcher killed with its job still running; the next launch of the sweep (limit 1)
    starts its run only when that job has ended."""
    spec = write_spec(tmp_path / "s.yaml", base=tiny_base(fmnist_root), seeds=[0])
    sweep = launch.plan(spec=spec, cluster="local", root=tmp_path,
                        overrides=["train.epochs=1", "slurm.array_parallelism=1"])
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                               "submitit-stand-in"])
    with manifest.update(sweep.folder) as data:
        data["runs"]["other-run"] = {"cluster": "local", "job_id": str(orphan.pid),
                                     "run_dir": str(sweep.folder / "other-run")}
    ended: list[float] = []

    def end_orphan() -> None:
        time.sleep(3)
        ended.append(time.monotonic())  # from here on the launcher may see it gone
        orphan.kill()
        orphan.wait()

    started: list[float] = []
    submit = launch._submit_local

    def record(*args, **kwargs):
        started.append(time.monotonic())
        return submit(*args, **kwargs)

    monkeypatch.setattr(launch, "_submit_local", record)
    killer = threading.Thread(target=end_orphan)
    killer.start()
    try:
        assert launch.launch(sweep) == 0
    finally:
        killer.join()
    assert ended and started and started[0] >= ended[0]
    assert (sweep.runs[0].folder / "DONE").exists()
