"""One benchmark command: tf_bigmodels against keras-hub, training and generation, in one process.

Sections (each alternates ours and the peer round by round and reports medians):

- `matmul`: float32 and bfloat16 2048 x 2048 matmul GFLOP/s (oneDNN; bfloat16 also under XLA);
  measured at the start and at the end; the best round is the ceiling MFU is computed against;
- `gpt_nano`: GPT training on nanoGPT's CPU configuration (4 layers, 4 heads, width 128, context
  64, batch 12, byte-level tiny Shakespeare through `lm_dataset`, float32, XLA): our `GPTModel`
  with our AdamW, compiled as `tf_bigmodels.training.train` compiles it, vs keras-hub
  `GPT2CausalLM(GPT2Backbone(...), preprocessor=None)` with the same optimizer and loss;
- `gpt_124m`: the GPT-2 124M shape (12 layers, 12 heads, width 768, context 256, batch 4, random
  tokens), float32 and mixed_bfloat16, with the peak RSS of each variant measured in a subprocess
  of its own (the RSS high-water mark, VmHWM, after building, compiling and 3 steps);
- `bert`: BERT pre-training (2 layers, 2 heads, width 128, dff 512, seq 128, batch 32, vocab 8000,
  20 masked positions, random tokens, XLA): our `BERTPretrainer` (MLM + NSP) vs keras-hub
  `BertMaskedLM` (MLM only);
- `generation`: greedy generation tokens/s at batch 1 and 16 (prompt 16, 256 new tokens), ours vs
  keras-hub `generate`, from `benchmarks/generation.py`;
- `bf16_execution` (only when named): which execution trains `mixed_bfloat16` faster on this CPU,
  XLA or TensorFlow's oneDNN kernels, over model widths 128-768 (4 layers, heads of 64, context
  256, batch 4, vocabulary 8000, random tokens), with float32 (XLA) beside them; each row says
  whether `tf_bigmodels.training.execution.jit_compile_for`'s automatic choice picked the faster;
- `decode` (only when named): batch-1 decode tokens/s of the GPT-2 124M shape with float32,
  bfloat16 and int8 weights against the machine's bandwidth bound, from `benchmarks/decode.py`
  (`--nano-model PATH.keras` adds the validation-loss rows);
- `time_to_quality` (only when named): training seconds until the validation loss reaches 1.886
  and 1.75 on nanoGPT's CPU configuration, ours vs keras-hub vs nanoGPT (`--nanogpt DIR`), from
  `benchmarks/time_to_quality.py` (its options are accepted here too).

MFU = tokens/s x FLOPs per token / matmul ceiling of the same dtype, with nanoGPT's FLOPs per token
6 N + 12 L H Q T (`_timing.gpt_flops_per_token`). Training times are per optimizer step, read
after every call into the compiled train function (as `fit` with a NaN guard does); compilation
is excluded by untimed warm-up calls.

Usage:
    python benchmarks/run.py --out results.json           # everything (about 20 minutes here)
    python benchmarks/run.py --sections gpt_nano,bert      # a subset
    python benchmarks/run.py --smoke --out smoke.json      # tiny shapes, checks the table (CI)
    python benchmarks/run.py --sections time_to_quality --nanogpt ~/src/nanoGPT --out ttq.json
    python benchmarks/run.py --sections bf16_execution,gpt_124m,decode,time_to_quality \
        --nanogpt ~/src/nanoGPT --nano-model runs/gpt/model.keras --out perf.json  # ~50 minutes
"""

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import decode  # noqa: E402
import generation  # noqa: E402
import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import time_to_quality  # noqa: E402
from _timing import (
    alternate,
    gpt_flops_per_token,
    machine,
    matmul_gflops,  # noqa: E402
    parameter_count,
    train_steps,
)

from tf_bigmodels.data import lm_dataset, load_corpus  # noqa: E402
from tf_bigmodels.models import BERTEncoder, BERTPretrainer, GPTModel  # noqa: E402
from tf_bigmodels.tokenizers import ByteTokenizer  # noqa: E402
from tf_bigmodels.training.execution import jit_compile_for  # noqa: E402
from tf_bigmodels.training.optimizer import build_optimizer  # noqa: E402

