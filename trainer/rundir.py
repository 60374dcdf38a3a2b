"""One truth per run folder: its ``config.yaml`` always describes the weights in it.

Before a run trains in a folder, :func:`enter` compares what the folder holds with the
config about to run:

- weights (``checkpoint.pth``, else ``backbone.pth``) of another experiment: refused,
  naming the settings that differ (experiment identity = :func:`trainer.config.config_hash`:
  bookkeeping settings such as ``data.root`` or ``train.ckpt_every_steps`` do not count);
  resolved values that change the numbers (images per epoch, precision) are compared too;
- weights of this experiment: accepted; bookkeeping differences are recorded in
  ``config.yaml`` under ``sessions``;
- no weights yet: a ``config.yaml`` left by a run that died before its first checkpoint is
  replaced (atomically), and that run's ``metrics.jsonl`` is set aside, never mixed in.

The folder is locked (:func:`trainer.io.folder_lock`) while a run trains in it, so a second
trainer stops with a message naming the holder.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from pathlib import Path
from typing import Any

from trainer.config import (
    ConfigError,
    RunConfig,
    config_hash,
    default_run_dir,
    identity_diff,
    load_saved_config,
    read_saved,
    resolve,
    save_config,
    unhashed_keys,
)
from trainer.io import DamagedFileError, folder_lock, git_sha, job_id, load_torch_file

log = logging.getLogger("sslbench.trainer")
CONFIG, CHECKPOINT, BACKBONE, METRICS = "config.yaml", "checkpoint.pth", "backbone.pth", \
    "metrics.jsonl"
# Resolved values in config.yaml that change what the weights are: a folder whose weights
# were made with other values holds another experiment (e.g. data.root at other data).
RESOLVED = ("train_images", "steps_per_epoch", "total_steps", "precision", "channels_last")
# Settings whose resolved value config.yaml records: two values that resolved alike on the
# machines that ran them are the same experiment (precision=auto that resolved to fp32 and
# an explicit precision=fp32).
RESOLVED_FROM = {"train.precision": "precision", "train.channels_last": "channels_last"}


class RunFolderError(RuntimeError):
    """The run folder cannot take this run (other experiment, damaged file); one line."""


def _show(v: Any) -> str:
    return "(absent)" if v is None else repr(v)


def _diff_text(diff: dict[str, tuple[Any, Any]], limit: int = 6) -> str:
    items = [f"{k}: {_show(a)} -> {_show(b)}" for k, (a, b) in diff.items()]
    more = f", ... (+{len(items) - limit})" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def run_dir_of(cfg: RunConfig, root: str | Path = "runs") -> Path:
    """``cfg.run_dir``, else the folder under ``root`` that already holds this experiment
    (same :func:`config_hash` from its ``config.yaml``: a folder named under an earlier
    hash formula, or with other bookkeeping settings), else :func:`default_run_dir`."""
    if cfg.run_dir:
        return Path(cfg.run_dir)
    return existing_run_dir(cfg, root) or default_run_dir(cfg, root)


def existing_run_dir(cfg: RunConfig, root: str | Path) -> Path | None:
    """The folder under ``root`` whose ``config.yaml`` is this experiment, or None.

    Only folders named like this run (``<method>-<backbone>-s<seed>-*``) are read; the
    default folder name wins when it exists.
    """
    default = default_run_dir(cfg, root)
    if (default / "config.yaml").exists() or not Path(root).is_dir():
        return None
    want = config_hash(cfg)
    prefix = default.name[: -8]
    for path in sorted(Path(root).glob(f"{prefix}*/config.yaml")):
        if _saved_hash(str(path), path.stat().st_mtime_ns) == want:
            return path.parent
    return None


@functools.lru_cache(maxsize=4096)
def _saved_hash(path: str, mtime_ns: int) -> str | None:
    """The current config hash of a saved config.yaml (None if unreadable); cached while
    the file is unchanged, so planning a large sweep reads each file once."""
    try:
        return config_hash(load_saved_config(Path(path)))
    except ConfigError:
        return None


def read_checkpoint(run_dir: Path, map_location: Any = "cpu") -> dict[str, Any] | None:
    """The training checkpoint of ``run_dir`` (None if there is none).

    Raises:
        RunFolderError: It exists but cannot be read, or is not this trainer's checkpoint.
    """
    path = Path(run_dir) / CHECKPOINT
    if not path.exists() and not path.is_symlink():
        return None
    try:
        state = load_torch_file(path, "checkpoint", map_location)
    except DamagedFileError as e:
        raise RunFolderError(f"{e}; restore it, or move it aside to train this run from "
                             "step 0") from None
    if not isinstance(state, dict) or not {"step", "module", "config_hash"} <= set(state):
        raise RunFolderError(f"{path}: not a training checkpoint of this trainer (expected "
                             "the keys step, module, config_hash)")
    return state


def _weights_hash(run_dir: Path, state: dict[str, Any] | None) -> tuple[str | None, str]:
    """(config hash of the weights in the folder, which file says so) or (None, '')."""
    if state is not None:
        return str(state["config_hash"]), CHECKPOINT
    path = run_dir / BACKBONE
    if path.exists():
        try:
            meta = load_torch_file(path, "backbone").get("meta", {})
        except (DamagedFileError, AttributeError) as e:
            raise RunFolderError(f"{e}; the folder's weights cannot be identified") from None
        if meta.get("config_hash"):
            return str(meta["config_hash"]), BACKBONE
    return None, ""


def _read_body(path: Path) -> tuple[dict[str, Any] | None, RunConfig | None, str]:
    """config.yaml's body and config, or the reason it cannot be read."""
    if not path.exists():
        return None, None, "missing"
    try:
        body = read_saved(path)
        return body, resolve([body["config"]]), ""
    except ConfigError as e:
        return None, None, str(e)


