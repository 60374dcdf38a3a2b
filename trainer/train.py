"""Command line: ``python -m trainer.train [-c diff.yaml ...] [--dry-run] key=value ...``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

from trainer.config import ConfigError, config_hash, default_run_dir, load_config


def main(config: list[str], overrides: list[str], dry_run: bool = False) -> int:
    """Resolve the config, print it on ``--dry-run``, otherwise train."""
    try:
        cfg = load_config(config, overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    if dry_run:
        print(yaml.safe_dump({"run_dir": str(run_dir), "config_hash": config_hash(cfg),
                              "config": cfg.to_dict()}, sort_keys=False))
        return 0
    from trainer.loop import train  # heavy imports only when training

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = train(cfg)
    print(f"run folder: {out}")
    return 0


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-c", "--config", action="append", default=[],
                        help="experiment YAML diff(s), applied in order")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=10")
    args = parser.parse_args(argv)
    return main(args.config, args.overrides, args.dry_run)


if __name__ == "__main__":
    sys.exit(cli())
