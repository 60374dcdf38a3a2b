"""The README's commands work as printed: each cheap one is run here, dry where it trains.

- every ``python -m trainer.train ...`` (in a code block or inline) with ``--dry-run`` (one
  that needs a dataset folder this machine lacks must fail on that folder alone);
- every ``make sweep ... DRY_RUN=1`` line, through the Makefile (setup not re-run);
- the error examples the README promises are one line, exit 2.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _commands(prefix: str) -> list[str]:
    """Commands starting with ``prefix``: whole lines of code blocks, and inline code."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith(prefix):
                found.append(line)
    found += [c for c in re.findall(r"`([^`\n]+)`", README) if c.startswith(prefix)]
    return sorted(set(found))


TRAIN = _commands("python -m trainer.train")
SWEEP_DRY = [c for c in _commands("make sweep ") if "DRY_RUN=1" in c]


def test__the_readme_has_the_commands_this_file_runs() -> None:
    assert any("-c sweeps/specs/demo.yaml" in c for c in TRAIN), TRAIN
    assert SWEEP_DRY


def _config_of(argv: list[str]) -> tuple[list[str], list[str]]:
    """(-c files, key=value overrides) of a trainer command line."""
    files, overrides, it = [], [], iter(a for a in argv if a != "--dry-run")
    for a in it:
        if a in ("-c", "--config"):
            files.append(next(it))
        else:
            overrides.append(a)
    return files, overrides


@pytest.mark.parametrize("command", TRAIN)
def test__trainer_commands_of_the_readme_resolve(command: str, capsys,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Each resolves at --dry-run, or, where it names a dataset folder this machine lacks
    (ImageNet, your photos), stops on that folder alone, in one line."""
    from trainer import train
    from trainer.config import load_config, preflight

    monkeypatch.chdir(ROOT)  # the README's paths are relative to the clone
    argv = shlex.split(command)[3:]
    code = train.cli([*argv, "--dry-run"])
    out, err = capsys.readouterr()
    if code == 0:
        assert "config_hash:" in out
        return
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(("config error: data.name=", "config error: data.root=")), err
    files, overrides = _config_of(argv)
    preflight(load_config(files, overrides), data=False)  # all but the folder is valid


@pytest.mark.parametrize("command", SWEEP_DRY)
def test__make_sweep_dry_runs_of_the_readme_plan(command: str) -> None:
    argv = shlex.split(command)[1:]
    # -o: the venv is taken as installed (the suite already runs inside it)
    res = subprocess.run(["make", "--no-print-directory", "-o", ".venv/.installed", *argv,
                          f"PY={sys.executable}"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    if res.returncode == 0:
        assert "new" in res.stdout or "done" in res.stdout
        return
    # a spec of a dataset this machine lacks (ImageNet-100): stops on that folder, one line
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "data.name=" in errors[0] and "folder" in errors[0], res.stderr


@pytest.mark.parametrize("override", ["train.precision=bfloat16", "optim.name=adam",
                                      "aug.recipe=nosuch", "data.name=nosuch",
                                      "method.name=nosuch", "backbone.name=nosuch",
                                      "train.epochs=-3"])
def test__the_readmes_mistakes_are_one_line(override: str, capsys) -> None:
    from trainer import train

    assert train.cli(["--dry-run", override]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    if "name=nosuch" in override:
        assert "available" in err or "expected one of" in err


def test__a_missing_data_root_is_one_line_at_dry_run_and_at_run(tmp_path: Path,
                                                                capsys) -> None:
    from trainer import train

    missing = tmp_path / "nowhere"
    assert train.cli(["--dry-run", f"data.root={missing}"]) == 2
    assert capsys.readouterr().err.strip() == f"config error: data.root={missing}: no such folder"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train.cli([f"data.root={empty}", "backbone.name=tiny_cnn", "train.device=cpu",
                      f"run_dir={tmp_path / 'run'}", "train.progress=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: Fashion-MNIST files")
    assert str(empty) in err[0]
