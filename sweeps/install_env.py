"""Install the project into `.venv`, fast: `make setup` runs this with the system python3.

Standard library only (it runs before any dependency exists). The pinned torch 2.14.1 wheel
for x86_64 is a CUDA build: ~20 wheels, ~5.5 GB in the venv. pip unpacks them one at a time
and byte-compiles every module (2.6 min on a 2-core machine); uv unpacks in parallel into its
cache, hard-links into the venv and byte-compiles on every core (~1 min; compiled at install,
not at first import, because a PYTHONDONTWRITEBYTECODE environment would otherwise recompile
torch in every process). So: uv when it can be had (on PATH, or `pip install uv` into the
venv), pip when it can't, and pip again if uv fails.

uv reads no pip configuration, so it is handed the indexes, find-links, constraints, CA file
and timeout that pip would use (pip.conf files and PIP_* variables, as `pip config list`
prints them), with pip's rule of taking the best version across all indexes. Both resolve
the same versions. `SSLBENCH_INSTALLER=pip` forces pip.

    python3 sweeps/install_env.py [EXTRAS]      # EXTRAS default: dev,bench
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"
# pip options that change what gets installed from where, and their uv flags.
LIST_FLAGS = {"extra-index-url": "--extra-index-url", "find-links": "--find-links",
              "constraint": "--constraint"}
# Later scopes override earlier ones, as in pip: config files, then the install
# command's section, then PIP_* environment variables.
SCOPE_ORDER = ("global", "install", ":env:")


def parse_pip_config(text: str) -> dict[str, str]:
    """`pip config list` output -> {option: value}, the winning scope's value per option."""
    found: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        scope, _, option = key.strip().rpartition(".")
        if scope not in SCOPE_ORDER:
            continue  # other commands' sections (download, wheel, ...)
        try:  # pip prints each value as Python's repr: a multi-line list comes as '\\n...'
            text = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            text = value.strip()
        found.setdefault(option, {})[scope] = " ".join(str(text).split())
    return {opt: next(by[s] for s in reversed(SCOPE_ORDER) if s in by)
            for opt, by in found.items()}


def pip_config(pip: Path | str, env: dict[str, str] | None = None) -> dict[str, str]:
    """The options pip itself would install with, read through `pip config list`."""
    listed = subprocess.run([str(pip), "config", "list"], capture_output=True, text=True,
                            env=env)
    return parse_pip_config(listed.stdout)


def uv_args(cfg: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The uv flags and environment that select the same packages pip's config selects."""
    args = ["--index-strategy", "unsafe-best-match"]
    if cfg.get("no-index", "").lower() in ("1", "true", "yes", "on"):
        args.append("--no-index")
    if cfg.get("index-url"):
        args += ["--index-url", cfg["index-url"]]
    for option, flag in LIST_FLAGS.items():
        for value in cfg.get(option, "").split():
            args += [flag, value]
    env = {}
    if cfg.get("cert"):
        env["SSL_CERT_FILE"] = cfg["cert"]
    timeout = cfg.get("default-timeout") or cfg.get("timeout") or ""
    if timeout.replace(".", "", 1).isdigit():
        env["UV_HTTP_TIMEOUT"] = str(max(1, round(float(timeout))))
    return args, env


def find_uv(pip: Path) -> str | None:
    """A uv binary: the venv's, one on PATH, or a fresh `pip install uv` into the venv."""
    local = VENV / "bin" / "uv"
    found = str(local) if local.exists() else shutil.which("uv")
    if found:
        return found
    got = subprocess.run([str(pip), "install", "-q", "--timeout", "20", "--retries", "1",
                          "uv>=0.5"], capture_output=True, text=True)
    return str(local) if got.returncode == 0 and local.exists() else None


def main(argv: list[str]) -> int:
    extras = argv[1] if len(argv) > 1 else "dev,bench"
    target = f".[{extras}]" if extras else "."
    python, pip = VENV / "bin" / "python", VENV / "bin" / "pip"
    if not python.exists():
        if subprocess.run([sys.executable, "-m", "venv", str(VENV)]).returncode != 0:
            print(f"setup: could not create {VENV} with `{sys.executable} -m venv` "
                  "(on Debian/Ubuntu: apt install python3-venv)", file=sys.stderr)
            return 1
    start = time.monotonic()
    if os.environ.get("SSLBENCH_INSTALLER", "auto") != "pip":
        uv = find_uv(pip)
        if uv is None:
            print("setup: uv not available (offline?); installing with pip (~2.5 min)")
        else:
            args, env = uv_args(pip_config(pip))
            rc = subprocess.run([uv, "pip", "install", "-q", "--compile-bytecode",
                                 "--python", str(python), *args,
                                 "-e", target], cwd=ROOT, env={**os.environ, **env}).returncode
            if rc == 0:
                print(f"setup: installed {target} with uv in {time.monotonic() - start:.0f} s")
                return 0
            print(f"setup: uv failed (exit {rc}); installing with pip instead")
    rc = subprocess.run([str(pip), "install", "-q", "-e", target], cwd=ROOT).returncode
    if rc == 0:
        print(f"setup: installed {target} with pip in {time.monotonic() - start:.0f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv))
