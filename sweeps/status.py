"""``python -m sweeps.status [SWEEP ...]``: the state of every run of a sweep.

States come from the run folders (``DONE``, ``ERROR``, ``checkpoint.pth``,
``metrics.jsonl``) and, for SLURM sweeps, from ``squeue``/``sacct``:

- ``done``: the full schedule finished (``DONE``);
- ``pending`` / ``running``: its job waits or runs (a requeued job is pending again);
- ``failed``: the run raised (``ERROR``, shown) or SLURM ended its job otherwise
  (state and the job log's last lines shown); the sweep's other runs go on;
- ``stopped``: no job is left and the run is unfinished; relaunching resumes it;
- ``new``: never submitted;
- ``unknown``: SLURM did not answer (controller down, ``SLURM_CONF`` unset).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sweeps import manifest
from sweeps.cluster import ACTIVE_STATES, ClusterError, local_alive, slurm_states
from sweeps.job import ERROR_FILE

ERROR_LINES = 8


@dataclass
class RunStatus:
    """One run's state, progress and (when failed) the last lines of its error."""

    key: str
    label: str
    state: str
    step: int | None = None
    total: int | None = None
    job_id: str = ""
    detail: str = ""  # error tail, or the SLURM state behind the run's state
    eval_state: str = ""  # "" when no eval was chained

    @property
    def progress(self) -> str:
        """``step/total`` (or ``-``)."""
        if self.step is None:
            return "-"
        return f"{self.step}/{self.total}" if self.total else str(self.step)


def last_step(folder: Path) -> int | None:
    """The step of the last record in ``metrics.jsonl`` (None if there is none)."""
    path = folder / "metrics.jsonl"
    if not path.exists():
        return None
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 8192))
        lines = f.read().decode(errors="replace").strip().splitlines()
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def total_steps(folder: Path) -> int | None:
    """``total_steps`` from the run's ``config.yaml`` (written by the trainer at start)."""
    path = folder / "config.yaml"
    if not path.exists():
        return None
    try:
        return int(yaml.safe_load(path.read_text()).get("total_steps"))
    except (yaml.YAMLError, AttributeError, TypeError, ValueError):
        return None


def tail(path: Path, n: int = ERROR_LINES) -> str:
    """The last ``n`` non-empty lines of a text file ('' if missing)."""
    try:
        lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def is_done(folder: Path) -> bool:
    """Whether the run finished its full schedule."""
    return (Path(folder) / "DONE").exists()


def job_active(job_id: str, cluster: str, states: dict[str, str]) -> bool:
    """Whether a recorded job still waits or runs."""
    if not job_id:
        return False
    if cluster == "local":
        return local_alive(job_id)
    return states.get(job_id, "").split(" ")[0] in ACTIVE_STATES


def _job_state(entry: dict[str, Any], prefix: str, cluster: str,
               states: dict[str, str]) -> tuple[str, str]:
    """(pending|running|ended|'', raw state) of the train (prefix '') or eval job."""
    job_id = entry.get(f"{prefix}job_id", "")
    if not job_id:
        return "", ""
    if cluster == "local":
        return ("running", "RUNNING") if local_alive(job_id) else ("ended", "")
    raw = states.get(job_id, "").split(" ")[0]
    if raw in ("RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT"):
        return "running", raw
    if raw in ACTIVE_STATES:
        return "pending", raw
    return "ended", raw


def run_status(key: str, entry: dict[str, Any], cluster: str,
               states: dict[str, str] | None) -> RunStatus:
    """The state of one run of the manifest (``states`` None: SLURM could not be asked)."""
    folder = Path(entry["run_dir"])
    st = RunStatus(key, entry.get("label", key), "new", last_step(folder), total_steps(folder),
                   entry.get("job_id", ""))
    where, raw = _job_state(entry, "", cluster, states or {})
    if is_done(folder):
        st.state, st.step = "done", st.total or st.step
    elif states is None and cluster == "slurm" and st.job_id and not (folder / ERROR_FILE).exists():
        st.state, st.detail = "unknown", "squeue/sacct did not answer"
    elif where in ("pending", "running"):
        st.state, st.detail = where, raw
    elif (folder / ERROR_FILE).exists():
        st.state, st.detail = "failed", tail(folder / ERROR_FILE)
    elif raw and raw not in ("COMPLETED",):
        log = entry.get("stderr", "")
        st.state = "failed"
        st.detail = f"SLURM state {raw}" + (f"; {log}:\n{tail(Path(log))}" if log else "")
    elif st.job_id or (folder / "checkpoint.pth").exists():
        st.state = "stopped"
    if entry.get("eval_job_id") or entry.get("eval_done_file"):
        st.eval_state = _eval_state(entry, cluster, states or {})
    return st


