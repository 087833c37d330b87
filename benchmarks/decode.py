"""Batch-1 decode speed against the memory-bandwidth bound, for float32, bfloat16 and int8 weights.

At batch 1 every new token reads every weight once, so decode tokens/s is bounded by
bandwidth / bytes-per-token. This script measures both sides on this machine, in one run:

- Bandwidth: a batch-1 float32 matrix-vector product `x W` (XLA-compiled, as the model's Dense
  layers run), W of `--gemv-mib` MiB (1024 by default: far larger than any cache), `--gemv-calls`
  products per round; the best round gives bytes of W / seconds per product.
- Bytes per token of each weight format: every variable's bytes, except that the position table
  counts one row (a step reads one position); the token embedding counts whole, since the tied
  output projection reads all of it.
- Decode tokens/s: greedy decoding at batch 1 of the GPT-2 124M shape (random weights) with
  `compress_weights(model, weights)`; the prompt pass (`start_function`) runs once untimed, then
  `steps_function` decodes `--new-tokens` tokens from that state, timed (`--repeats` alternating
  rounds, median). Reported as tokens/s, as a fraction of bandwidth / bytes-per-token, and as a
  ratio to float32.
- Agreement: the first index where the greedy tokens of bfloat16 / int8 differ from float32's
  (None: identical over all new tokens) for the README prompt "ROMEO:".
- Quality, with `--nano-model PATH.keras` (a byte-level GPT trained on the bundled tiny
  Shakespeare, e.g. `runs/gpt/model.keras`): the validation loss of each format over fixed
  validation windows (the last 10% of the text, `--val-windows` windows of the model's context,
  evenly spaced; held out only if the model's training left them out, but every format is
  scored on the same windows) and its relative change from float32. Without it the quality rows are omitted
  (in `--smoke` they are computed on the tiny random model, to exercise the code).

- LiteRT, with `--litert`: the same model exported by `tf_bigmodels.litert` as float32 and int8
  `.tflite` files, each converted in a subprocess whose peak RSS (the conversion's memory
  high-water mark) is reported, then decoded greedily at batch 1 by `LiteRTGenerator` (the
  prompt pass included in the timing; it is a few tokens). Bytes per token of a file: its size
  less all but one row of the position table. Reported as tokens/s, fraction of the bandwidth
  bound, ratio to the Keras float32 row, and first greedy difference from it. Goals: int8 >= 2x
  Keras float32 tokens/s on the 124M shape; LiteRT float32 not slower than Keras float32 on the
  nano shape (`--shape nano`); int8 file <= 30% of the float32 file; conversion peak <= 8 GiB.

Goals of the compressed-weight decoding: float32 decode >= 85% of its bound; bfloat16 >= 1.6x and int8 >= 2.5x float32
tokens/s; validation loss within 1% (bfloat16) and 2% (int8) of float32.

Usage:
    python benchmarks/decode.py --out decode.json --nano-model runs/gpt/model.keras  # minutes
    python benchmarks/decode.py --smoke                                             # seconds
    python benchmarks/decode.py --litert --out decode_litert.json    # 124M shape, minutes
    python benchmarks/decode.py --litert --shape nano --out decode_litert_nano.json
    python benchmarks/decode.py --litert --smoke                     # seconds
"""

import argparse
import importlib.resources
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _timing import alternate, machine  # noqa: E402

import tf_bigmodels  # noqa: E402
from tf_bigmodels.models import GPTModel, compress_weights, generation  # noqa: E402
from tf_bigmodels.models.compression import WEIGHTS  # noqa: E402

SHAPES = {
    "gpt2": dict(
        vocab_size=50257, d_model=768, num_heads=12, dff=3072, num_layers=12, max_length=1024
    ),
    "nano": dict(vocab_size=258, d_model=128, num_heads=4, dff=512, num_layers=4, max_length=256),
    "smoke": dict(vocab_size=258, d_model=32, num_heads=2, dff=64, num_layers=2, max_length=64),
}
LITERT_GOALS = {"int8_speedup_vs_keras_float32": 2.0, "int8_file_fraction": 0.30}
_CONVERT = """
import sys, keras, tf_bigmodels
from tf_bigmodels.litert import export_gpt_litert
from tf_bigmodels.tokenizers import ByteTokenizer
model = keras.saving.load_model(sys.argv[1])
export_gpt_litert(model, ByteTokenizer(), sys.argv[2], weights=sys.argv[3])
"""
GOALS = {"float32_fraction_of_bound": 0.85, "bfloat16_speedup": 1.6, "int8_speedup": 2.5}
LOSS_GOALS = {"bfloat16": 0.01, "int8": 0.02}  # relative validation-loss change allowed
PROMPT = "ROMEO:"