def enter(run_dir: Path, cfg: RunConfig, resolved: dict[str, Any],
          state: dict[str, Any] | None, write: bool = True) -> dict[str, Any] | None:
    """Check that ``run_dir`` can take ``cfg`` and make its ``config.yaml`` describe it.

    Args:
        run_dir: The run folder (locked by the caller).
        cfg: The config about to run.
        resolved: This session's resolved values (device, precision, steps_per_epoch, ...),
            written to ``config.yaml`` with the git SHA.
        state: The folder's checkpoint (:func:`read_checkpoint`), or None.
        write: False only checks (a finished run is left as it is).

    Returns:
        The folder's previous ``config.yaml`` body when it described these weights.

    Raises:
        RunFolderError: The folder holds weights of another experiment.
    """
    path = run_dir / CONFIG
    new_hash = config_hash(cfg)
    weights, source = _weights_hash(run_dir, state)
    body, saved, problem = _read_body(path)
    if weights is None:  # nothing trained yet: whatever config.yaml says is stale
        if body is not None or problem != "missing":
            _set_aside(run_dir, body, saved, cfg, problem)
        _write(path, cfg, resolved, None, {})
        return None
    describes = body is not None and saved is not None and str(body.get("config_hash")) == weights
    if describes:
        exp, book = identity_diff(saved, cfg)  # type: ignore[arg-type]
        for key, res in RESOLVED_FROM.items():
            if key in exp and body.get(res) is not None and body.get(res) == resolved.get(res):
                book[key] = exp.pop(key)
        if exp:
            raise RunFolderError(
                f"{run_dir} holds weights of a different config ({_diff_text(exp)}); use "
                "another run_dir, or remove the folder to start over")
        changed = {k: (body.get(k), resolved.get(k)) for k in RESOLVED
                   if body.get(k) is not None and body.get(k) != resolved.get(k)}
        if changed:
            raise RunFolderError(
                f"{run_dir} holds weights made with {_diff_text(changed)} (resolved here); "
                "different data or precision is a different run: use another run_dir")
    elif weights != new_hash:
        why = "missing" if problem == "missing" else ("unreadable: " + problem if problem
                                                      else "it describes other weights")
        raise RunFolderError(
            f"{run_dir} holds weights of a different config (the {source} says hash "
            f"{weights[:8]}, this config is {new_hash[:8]}; config.yaml is {why}); use "
            "another run_dir")
    else:
        book = {}
        log.warning("%s: config.yaml did not describe the weights (%s); rewriting it", run_dir,
                    problem or "stale")
    if write:
        _write(path, cfg, resolved, body if describes else None, book)
    return body if describes else None