PRECISIONS = ("float32", "mixed_bfloat16")
SECTIONS = (
    "matmul",
    "gpt_nano",
    "gpt_124m",
    "bert",
    "generation",
    "bf16_execution",
    "decode",
    "time_to_quality",
)
# time_to_quality trains 3 systems x 3 seeds x 2000 steps (about 25 minutes), bf16_execution
# compiles 12 models and decode takes about 10 minutes: run them when named.
DEFAULT_SECTIONS = SECTIONS[:-3]

# Shapes: model arguments in our names, plus sequence length and batch size.
FULL = {
    "gpt_nano": dict(
        d_model=128, num_heads=4, dff=512, num_layers=4, rate=0.0, seq_len=64, batch_size=12
    ),
    "gpt_124m": dict(
        d_model=768,
        num_heads=12,
        dff=3072,
        num_layers=12,
        rate=0.1,
        seq_len=256,
        batch_size=4,
        vocab_size=50257,
    ),
    "bert": dict(
        d_model=128,
        num_heads=2,
        dff=512,
        num_layers=2,
        rate=0.1,
        seq_len=128,
        batch_size=32,
        vocab_size=8000,
        predictions=20,
    ),
    "generation": dict(model="nanogpt", batches=(1, 16), prompt=16, new_tokens=256),
    "matmul": dict(size=2048),
    "bf16_execution": dict(
        widths=(128, 256, 512, 768), num_layers=4, seq_len=256, batch_size=4, vocab_size=8000
    ),
    "decode": {},  # its own settings: decode.SHAPES
    "time_to_quality": {},  # its own settings: time_to_quality.FULL
}
SMOKE = {
    "gpt_nano": dict(
        d_model=32, num_heads=2, dff=64, num_layers=1, rate=0.0, seq_len=16, batch_size=4
    ),
    "gpt_124m": dict(
        d_model=32,
        num_heads=2,
        dff=64,
        num_layers=1,
        rate=0.1,
        seq_len=16,
        batch_size=2,
        vocab_size=300,
    ),
    "bert": dict(
        d_model=32,
        num_heads=2,
        dff=64,
        num_layers=1,
        rate=0.1,
        seq_len=16,
        batch_size=4,
        vocab_size=300,
        predictions=3,
    ),
    "generation": dict(model="smoke", batches=(1, 2), prompt=4, new_tokens=8),
    "matmul": dict(size=256),
    "bf16_execution": dict(widths=(64,), num_layers=1, seq_len=16, batch_size=2, vocab_size=300),
    "decode": {},  # decode.run(smoke=True)
    "time_to_quality": {},  # time_to_quality.SMOKE
}


@contextlib.contextmanager
def _policy(name):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _optimizer(model, kind):
    """The driver's optimizer (`tf_bigmodels.training.train`), for ours and the peer alike."""
    if kind == "gpt":
        return build_optimizer(model, learning_rate=1e-3, total_steps=2000, warmup_steps=100)
    return build_optimizer(
        model,
        learning_rate=1e-3,
        total_steps=2000,
        warmup_steps=200,
        decay="linear",
        beta_2=0.999,
        epsilon=1e-6,
    )


def _compile(model, kind, loss, jit_compile, steps_per_execution, **kwargs):
    optimizer = _optimizer(model, kind)
    model.compile(
        optimizer=optimizer,
        loss=loss,
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
        **kwargs,
    )
    optimizer.build(model.trainable_variables)
    return model