def gemv_bandwidth(mib, calls, rounds):
    """Bytes/s of a batch-1 float32 matrix-vector product over a `mib` MiB matrix, best round."""
    rows = 4096
    cols = max(1, mib * 2**20 // (4 * rows))
    matrix = tf.Variable(tf.random.normal([rows, cols]), trainable=False)
    vector = tf.random.normal([1, rows])

    @tf.function(jit_compile=True)
    def products(x):
        for _ in range(calls):  # unrolled: `calls` reads of the whole matrix per call
            x = x + tf.reduce_sum(tf.matmul(x, matrix)) * 1e-30
        return x

    products(vector).numpy()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        products(vector).numpy()
        best = min(best, time.perf_counter() - start)
    return rows * cols * 4 * calls / best


def bytes_per_token(model):
    """Bytes of weights one decode step reads: all, but one row of the position table."""
    total = 0
    position_table = model.position_embedding.weights[0]
    for variable in model.weights:
        size = int(np.prod(variable.shape)) * np.dtype(_numpy_dtype(variable.dtype)).itemsize
        if variable is position_table:
            size //= variable.shape[0]
        total += size
    return total


def _numpy_dtype(dtype):
    return "float16" if dtype == "bfloat16" else dtype  # same size


def decode_runs(model, prompt_ids, new_tokens):
    """weights -> (zero-argument callable decoding `new_tokens` greedily, its model)."""
    settings = generation.GenerationSettings(new_tokens, temperature=0.0).as_tensors()
    prompts = tf.ragged.constant([prompt_ids], dtype=tf.int32)
    runs, stop = {}, tf.constant(new_tokens)
    for weights in WEIGHTS:
        compressed = compress_weights(model, weights)
        _, state = generation.start_function(compressed)(prompts, settings, tf.constant(0))
        steps = generation.steps_function(compressed)
        runs[weights] = (
            lambda steps=steps, state=state: steps(state, stop, settings)["tokens"],
            compressed,
        )
    return runs


def first_difference(tokens, reference):
    """The first index where two token lists differ, or None."""
    return next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), None)


def validation_loss(model, text, windows):
    """Mean next-byte cross-entropy over `windows` evenly spaced windows of the last 10%."""
    data = np.frombuffer(text.encode(), np.uint8).astype("int32")
    val = data[int(0.9 * len(data)) :]
    length = model.max_length
    starts = np.linspace(0, len(val) - length - 1, windows).astype(int)
    x = np.stack([val[s : s + length] for s in starts])
    y = np.stack([val[s + 1 : s + length + 1] for s in starts])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    forward = tf.function(model, jit_compile=True)
    values = [float(loss(y[i : i + 8], forward(x[i : i + 8]))) for i in range(0, windows, 8)]
    return float(np.mean(values))


def convert_in_subprocess(model_path, out, weights):
    """Exports `model_path` to `out` in a fresh process; its peak RSS in bytes."""
    process = subprocess.Popen(
        [sys.executable, "-c", _CONVERT, model_path, out, weights],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"converting {model_path} to {weights} LiteRT failed")
    return usage.ru_maxrss * 1024  # KiB on Linux


