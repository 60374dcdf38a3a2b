"""`make setup`'s installer hands uv the same indexes, links and constraints pip would use."""

import os
import sys
from pathlib import Path

from sweeps.install_env import parse_pip_config, pip_config, uv_args


def values(args, flag):
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def test_parse_takes_the_winning_scope_and_splits_lists():
    listed = "\n".join([
        ":env:.find-links='/opt/env-wheels'",
        ":env:.default-timeout='180'",
        "global.find-links='/opt/wheels'",
        "global.extra-index-url='file:///a/simple file:///b/simple'",
        "global.constraint='/etc/xdg/pip/constraints.txt'",
        "global.cert='/etc/ssl/certs/ca.crt'",
        "install.index-url='https://mirror.example/simple'",
        "global.index-url='https://ignored.example/simple'",
        "download.dest='/tmp/elsewhere'",
        "not a config line",
    ])
    cfg = parse_pip_config(listed)
    assert cfg["find-links"] == "/opt/env-wheels"  # PIP_* beats the files
    assert cfg["index-url"] == "https://mirror.example/simple"  # [install] beats [global]
    assert "dest" not in cfg  # another command's section
    args, env = uv_args(cfg)
    assert values(args, "--index-strategy") == ["unsafe-best-match"]
    assert values(args, "--index-url") == ["https://mirror.example/simple"]
    assert values(args, "--extra-index-url") == ["file:///a/simple", "file:///b/simple"]
    assert values(args, "--find-links") == ["/opt/env-wheels"]
    assert values(args, "--constraint") == ["/etc/xdg/pip/constraints.txt"]
    assert "--no-index" not in args
    assert env == {"SSL_CERT_FILE": "/etc/ssl/certs/ca.crt", "UV_HTTP_TIMEOUT": "180"}


def test_no_config_gives_plain_pypi_resolution():
    args, env = uv_args(parse_pip_config(""))
    assert args == ["--index-strategy", "unsafe-best-match"] and env == {}


def test_reads_pips_own_view_of_a_config_file_and_the_environment(tmp_path):
    """Real pip parses a real config file plus PIP_* variables; the winners reach uv."""
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nextra-index-url =\n    file:///one/simple\n    file:///two/simple\n"
                    "find-links = /from/file\n[install]\nno-index = true\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=str(conf), PIP_FIND_LINKS="/from/env")
    pip = Path(sys.executable).with_name("pip")
    args, _ = uv_args(pip_config(pip, env=env))
    assert values(args, "--extra-index-url") == ["file:///one/simple", "file:///two/simple"]
    assert values(args, "--find-links") == ["/from/env"]
    assert "--no-index" in args