def _lm_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def build_gpt(library, shape, vocab_size, jit_compile, steps_per_execution):
    """A compiled GPT of `shape`: our `GPTModel` or keras-hub's `GPT2CausalLM`."""
    if library == "ours":
        model = GPTModel(
            vocab_size,
            shape["d_model"],
            shape["num_heads"],
            shape["dff"],
            shape["num_layers"],
            shape["rate"],
            max_length=shape["seq_len"],
        )
        model(np.zeros((1, shape["seq_len"]), "int32"))
        return _compile(model, "gpt", _lm_loss(), jit_compile, steps_per_execution)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=vocab_size,
        num_layers=shape["num_layers"],
        num_heads=shape["num_heads"],
        hidden_dim=shape["d_model"],
        intermediate_dim=shape["dff"],
        dropout=shape["rate"],
        max_sequence_length=shape["seq_len"],
    )
    model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    # No accuracy metric (keras-hub's default adds one): the peer does no more work than ours.
    return _compile(model, "gpt", _lm_loss(), jit_compile, steps_per_execution, weighted_metrics=[])


def build_bert(library, shape, jit_compile, steps_per_execution):
    """A compiled BERT pre-trainer: our `BERTPretrainer` (MLM + NSP) or `BertMaskedLM`."""
    if library == "ours":
        encoder = BERTEncoder(
            shape["vocab_size"],
            shape["d_model"],
            shape["num_heads"],
            shape["dff"],
            shape["num_layers"],
            shape["rate"],
            max_length=shape["seq_len"],
        )
        model = BERTPretrainer(encoder)
        features, _ = _bert_batch(shape, np.random.default_rng(0), batch_size=1)
        model(features)
        return _compile(model, "bert", None, jit_compile, steps_per_execution)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=shape["vocab_size"],
        num_layers=shape["num_layers"],
        num_heads=shape["num_heads"],
        hidden_dim=shape["d_model"],
        intermediate_dim=shape["dff"],
        dropout=shape["rate"],
        max_sequence_length=shape["seq_len"],
    )
    model = keras_hub.models.BertMaskedLM(backbone=backbone, preprocessor=None)
    features, _ = _bert_batch(shape, np.random.default_rng(0), batch_size=1)
    model(features)
    return _compile(
        model, "bert", _lm_loss(), jit_compile, steps_per_execution, weighted_metrics=[]
    )