def litert_rows(model, shape, prompt_ids, new_tokens, repeats, bandwidth, keras_row):
    """LiteRT float32 and int8 rows: conversion peak memory, file size, decode tokens/s."""
    from tf_bigmodels.litert import LiteRTGenerator

    rows = []
    with tempfile.TemporaryDirectory() as directory:
        model_path = os.path.join(directory, "model.keras")
        model.save(model_path)
        generators, peaks = {}, {}
        for weights in ("float32", "int8"):
            path = os.path.join(directory, f"gpt-{weights}.tflite")
            peaks[weights] = convert_in_subprocess(model_path, path, weights)
            generators[weights] = LiteRTGenerator(path)
        calls = {
            w: (lambda g=g: list(g.stream_ids(prompt_ids, new_tokens, temperature=0.0)))
            for w, g in generators.items()
        }
        timings = alternate(calls, repeats)
        position_row = shape["d_model"]
        for weights in generators:
            file_bytes = os.path.getsize(os.path.join(directory, f"gpt-{weights}.tflite"))
            per_weight = 1 if weights == "int8" else 4
            per_token = file_bytes - (shape["max_length"] - 1) * position_row * per_weight
            rate = new_tokens / timings[weights]["median"]
            tokens = calls[weights]()
            rows.append(
                dict(
                    runtime="litert",
                    weights=weights,
                    file_bytes=file_bytes,
                    conversion_peak_rss_bytes=peaks[weights],
                    bytes_per_token=per_token,
                    tokens_per_second=rate,
                    bound_tokens_per_second=bandwidth / per_token,
                    fraction_of_bound=rate * per_token / bandwidth,
                    speedup_vs_keras_float32=rate / keras_row["tokens_per_second"],
                    first_difference_from_keras_float32=first_difference(
                        tokens, keras_row["tokens"]
                    ),
                    seconds=timings[weights],
                )
            )
    rows[1]["file_fraction_of_float32"] = rows[1]["file_bytes"] / rows[0]["file_bytes"]
    return rows


def run(
    *,
    smoke=False,
    nano_model=None,
    new_tokens=128,
    repeats=5,
    gemv_mib=1024,
    val_windows=64,
    litert=False,
    shape_name="gpt2",
):
    """Measures bandwidth, decode tokens/s per weight format, agreement and quality; a dict."""
    if smoke:
        new_tokens, repeats, gemv_mib, val_windows = 8, 1, 4, 8
    keras.utils.set_random_seed(0)
    shape = SHAPES["smoke" if smoke else shape_name]
    model = GPTModel(**shape, rate=0.0)
    model(np.zeros((1, 1), "int32"))
    bandwidth = gemv_bandwidth(gemv_mib, calls=4 if smoke else 8, rounds=3 if smoke else 10)
    prompt_ids = [b % shape["vocab_size"] for b in PROMPT.encode()]
    runs = decode_runs(model, prompt_ids, new_tokens)
    timings = alternate({w: call for w, (call, _) in runs.items()}, repeats)
    tokens = {w: np.asarray(call()).tolist()[0][:new_tokens] for w, (call, _) in runs.items()}
    rows = []
    for weights, (_, compressed) in runs.items():
        seconds = timings[weights]["median"]
        per_token = bytes_per_token(compressed)
        rate = new_tokens / seconds
        rows.append(
            dict(
                weights=weights,
                bytes_per_token=per_token,
                tokens_per_second=rate,
                bound_tokens_per_second=bandwidth / per_token,
                fraction_of_bound=rate * per_token / bandwidth,
                first_difference_from_float32=first_difference(tokens[weights], tokens["float32"]),
                seconds=timings[weights],
            )
        )
    float32 = rows[0]["tokens_per_second"]
    for row in rows:
        row["speedup_vs_float32"] = row["tokens_per_second"] / float32
    goals = {
        "float32_fraction_of_bound": rows[0]["fraction_of_bound"],
        "bfloat16_speedup": rows[1]["speedup_vs_float32"],
        "int8_speedup": rows[2]["speedup_vs_float32"],
    }
    result = {
        **machine(),
        "shape": shape,
        "prompt": PROMPT,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "gemv_mib": gemv_mib,
        "gemv_bandwidth_gb_per_s": bandwidth / 1e9,
        "rows": rows,
        "goals": {
            name: dict(
                measured=value, goal=GOALS[name], met=None if smoke else value >= GOALS[name]
            )
            for name, value in goals.items()
        },
    }
    if litert:
        keras_row = dict(rows[0], tokens=tokens["float32"])
        lite = litert_rows(model, shape, prompt_ids, new_tokens, repeats, bandwidth, keras_row)
        result["litert"] = {
            "rows": lite,
            "goals": {
                "int8_speedup_vs_keras_float32": dict(
                    measured=lite[1]["speedup_vs_keras_float32"],
                    goal=LITERT_GOALS["int8_speedup_vs_keras_float32"],
                ),
                "int8_file_fraction": dict(
                    measured=lite[1]["file_fraction_of_float32"],
                    goal=LITERT_GOALS["int8_file_fraction"],
                ),
                "float32_not_slower_than_keras": dict(
                    measured=lite[0]["speedup_vs_keras_float32"], goal=1.0
                ),
                "conversion_peak_gib": dict(
                    measured=max(r["conversion_peak_rss_bytes"] for r in lite) / 2**30, goal=8.0
                ),
            },
        }
    quality_model = None
    if nano_model:
        tf_bigmodels.register_keras_objects()  # a run's model.keras stores its optimizer too
        quality_model = keras.saving.load_model(nano_model)
    elif smoke:
        quality_model = model
    if quality_model is not None:
        text = importlib.resources.files("tf_bigmodels.data").joinpath("tinyshakespeare.txt")
        text = text.read_text(encoding="utf-8")
        losses = {
            w: validation_loss(compress_weights(quality_model, w), text, val_windows)
            for w in WEIGHTS
        }
        result["quality"] = {
            "model": nano_model or "smoke (random weights)",
            "val_windows": val_windows,
            "rows": [
                dict(
                    weights=w,
                    val_loss=loss,
                    relative_change=loss / losses["float32"] - 1,
                    goal=LOSS_GOALS.get(w),
                    met=None
                    if w == "float32"
                    else abs(loss / losses["float32"] - 1) <= LOSS_GOALS[w],
                )
                for w, loss in losses.items()
            ],
        }
    return result


