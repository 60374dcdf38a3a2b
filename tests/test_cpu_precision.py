"""precision=auto / channels_last=auto on a CPU: bf16 where it has bf16 matrix units."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tests.test_trainer import assert_bit_identical, final_state, overrides
from trainer import hardware
from trainer.config import load_config
from trainer.loop import train
from trainer.rundir import RunFolderError

# Trimmed /proc/cpuinfo texts of real machines (two logical CPUs each where it matters).
_MILAN = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma sha_ni\n"
_ZEN4 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw avx512_bf16 avx512_vnni\n"
_SPR = ("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n\n"
        "processor\t: 1\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n")
_ICX = "processor\t: 0\nflags\t\t: fpu avx512f avx512bw avx512_vnni avx512_vbmi\n"
_ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes sha1 sha2 crc32 atomics bf16 i8mm\n"
_MIXED = "processor\t: 0\nflags\t\t: fpu amx_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n"


@pytest.mark.parametrize(("text", "expected"), [
    (_MILAN, False), (_ZEN4, True), (_SPR, True), (_ICX, False), (_ARM, False),
    (_MIXED, False), ("", False)])
def test__bf16_matrix_units_are_read_from_the_flags(text: str, expected: bool) -> None:
    assert hardware.bf16_matrix_units(text) is expected


def test__flags_are_those_every_cpu_has() -> None:
    assert hardware.cpu_flags(_SPR) == {"fpu", "avx512f", "avx512_bf16", "amx_bf16",
                                        "amx_tile", "amx_int8"}
    assert hardware.cpu_flags(_MIXED) == {"fpu"}


def test__the_override_wins_and_a_bad_one_is_an_error(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    fake = tmp_path / "cpuinfo"
    fake.write_text(_SPR)
    monkeypatch.setattr(hardware, "CPUINFO", fake)
    hardware._detected.cache_clear()
    try:
        monkeypatch.delenv(hardware.ENV, raising=False)
        assert hardware.cpu_prefers_bf16()  # detected from the (fake) file
        monkeypatch.setenv(hardware.ENV, "0")
        assert not hardware.cpu_prefers_bf16()
        monkeypatch.setenv(hardware.ENV, "yes")
        with pytest.raises(ValueError, match="expected 0 or 1"):
            hardware.cpu_prefers_bf16()
        fake.write_text(_MILAN)
        hardware._detected.cache_clear()
        monkeypatch.delenv(hardware.ENV)
        assert not hardware.cpu_prefers_bf16()
    finally:
        hardware._detected.cache_clear()


def test__auto_resolves_to_bf16_channels_last_on_a_bf16_cpu_and_resumes_bit_exact(
        fmnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hardware.ENV, "1")  # a CPU with bf16 matrix units
    args = ("train.epochs=1",)
    straight = train(load_config(overrides=overrides(fmnist_root, tmp_path / "a", *args)))
    body = yaml.safe_load((straight / "config.yaml").read_text())
    assert body["precision"] == "bf16" and body["channels_last"] is True
    assert body["sessions"][-1]["precision"] == "bf16"
    split = tmp_path / "b"
    train(load_config(overrides=overrides(fmnist_root, split, *args, "train.max_steps=5")))
    train(load_config(overrides=overrides(fmnist_root, split, *args)))
    assert_bit_identical(final_state(straight), final_state(split))
    # weights are fp32 (autocast computes in bf16), and BN running statistics too
    state = final_state(straight)
    assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())
    # the same folder on a CPU without them: auto now means fp32, a different run
    monkeypatch.setenv(hardware.ENV, "0")
    with pytest.raises(RunFolderError, match="precision"):
        train(load_config(overrides=overrides(fmnist_root, split, *args)))


def test__auto_is_fp32_without_bf16_units(fmnist_root: Path, tmp_path: Path) -> None:
    run = train(load_config(overrides=overrides(fmnist_root, tmp_path / "r", "train.epochs=1",
                                                "train.max_steps=1")))
    body = yaml.safe_load((run / "config.yaml").read_text())
    assert body["precision"] == "fp32" and body["channels_last"] is False
