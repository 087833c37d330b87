"""Whether the train step runs through XLA: chosen per precision, device and model width.

With `float32`, XLA fuses the many small element-wise ops of a Transformer step and is the
faster execution on every device. With `mixed_bfloat16` on a CPU that has bfloat16 arithmetic
(AVX512-BF16 or AMX), it is not always: TensorFlow's own kernels send the bf16 matrix products to
oneDNN, which runs them 2-3x faster than XLA:CPU's bf16 code, but then run the element-wise ops
one by one. Once the matrices are wide enough the matmuls dominate and TensorFlow's kernels win;
below that XLA's fusion wins. `jit_compile_for` makes that choice when the user has not.
"""

import functools
import pathlib

# The narrowest model for which mixed_bfloat16 trains faster without XLA on a bf16 CPU. Set from
# `benchmarks/bf16_execution.py`, which times both executions over model widths.
BF16_EAGER_MIN_WIDTH = 512
# CPU flags (Linux /proc/cpuinfo) of bfloat16 arithmetic that oneDNN uses.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_has_bf16(cpuinfo="/proc/cpuinfo"):
    """True if the CPU lists a bfloat16 arithmetic flag (`avx512_bf16` or `amx_bf16`).

    Read from the kernel's `/proc/cpuinfo`; where that file does not exist (macOS, Windows) the
    answer is False, so that the automatic choice keeps XLA, the safe default.

    Example:

    >>> cpu_has_bf16() in (True, False)
    True
    """
    try:
        text = pathlib.Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def on_cpu_only():
    """True if TensorFlow sees no GPU and no TPU, so training runs on the CPU."""
    import tensorflow as tf

    return not (tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def jit_compile_for(precision, jit_compile=None, *, d_model, on_cpu=None, bf16_cpu=None):
    """The `jit_compile` to train with: `jit_compile` itself if given, else the faster choice.

    The automatic choice is XLA (True), except for `mixed_bfloat16` on a CPU with bfloat16
    arithmetic and a model at least `BF16_EAGER_MIN_WIDTH` wide, where TensorFlow's kernels
    (oneDNN bf16 matmuls) are faster (False). A CPU without bf16 arithmetic keeps XLA: there
    oneDNN would emulate bf16 and gain nothing.

    Args:
        precision: "float32", "mixed_float16" or "mixed_bfloat16".
        jit_compile: True or False to force a choice; None to choose.
        d_model: int. The model's width.
        on_cpu: bool, or None to ask TensorFlow (`on_cpu_only`).
        bf16_cpu: bool, or None to read the CPU's flags (`cpu_has_bf16`).

    Example:

    >>> jit_compile_for("float32", d_model=768, on_cpu=True, bf16_cpu=True)
    True
    >>> jit_compile_for("mixed_bfloat16", d_model=768, on_cpu=True, bf16_cpu=True)
    False
    >>> jit_compile_for("mixed_bfloat16", d_model=768, on_cpu=True, bf16_cpu=False)
    True
    >>> jit_compile_for("mixed_bfloat16", True, d_model=768)
    True
    """
    if jit_compile is not None:
        return jit_compile
    if precision != "mixed_bfloat16" or d_model < BF16_EAGER_MIN_WIDTH:
        return True
    if on_cpu is None:
        on_cpu = on_cpu_only()
    if bf16_cpu is None:
        bf16_cpu = cpu_has_bf16()
    return not (on_cpu and bf16_cpu)
