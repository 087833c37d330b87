"""Timing helpers shared by the benchmark scripts: alternating medians, train steps, FLOPs, machine.

Every benchmark here runs its variants in rounds (one call of each variant per round, so a burst of
load on this shared machine slows all of them alike) and reports the median over rounds.
"""

import datetime
import platform
import statistics
import subprocess
import time

import keras
import numpy as np
import tensorflow as tf


def alternate(variants, repeats, *, warmup=1):
    """Median seconds of each zero-argument callable, called in turn for `repeats` rounds.

    Each callable is first called `warmup` times untimed (tracing, XLA compilation). A callable's
    result is converted with `np.asarray` (tf.nest-mapped) inside the timed region, so the time
    includes waiting for the device.

    Args:
        variants: dict name -> callable.
        repeats: int. Timed rounds.
        warmup: int. Untimed calls of each callable before the first round. Defaults to 1.

    Returns:
        dict name -> {"median": seconds, "times": [seconds per round]}.
    """
    for run in variants.values():
        for _ in range(warmup):
            _wait(run())
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            _wait(run())
            times[name].append(time.perf_counter() - start)
    return {
        name: {"median": statistics.median(values), "times": values}
        for name, values in times.items()
    }


def _wait(result):
    tf.nest.map_structure(np.asarray, result)


def train_steps(model, iterator, steps):
    """A callable that runs `steps` optimizer steps of a compiled `model` on `iterator`.

    It calls `model.train_function` (what `fit` calls: `steps_per_execution` steps per call,
    XLA-compiled when the model was compiled with `jit_compile=True`) and reads the loss after
    every call, as `fit` with a NaN guard does, so each call's time is complete.

    Args:
        model: a compiled Keras model.
        iterator: an iterator over its training batches (`iter(dataset)`, endless).
        steps: int. A multiple of the model's `steps_per_execution`.
    """
    per_call = model.steps_per_execution
    if steps % per_call:
        raise ValueError(f"`steps`={steps} must be a multiple of steps_per_execution={per_call}.")
    model.make_train_function()

    def run():
        for _ in range(steps // per_call):
            logs = model.train_function(iterator)
            float(logs["loss"])

    return run


def matmul_gflops(dtype, *, size=2048, repeats=5, jit_compile=False):
    """Best and median GFLOP/s of a `size` x `size` matmul in `dtype` (2 * size^3 FLOPs each).

    Ten matmuls per timed call (one `tf.function`), so dispatch is negligible; oneDNN runs them
    unless `jit_compile`. The best round is the ceiling (what the machine can do when no other
    tenant holds a core); the median shows how loaded it was.

    Returns:
        `(best, median)` GFLOP/s.
    """
    rng = np.random.default_rng(0)
    a = tf.constant(rng.standard_normal((size, size)), dtype)
    b = tf.constant(rng.standard_normal((size, size)), dtype)
    count = 10

    @tf.function(jit_compile=jit_compile)
    def chain(a, b):
        # Independent products summed: every matmul is computed, none can be folded away.
        return tf.add_n([tf.matmul(a + tf.cast(i, dtype), b) for i in range(count)])

    timing = alternate({"matmul": lambda: chain(a, b)}, repeats)["matmul"]
    flops = 2 * size**3 * count / 1e9
    return flops / min(timing["times"]), flops / timing["median"]


def gpt_flops_per_token(parameters, num_layers, num_heads, head_dim, context):
    """nanoGPT's training FLOPs per token: 6 N + 12 L H Q T.

    N is the parameter count without the position table (nanoGPT's `get_num_params()`; the tied
    token embedding counts once, as the output projection), L layers, H heads, Q the head width
    and T the context: 6 N for the forward and backward matmuls with the weights, 12 L H Q T for
    the attention scores and weighted sums.
    """
    return 6 * parameters + 12 * num_layers * num_heads * head_dim * context


def parameter_count(model, *, exclude=("position_embedding",)):
    """Trainable parameters of `model`, without variables whose path contains an `exclude` part."""
    return int(
        sum(
            np.prod(v.shape)
            for v in model.trainable_variables
            if not any(part in v.path for part in exclude)
        )
    )


def machine():
    """Date, versions and the first 20 lines of `lscpu`, for the record."""
    import keras_hub

    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        lscpu = platform.processor()
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras_hub": keras_hub.__version__,
        "lscpu": "\n".join(lscpu.splitlines()[:20]),
    }
