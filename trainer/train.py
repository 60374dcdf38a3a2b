"""Command line: ``python -m trainer.train [-c diff.yaml ...] [--dry-run] key=value ...``.

Exit status: 0 done (or already finished), 1 the run stopped (a NaN loss, too many
undecodable images), 2 a mistake in the input (config, dataset folder, run folder, damaged
checkpoint), printed as one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import yaml

from trainer.config import ConfigError, config_hash, load_config, preflight
from trainer.io import DamagedFileError, FolderLockedError
from trainer.rundir import RunFolderError, run_dir_of


def main(config: list[str], overrides: list[str], dry_run: bool = False) -> int:
    """Resolve and check the config, print it on ``--dry-run``, otherwise train."""
    try:
        cfg = load_config(config, overrides)
        preflight(cfg)
        if cfg.data.root and not Path(cfg.data.root).is_dir():
            raise ConfigError(f"data.root={cfg.data.root}: no such folder")
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    run_dir = run_dir_of(cfg)
    if dry_run:
        print(yaml.safe_dump({"run_dir": str(run_dir), "config_hash": config_hash(cfg),
                              "config": cfg.to_dict()}, sort_keys=False))
        return 0
    from dataroom import DatasetError, TooManyBadImages
    from trainer.loop import NonFiniteLossError, train  # heavy imports only when training

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        out = train(dataclasses.replace(cfg, run_dir=str(run_dir)))
    except (ConfigError, RunFolderError, FolderLockedError, DamagedFileError,
            DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:  # the dataset's files, where not a DatasetError
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (NonFiniteLossError, TooManyBadImages) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"run folder: {out}")
    return 0


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", action="append", default=[],
                        help="experiment YAML diff(s), applied in order")
    parser.add_argument("--dry-run", action="store_true",
                        help="check and print the resolved config and its run folder")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=10")
    args = parser.parse_args(argv)
    return main(args.config, args.overrides, args.dry_run)


if __name__ == "__main__":
    sys.exit(cli())