def _bert_batch(shape, rng, batch_size=None):
    batch, length = batch_size or shape["batch_size"], shape["seq_len"]
    predictions = shape["predictions"]
    positions = np.sort(
        np.stack(
            [rng.choice(np.arange(1, length), predictions, replace=False) for _ in range(batch)]
        ),
        axis=1,
    ).astype("int32")
    features = {
        "token_ids": rng.integers(5, shape["vocab_size"], (batch, length)).astype("int32"),
        "segment_ids": (np.arange(length)[None].repeat(batch, 0) >= length // 2).astype("int32"),
        "padding_mask": np.ones((batch, length), "int32"),
        "mask_positions": positions,
    }
    labels = {
        "mask_ids": rng.integers(5, shape["vocab_size"], (batch, predictions)).astype("int32"),
        "mask_weights": np.ones((batch, predictions), "float32"),
        "next_sentence_labels": rng.integers(0, 2, (batch,)).astype("int32"),
    }
    return features, labels


def _random_batches(arrays_fn, count=4):
    """An endless dataset cycling through `count` random batches built by `arrays_fn(rng)`."""
    rng = np.random.default_rng(0)
    batches = [arrays_fn(rng) for _ in range(count)]
    stacked = tf.nest.map_structure(lambda *parts: np.stack(parts), *batches)
    return tf.data.Dataset.from_tensor_slices(stacked).repeat().prefetch(tf.data.AUTOTUNE)


def gpt_data(library, shape, source, vocab_size):
    """Endless `(x, y)` batches: `lm_dataset` on the corpus ("corpus") or random tokens."""
    if source == "corpus":
        dataset = lm_dataset(
            load_corpus("shakespeare"),
            ByteTokenizer(),
            shape["seq_len"],
            shape["batch_size"],
            repeat=True,
        )
    else:

        def batch(rng):
            tokens = rng.integers(0, vocab_size, (shape["batch_size"], shape["seq_len"] + 1))
            tokens = tokens.astype("int32")
            return tokens[:, :-1], tokens[:, 1:]

        dataset = _random_batches(batch)
    if library == "keras_hub":
        dataset = dataset.map(lambda x, y: ({"token_ids": x, "padding_mask": tf.ones_like(x)}, y))
    return dataset


def bert_data(library, shape):
    def batch(rng):
        features, labels = _bert_batch(shape, rng)
        if library == "ours":
            return features, labels
        return features, labels["mask_ids"], labels["mask_weights"]

    return _random_batches(batch)


# --------------------------------------------------------------------------------------------
# Measurements


def _gpt_flops(shape, vocab_size):
    # Our GPTModel and GPT2Backbone have the same parameters for the same shape.
    with _policy("float32"):
        model = GPTModel(
            vocab_size,
            shape["d_model"],
            shape["num_heads"],
            shape["dff"],
            shape["num_layers"],
            max_length=shape["seq_len"],
        )
        model(np.zeros((1, 1), "int32"))
        parameters = parameter_count(model)
    head_dim = shape["d_model"] // shape["num_heads"]
    return parameters, gpt_flops_per_token(
        parameters, shape["num_layers"], shape["num_heads"], head_dim, shape["seq_len"]
    )


def _train_rows(section, builders, shape, steps, repeats, flops_per_token, ceilings):
    """Times each compiled model of `builders` (name -> (model, dataset, settings))."""
    runs = {
        name: train_steps(model, iter(dataset), steps)
        for name, (model, dataset, _) in builders.items()
    }
    timings = alternate(runs, repeats)
    tokens = shape["batch_size"] * shape["seq_len"]
    rows = []
    for name, (_, _, settings) in builders.items():
        seconds = timings[name]["median"] / steps
        row = dict(
            section=section,
            variant=name,
            **settings,
            batch=shape["batch_size"],
            seq_len=shape["seq_len"],
            ms_per_step=1e3 * seconds,
            tokens_per_second=tokens / seconds,
            step_ms_per_round=[1e3 * t / steps for t in timings[name]["times"]],
        )
        if flops_per_token:
            ceiling = ceilings.get(settings["precision"].replace("mixed_", ""))
            row["mfu"] = tokens / seconds * flops_per_token / (ceiling * 1e9) if ceiling else None
        rows.append(row)
    return rows


def section_matmul(shape, repeats):
    """Ceilings (best round's GFLOP/s) of float32 and bfloat16 matmuls, and their rows."""
    measured = {
        dtype: matmul_gflops(dtype, size=shape["size"], repeats=repeats)
        for dtype in ("float32", "bfloat16")
    }
    measured["bfloat16_xla"] = matmul_gflops(
        "bfloat16", size=shape["size"], repeats=repeats, jit_compile=True
    )
    rows = [
        dict(section="matmul", variant=dtype, size=shape["size"], gflops=best, median_gflops=median)
        for dtype, (best, median) in measured.items()
    ]
    return {dtype: best for dtype, (best, _) in measured.items()}, rows


def _xla(args, jit=True):
    """`jit`, or False in smoke mode, where compiling each tiny model with XLA (seconds each)
    would be most of the run: the smoke run checks the command and its table, not timings. The
    `bf16_execution` section does not ask: XLA against TensorFlow's kernels is what it measures."""
    return jit and not args.smoke


def section_gpt_nano(shape, args, ceilings):
    vocab_size = ByteTokenizer().vocab_size
    parameters, flops = _gpt_flops(shape, vocab_size)
    spe = args.steps_per_execution
    jit = _xla(args)
    settings = dict(precision="float32", jit_compile=jit)
    builders = {
        "ours": (
            build_gpt("ours", shape, vocab_size, jit, spe),
            gpt_data("ours", shape, "corpus", vocab_size),
            dict(settings, steps_per_execution=spe),
        ),
        "keras_hub": (
            build_gpt("keras_hub", shape, vocab_size, jit, 1),
            gpt_data("keras_hub", shape, "corpus", vocab_size),
            dict(settings, steps_per_execution=1),
        ),
    }
    if spe > 1:  # the peer with our lever too, for the record
        builders[f"keras_hub_spe{spe}"] = (
            build_gpt("keras_hub", shape, vocab_size, jit, spe),
            gpt_data("keras_hub", shape, "corpus", vocab_size),
            dict(settings, steps_per_execution=spe),
        )
    rows = _train_rows("gpt_nano", builders, shape, args.train_steps, args.repeats, flops, ceilings)
    for row in rows:
        row["parameters"] = parameters
    return _ratios(rows, "keras_hub")


def _jit_124m(precision, args):
    # float32 compiles. For mixed_bfloat16 both libraries get the same setting: `--bf16-jit`, or
    # else what our training would choose.
    if precision == "float32":
        return _xla(args)
    d_model = FULL["gpt_124m"]["d_model"]
    return _xla(args, jit_compile_for("mixed_bfloat16", args.bf16_jit, d_model=d_model))


def section_gpt_124m(shape, args, ceilings):
    vocab_size = shape["vocab_size"]
    parameters, flops = _gpt_flops(shape, vocab_size)
    # The memory workers run side by side before the timing, not during it (in smoke mode,
    # where times mean nothing, they were started with the run).
    peaks = _collect(args.memory_workers or _start_memory_workers(args))
    rows = []
    for precision in PRECISIONS:
        builders = {}
        for library in ("ours", "keras_hub"):
            jit = _jit_124m(precision, args)
            with _policy(precision):
                model = build_gpt(library, shape, vocab_size, jit, 1)
            builders[library] = (
                model,
                gpt_data(library, shape, "random", vocab_size),
                dict(precision=precision, jit_compile=jit, steps_per_execution=1),
            )
        steps = max(1, args.train_steps // 20)
        section_rows = _train_rows(
            "gpt_124m", builders, shape, steps, args.repeats, flops, ceilings
        )
        for row in section_rows:
            row["parameters"] = parameters
            row["peak_rss_mb"] = peaks[row["variant"], precision]
        rows += _ratios(section_rows, "keras_hub")
        del builders
        keras.backend.clear_session()
    return rows


def section_bf16_execution(shape, args, ceilings):
    """mixed_bfloat16 with and without XLA, and float32 with XLA, over model widths."""
    rows = []
    for width in shape["widths"]:
        model_shape = dict(
            shape,
            d_model=width,
            num_heads=max(1, width // 64),
            dff=4 * width,
            rate=0.0,
        )
        vocab_size = shape["vocab_size"]
        _, flops = _gpt_flops(model_shape, vocab_size)
        builders = {}
        for name, precision, jit in (
            ("float32_xla", "float32", True),
            ("bf16_xla", "mixed_bfloat16", True),
            ("bf16_no_xla", "mixed_bfloat16", False),
        ):
            with _policy(precision):
                model = build_gpt("ours", model_shape, vocab_size, jit, 1)
            builders[name] = (
                model,
                gpt_data("ours", model_shape, "random", vocab_size),
                dict(precision=precision, jit_compile=jit, steps_per_execution=1, width=width),
            )
        steps = max(1, args.train_steps // 8)
        width_rows = _train_rows(
            "bf16_execution", builders, model_shape, steps, args.repeats, flops, ceilings
        )
        by_name = {row["variant"]: row for row in width_rows}
        faster_jit = (
            by_name["bf16_xla"]["tokens_per_second"] >= by_name["bf16_no_xla"]["tokens_per_second"]
        )
        auto = jit_compile_for("mixed_bfloat16", d_model=width)
        for row in width_rows:
            row["vs_float32"] = (
                row["tokens_per_second"] / by_name["float32_xla"]["tokens_per_second"]
            )
            row["auto_jit_compile"] = auto
            row["auto_picked_faster"] = auto == faster_jit
        rows += width_rows
        del builders
        keras.backend.clear_session()
    return rows


def section_bert(shape, args, ceilings):
    spe = args.steps_per_execution
    jit = _xla(args)
    variants = {"ours": ("ours", spe), "keras_hub": ("keras_hub", 1)}
    if spe > 1:  # the peer with our lever too, for the record
        variants[f"keras_hub_spe{spe}"] = ("keras_hub", spe)
    builders = {
        name: (
            build_bert(library, shape, jit, steps),
            bert_data(library, shape),
            dict(precision="float32", jit_compile=jit, steps_per_execution=steps),
        )
        for name, (library, steps) in variants.items()
    }
    steps = max(spe, args.train_steps // 4 // spe * spe)
    return _ratios(
        _train_rows("bert", builders, shape, steps, args.repeats, None, ceilings), "keras_hub"
    )


def section_generation(shape, args, ceilings):
    config = generation.MODELS[shape["model"]]
    rows = []
    for batch in shape["batches"]:
        runs = generation.variants(config, batch, shape["prompt"], shape["new_tokens"])
        medians = generation.measure(runs, args.repeats)
        section_rows = [
            dict(
                section="generation",
                variant=name,
                model=shape["model"],
                batch=batch,
                prompt=shape["prompt"],
                new_tokens=runs[name][1],
                seconds=seconds,
                tokens_per_second=batch * runs[name][1] / seconds,
            )
            for name, seconds in medians.items()
        ]
        for row in section_rows:
            row["variant"] = {"ours_cache_xla": "ours"}.get(row["variant"], row["variant"])
        rows += _ratios(section_rows, "keras_hub")
        keras.backend.clear_session()
    return rows


def section_decode(shape, args, ceilings):
    """Decode tokens/s per weight format against the bandwidth bound (`benchmarks/decode.py`)."""
    result = decode.run(smoke=args.smoke, nano_model=args.nano_model)
    args.decode = result
    return [dict(row, section="decode") for row in result["rows"]]


def section_time_to_quality(shape, args, ceilings):
    """Seconds to a validation loss: ours, keras-hub, nanoGPT (`benchmarks/time_to_quality.py`)."""
    result = time_to_quality.run(args, args.smoke)
    args.time_to_quality = result
    return [dict(row, section="time_to_quality") for row in result["rows"]]


def _ratios(rows, peer):
    peer_rate = next(r["tokens_per_second"] for r in rows if r["variant"] == peer)
    for row in rows:
        row["vs_keras_hub"] = row["tokens_per_second"] / peer_rate
    return rows


# --------------------------------------------------------------------------------------------
# Peak memory, one subprocess per configuration


def _start_memory_workers(args):
    """(library, precision) -> the subprocess training that 124M-shaped model (`memory_worker`).

    One subprocess per configuration, so that each high-water mark is that configuration's
    alone. In smoke mode one subprocess trains the four in turn: its marks only grow, and the
    run checks the code path and the table, not the figures (saving three starts of
    TensorFlow and keras-hub)."""
    specs = []
    for precision in PRECISIONS:
        for library in ("ours", "keras_hub"):
            jit = _jit_124m(precision, args)
            specs.append(
                dict(library=library, precision=precision, jit_compile=jit, smoke=args.smoke)
            )
    groups = [specs] if args.smoke else [[spec] for spec in specs]
    workers = {}
    for group in groups:
        worker = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--memory-worker", json.dumps(group)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        )
        workers.update({(spec["library"], spec["precision"]): worker for spec in group})
    return workers


def _collect(workers):
    """(library, precision) -> peak RSS in MiB reported by the memory workers."""
    peaks = {}
    for worker in dict.fromkeys(workers.values()):
        stdout, stderr = worker.communicate()
        if worker.returncode:
            keys = [key for key, w in workers.items() if w is worker]
            raise RuntimeError(f"memory worker {keys} failed:\n{stderr[-2000:]}")
        for line in stdout.strip().splitlines():
            if line.startswith("{"):
                report = json.loads(line)
                peaks[tuple(report["key"])] = report["peak_rss_mb"]
    return peaks


def memory_worker(specs):
    """Builds, compiles and trains each 124M-shaped configuration of `specs` for 3 steps, in
    turn; prints the process's peak RSS after each, one JSON line per configuration."""
    for spec in specs:
        shape = (SMOKE if spec["smoke"] else FULL)["gpt_124m"]
        with _policy(spec["precision"]):
            model = build_gpt(spec["library"], shape, shape["vocab_size"], spec["jit_compile"], 1)
        data = gpt_data(spec["library"], shape, "random", shape["vocab_size"])
        train_steps(model, iter(data), 3)()
        key = [spec["library"], spec["precision"]]
        print(json.dumps({"key": key, "peak_rss_mb": _high_water_mib()}), flush=True)
        del model
        keras.backend.clear_session()


def _high_water_mib():
    # VmHWM, not getrusage's ru_maxrss: ru_maxrss survives fork + exec, so a worker started by a
    # large parent would report the parent's size.
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB -> MiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------------------------
# Report


def _format(value, spec):
    return "-" if value is None else format(value, spec)


def table(rows):
    """The results as one Markdown table."""
    lines = [
        "| section | variant | settings | ms/step or s | tokens/s | MFU | peak RSS MB "
        "| vs keras-hub |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row["section"] in ("time_to_quality", "bf16_execution", "decode"):  # reported apart
            continue
        if row["section"] == "matmul":
            lines.append(
                f"| matmul {row['size']}x{row['size']} | {row['variant']} | "
                f"{'XLA' if row['variant'].endswith('xla') else 'oneDNN'}, best "
                f"(median) | | {row['gflops']:.0f} ({row['median_gflops']:.0f}) "
                "GFLOP/s | | | |"
            )
            continue
        if row["section"] == "generation":
            settings = f"{row['model']}, batch {row['batch']}, {row['new_tokens']} new"
            time_text = f"{row['seconds']:.3f} s"
        else:
            settings = (
                f"{row['precision']}, batch {row['batch']}x{row['seq_len']}, "
                f"{'XLA' if row['jit_compile'] else 'no XLA'}, "
                f"spe {row['steps_per_execution']}"
            )
            time_text = f"{row['ms_per_step']:.1f}"
        mfu = row.get("mfu")
        lines.append(
            f"| {row['section']} | {row['variant']} | {settings} | {time_text} | "
            f"{row['tokens_per_second']:,.0f} | {_format(mfu and 100 * mfu, '.1f')}"
            f"{'%' if mfu else ''} | {_format(row.get('peak_rss_mb'), ',.0f')} | "
            f"{row['vs_keras_hub']:.2f}x |"
        )
    return "\n".join(lines)


def bf16_table(rows):
    """The `bf16_execution` rows as a Markdown table, one line per model width."""
    lines = [
        "| width | float32 XLA tokens/s | bf16 XLA | bf16 no XLA | faster bf16 | auto choice "
        "| auto picked the faster |",
        "|---:|---:|---:|---:|---|---|---|",
    ]
    widths = sorted({row["width"] for row in rows if row["section"] == "bf16_execution"})
    for width in widths:
        by_name = {
            row["variant"]: row
            for row in rows
            if row["section"] == "bf16_execution" and row["width"] == width
        }
        xla, eager = by_name["bf16_xla"], by_name["bf16_no_xla"]
        faster = "XLA" if xla["tokens_per_second"] >= eager["tokens_per_second"] else "no XLA"
        lines.append(
            f"| {width} | {by_name['float32_xla']['tokens_per_second']:,.0f} "
            f"| {xla['tokens_per_second']:,.0f} ({xla['vs_float32']:.2f}x) "
            f"| {eager['tokens_per_second']:,.0f} ({eager['vs_float32']:.2f}x) | {faster} "
            f"| {'XLA' if xla['auto_jit_compile'] else 'no XLA'} "
            f"| {'yes' if xla['auto_picked_faster'] else 'no'} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sections",
        default=",".join(DEFAULT_SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all but "
        "bf16_execution, decode and time_to_quality, the latter about 25 minutes with nanoGPT)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median)")
    parser.add_argument(
        "--train-steps",
        type=int,
        default=48,
        help="steps per timed round of gpt_nano (gpt_124m: a twentieth, bert: a quarter)",
    )
    parser.add_argument(
        "--steps-per-execution",
        type=int,
        default=8,
        help="ours, in gpt_nano and bert; the peer runs with 1 (its default) "
        "and, in an extra row, with this value too",
    )
    parser.add_argument(
        "--bf16-jit",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compile the mixed_bfloat16 124M train steps (both libraries) with XLA or not; "
        "default: what tf_bigmodels' training chooses on this machine (jit_compile_for)",
    )
    parser.add_argument(
        "--intra-op-threads",
        type=int,
        default=0,
        help="TensorFlow intra-op threads (0 = TensorFlow's choice)",
    )
    parser.add_argument(
        "--inter-op-threads",
        type=int,
        default=0,
        help="TensorFlow inter-op threads (0 = TensorFlow's choice)",
    )
    parser.add_argument(
        "--nano-model",
        help="decode: a trained byte-level GPT .keras file (e.g. runs/gpt/model.keras) for the "
        "validation-loss rows",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny shapes, 1 round, XLA only where bf16_execution compares it, one memory "
        "worker for the four gpt_124m configurations (CI)",
    )
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    time_to_quality.add_arguments(parser.add_argument_group("time_to_quality"))
    args = parser.parse_args()
    if args.memory_worker:
        return memory_worker(json.loads(args.memory_worker))
    if args.intra_op_threads:  # 0 leaves TensorFlow's choice (and TensorFlow may have started)
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    if args.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    if args.smoke:
        args.repeats, args.train_steps = 1, 2 * args.steps_per_execution
    shapes = SMOKE if args.smoke else FULL
    sections = args.sections.split(",")
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown --sections {sorted(unknown)}; choose from {list(SECTIONS)}")
    args.memory_workers = (
        _start_memory_workers(args) if args.smoke and "gpt_124m" in sections else None
    )
    keras.utils.set_random_seed(0)
    ceilings, rows = section_matmul(shapes["matmul"], args.repeats)
    runners = {
        "gpt_nano": section_gpt_nano,
        "gpt_124m": section_gpt_124m,
        "bert": section_bert,
        "bf16_execution": section_bf16_execution,
        "decode": section_decode,
        "generation": section_generation,
        "time_to_quality": section_time_to_quality,
    }
    for name in sections:
        if name in runners:
            start = time.perf_counter()
            section_rows = runners[name](shapes[name], args, ceilings)
            rows += section_rows
            print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
            if name == "decode":
                decode.print_result(args.decode)
            else:
                print((bf16_table if name == "bf16_execution" else table)(section_rows), flush=True)
            if name == "time_to_quality":
                print(args.time_to_quality["table"], *args.time_to_quality["goals"], sep="\n")
    # The ceilings again at the end: the best of both is what the machine can do when free.
    late_ceilings, late_rows = section_matmul(shapes["matmul"], args.repeats)
    for row, late in zip(rows, late_rows):
        row["gflops_end"] = late["gflops"]
        row["gflops"] = max(row["gflops"], late["gflops"])
    for row in rows:
        if row.get("mfu"):
            ceiling = ceilings[row["precision"].replace("mixed_", "")]
            row["mfu"] *= ceiling / max(
                ceiling, late_ceilings[row["precision"].replace("mixed_", "")]
            )
    ceilings = {dtype: max(value, late_ceilings[dtype]) for dtype, value in ceilings.items()}
    result = {
        **machine(),
        "command": " ".join(sys.argv),
        "smoke": args.smoke,
        "repeats": args.repeats,
        "ceilings_gflops": ceilings,
        "flops_per_token": "6 N + 12 L H Q T (nanoGPT)",
        "rows": rows,
    }
    if "decode" in sections:
        result["decode"] = {k: v for k, v in args.decode.items() if k != "rows"}
    if "time_to_quality" in sections:
        ttq = args.time_to_quality
        result["time_to_quality"] = dict(config=ttq["config"], goals=ttq["goals"])
    print(
        f"\n{result['date']}  TensorFlow {result['tensorflow']}, Keras {result['keras']}, "
        f"keras-hub {result['keras_hub']}\n"
    )
    print(table(rows))
    if "bf16_execution" in sections:
        print("", bf16_table(rows), sep="\n")
    if "time_to_quality" in sections:
        print("", args.time_to_quality["table"], *args.time_to_quality["goals"], sep="\n")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