def _eval_state(entry: dict[str, Any], cluster: str, states: dict[str, str]) -> str:
    if entry.get("eval_done_file") and Path(entry["eval_done_file"]).exists():
        return "done"
    where, raw = _job_state(entry, "eval_", cluster, states)
    if where in ("pending", "running"):
        return where
    folder = Path(entry["run_dir"])
    if (folder / f"{ERROR_FILE}.eval").exists() or (raw and raw != "COMPLETED"):
        return f"failed ({raw or 'error'})"
    return "not run"


def collect(sweep_dir: Path) -> tuple[dict[str, Any], list[RunStatus]]:
    """The manifest of ``sweep_dir`` and the status of each of its runs."""
    data = manifest.load(sweep_dir)
    runs = data.get("runs", {})
    states: dict[str, str] | None = {}
    slurm_ids = [j for e in runs.values() if e.get("cluster", "slurm") == "slurm"
                 for j in (e.get("job_id", ""), e.get("eval_job_id", "")) if j]
    if slurm_ids:
        try:
            states = slurm_states(slurm_ids)
        except ClusterError as e:
            print(f"warning: {e}; SLURM job states unknown", file=sys.stderr)
            states = None
    out = [run_status(k, e, e.get("cluster", "slurm"), states) for k, e in runs.items()]
    return data, out


def format_table(sweep_dir: Path, data: dict[str, Any], rows: list[RunStatus]) -> str:
    """A plain-text table of the runs, then the errors of the failed ones."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    lines = [f"sweep {sweep_dir} ({data.get('cluster', '?')}): {len(rows)} runs: {summary}"]
    width = max([len(r.label) for r in rows] + [3])
    with_eval = any(r.eval_state for r in rows)
    header = f"  {'run':<{width}}  {'state':<8} {'step':>11}  {'job':<12} folder"
    lines.append(header + ("  eval" if with_eval else ""))
    for r in rows:
        line = f"  {r.label:<{width}}  {r.state:<8} {r.progress:>11}  {r.job_id or '-':<12} {r.key}"
        lines.append(line + (f"  {r.eval_state}" if with_eval else ""))
    for r in rows:
        if r.state == "failed":
            lines.append(f"\n--- {r.label} ({r.key}) failed:")
            lines.extend("    " + ln for ln in r.detail.splitlines())
    return "\n".join(lines)


def find_sweeps(names: list[str], root: Path) -> list[Path]:
    """Sweep folders named on the command line (names or paths); all under ``root`` if none."""
    if not names:
        return sorted(p.parent for p in Path(root).glob(f"*/{manifest.MANIFEST}"))
    out = []
    for n in names:
        p = Path(n)
        for cand in (p, Path(root) / n):
            if (cand / manifest.MANIFEST).exists():
                out.append(cand)
                break
        else:
            raise FileNotFoundError(f"no sweep '{n}' (looked for {p}/{manifest.MANIFEST} and "
                                    f"{Path(root) / n}/{manifest.MANIFEST})")
    return out


def main(sweeps: list[str], root: str = "runs", as_json: bool = False) -> int:
    """Print the status of the named sweeps (all sweeps under ``root`` if none)."""
    try:
        dirs = find_sweeps(sweeps, Path(root))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not dirs:
        print(f"no sweeps under {root}/ (launch one with: make sweep METHOD=...)")
        return 0
    code = 0
    for i, d in enumerate(dirs):
        try:
            data, rows = collect(d)
        except manifest.ManifestError as e:
            print(f"error: {e}", file=sys.stderr)
            code = 2
            continue
        if as_json:
            print(json.dumps({"sweep": str(d), "runs": [r.__dict__ for r in rows]}, indent=1))
        else:
            print(("\n" if i else "") + format_table(d, data, rows))
    return code


def cli(argv: list[str] | None = None) -> int:
    """Parse the command line and run :func:`main`."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweeps", nargs="*", help="sweep names (under --root) or folders")
    parser.add_argument("--root", default="runs", help="where sweeps live (default: runs)")
    parser.add_argument("--json", dest="as_json", action="store_true", help="JSON output")
    args = parser.parse_args(argv)
    return main(**vars(args))


if __name__ == "__main__":
    sys.exit(cli())
