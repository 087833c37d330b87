"""The automatic XLA choice: by precision, device, width and the CPU's bfloat16 flags."""

import pytest

from tf_bigmodels.training import RunConfig
from tf_bigmodels.training.execution import (
    BF16_EAGER_MIN_WIDTH,
    cpu_has_bf16,
    jit_compile_for,
)

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu sse sse2 avx2 avx512f {extra}
bogomips\t: 4800.00
"""


@pytest.mark.parametrize(
    ("extra", "expected"),
    [("avx512_bf16", True), ("amx_bf16 amx_tile", True), ("avx512_vnni", False), ("", False)],
)
def test_cpu_has_bf16_reads_the_flags_line(tmp_path, extra, expected):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO.format(extra=extra))
    assert cpu_has_bf16(str(path)) is expected


def test_cpu_has_bf16_is_false_without_the_file(tmp_path):
    assert cpu_has_bf16(str(tmp_path / "absent")) is False


def test_bf16_runs_without_xla_only_on_a_bf16_cpu_and_a_wide_model():
    wide, narrow = BF16_EAGER_MIN_WIDTH, BF16_EAGER_MIN_WIDTH - 1
    assert jit_compile_for("mixed_bfloat16", d_model=wide, on_cpu=True, bf16_cpu=True) is False
    # A CPU without bf16 arithmetic, a GPU/TPU, a narrow model or another precision keep XLA.
    assert jit_compile_for("mixed_bfloat16", d_model=wide, on_cpu=True, bf16_cpu=False) is True
    assert jit_compile_for("mixed_bfloat16", d_model=wide, on_cpu=False, bf16_cpu=True) is True
    assert jit_compile_for("mixed_bfloat16", d_model=narrow, on_cpu=True, bf16_cpu=True) is True
    for precision in ("float32", "mixed_float16"):
        assert jit_compile_for(precision, d_model=wide, on_cpu=True, bf16_cpu=True) is True


def test_an_explicit_setting_wins():
    for setting in (True, False):
        assert (
            jit_compile_for("mixed_bfloat16", setting, d_model=768, on_cpu=True, bf16_cpu=True)
            is setting
        )


def test_run_config_leaves_the_choice_to_training_and_checks_a_given_one():
    assert RunConfig().jit_compile is None
    assert RunConfig(jit_compile=None).resolved().jit_compile is None
    with pytest.raises(ValueError, match="`jit_compile` must be None or True or False, got 1"):
        RunConfig(jit_compile=1).resolved()


def test_the_test_presets_train_without_xla_unless_asked():
    # A few steps of a 32-wide model: XLA's compilation would take longer than all of them.
    for kind, preset in (("gpt", "gpt-test"), ("bert", "bert-test")):
        assert RunConfig(model=kind, preset=preset).resolved().jit_compile is False
        asked = RunConfig(model=kind, preset=preset, jit_compile=True).resolved()
        assert asked.jit_compile is True
    assert RunConfig(preset="gpt-nano").resolved().jit_compile is None  # left to the choice


def test_the_task_asks_jit_compile_for(monkeypatch):
    from tf_bigmodels.training import execution, task_for

    config = RunConfig(precision="mixed_bfloat16", d_model=512, num_heads=8)
    monkeypatch.setattr(execution, "on_cpu_only", lambda: True)
    monkeypatch.setattr(execution, "cpu_has_bf16", lambda: True)
    assert task_for(config.resolved()).jit_compile() is False
    monkeypatch.setattr(execution, "cpu_has_bf16", lambda: False)
    assert task_for(config.resolved()).jit_compile() is True