def _set_aside(run_dir: Path, body: dict[str, Any] | None, saved: RunConfig | None,
               cfg: RunConfig, problem: str) -> None:
    """Log what a stale config.yaml said; move the dead attempt's metrics.jsonl away."""
    if saved is not None:
        exp, _ = identity_diff(saved, cfg)
        if not exp:
            return  # the same experiment restarting from step 0
        what = f"it described another experiment: {_diff_text(exp)}"
    else:
        what = f"it was unreadable: {problem}"
    log.warning("%s: no weights yet; replacing the config.yaml of a run that stopped before "
                "its first checkpoint (%s)", run_dir, what)
    metrics = run_dir / METRICS
    if metrics.exists():
        old = str((body or {}).get("config_hash") or "unknown")[:8]
        stale = run_dir / f"{METRICS}.stale-{old}-{time.strftime('%Y%m%dT%H%M%S')}"
        metrics.rename(stale)
        log.warning("%s: its metrics moved to %s", run_dir, stale.name)


def _write(path: Path, cfg: RunConfig, resolved: dict[str, Any], previous: dict[str, Any] | None,
           bookkeeping: dict[str, tuple[Any, Any]]) -> None:
    """config.yaml: this session's provenance, the history of sessions, the config."""
    session = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "git_sha": git_sha(),
               "job_id": job_id(),
               **{k: resolved.get(k) for k in ("device", "world_size", "precision",
                                               "channels_last", "start_step")}}
    if bookkeeping:
        session["changed"] = {k: [a, b] for k, (a, b) in bookkeeping.items()}
    sessions = list((previous or {}).get("sessions") or [])
    save_config(cfg, path, {"git_sha": session["git_sha"], "config_hash": config_hash(cfg),
                            **{k: v for k, v in resolved.items() if k != "start_step"},
                            "identity_excludes": unhashed_keys(),
                            "sessions": [*sessions, session]})


def claim_run_dir(held: contextlib.ExitStack, run_dir: Path, cfg: RunConfig, info: Any,
                  resolved: dict[str, Any], stop: int, total_steps: int
                  ) -> dict[str, Any] | None:
    """Rank 0 locks ``run_dir`` (until ``held`` closes), reads its checkpoint and
    checks it with :func:`enter` (a finished run is only checked); if that fails, every
    rank raises.

    Returns:
        The checkpoint read by rank 0 (None on other ranks, and where there is none).
    """
    out: list[dict[str, Any] | None] = [None]

    def on_main() -> None:
        held.enter_context(folder_lock(run_dir, "trainer"))
        state = out[0] = read_checkpoint(run_dir, info.device)
        start = int(state["step"]) if state else 0
        finished = (start >= stop and (run_dir / BACKBONE).exists()
                    and (stop < total_steps or (run_dir / "DONE").exists()))
        enter(run_dir, cfg, {**resolved, "start_step": start}, state, write=not finished)

    _on_main_first(info, run_dir, on_main)
    return out[0]


def _on_main_first(info: Any, run_dir: Path, fn: Any) -> None:
    """Run ``fn`` on rank 0; if it raised, every rank raises (none waits forever)."""
    import torch

    error: BaseException | None = None
    if info.is_main:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 (re-raised below, after telling the others)
            error = e
    if info.world_size > 1:
        flag = torch.tensor([0.0 if error is None else 1.0], device=info.device)
        torch.distributed.all_reduce(flag)
        if flag.item() and error is None:
            raise RunFolderError(f"rank 0 could not enter {run_dir}; see its error")
    if error is not None:
        raise error