def print_result(result):
    print(
        f"GEMV bandwidth ({result['gemv_mib']} MiB float32 matrix, batch 1, XLA, best round): "
        f"{result['gemv_bandwidth_gb_per_s']:.1f} GB/s"
    )
    for row in result["rows"]:
        print(
            f"{row['weights']:9s} {row['bytes_per_token'] / 2**20:8.1f} MiB/token "
            f"{row['tokens_per_second']:8.1f} tokens/s  bound {row['bound_tokens_per_second']:8.1f}"
            f"  {100 * row['fraction_of_bound']:5.1f}% of bound  "
            f"{row['speedup_vs_float32']:.2f}x float32  first greedy difference: "
            f"{row['first_difference_from_float32']}"
        )
    for name, goal in result["goals"].items():
        verdict = {None: "not judged (smoke)", True: "met", False: "missed"}[goal["met"]]
        print(f"goal {name}: {goal['measured']:.2f} (goal >= {goal['goal']}): {verdict}")
    for row in result.get("litert", {}).get("rows", []):
        print(
            f"litert {row['weights']:7s} {row['bytes_per_token'] / 2**20:8.1f} MiB/token "
            f"{row['tokens_per_second']:8.1f} tokens/s  bound {row['bound_tokens_per_second']:8.1f}"
            f"  {100 * row['fraction_of_bound']:5.1f}% of bound  "
            f"{row['speedup_vs_keras_float32']:.2f}x Keras float32  file "
            f"{row['file_bytes'] / 2**20:.1f} MiB  conversion peak "
            f"{row['conversion_peak_rss_bytes'] / 2**30:.2f} GiB  first greedy difference: "
            f"{row['first_difference_from_keras_float32']}"
        )
    for name, goal in result.get("litert", {}).get("goals", {}).items():
        print(f"litert goal {name}: {goal['measured']:.2f} (goal {goal['goal']})")
    for row in result.get("quality", {}).get("rows", []):
        print(
            f"val loss {row['weights']:9s} {row['val_loss']:.4f} "
            f"({100 * row['relative_change']:+.2f}% vs float32)"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gemv-mib", type=int, default=1024)
    parser.add_argument("--val-windows", type=int, default=64)
    parser.add_argument("--nano-model", help="a trained byte-level GPT .keras file")
    parser.add_argument("--smoke", action="store_true", help="tiny model and matrix, seconds")
    parser.add_argument(
        "--litert",
        action="store_true",
        help="add LiteRT float32 and int8 rows (tf_bigmodels.litert)",
    )
    parser.add_argument(
        "--shape",
        choices=("gpt2", "nano"),
        default="gpt2",
        help="model shape (default: gpt2, 124M)",
    )
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    result = run(
        smoke=args.smoke,
        nano_model=args.nano_model,
        new_tokens=args.new_tokens,
        repeats=args.repeats,
        gemv_mib=args.gemv_mib,
        val_windows=args.val_windows,
        litert=args.litert,
        shape_name=args.shape,
    )
    print_result(result)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
