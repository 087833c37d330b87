"""New tokens per second of greedy generation: ours (cache + XLA), ours without a cache, keras-hub.

Measured in one run on this machine, for batch 1 and batch 16, a 16-token prompt and 256 new
tokens, on two randomly initialised models of the same shapes in both libraries:

- "nanogpt": 4 layers, 4 heads, width 128, dff 512, vocab 258 (bytes), max_length 512 (the
  nanoGPT CPU size; 16 + 256 tokens need more than its 256-token context);
- "gpt2": the GPT-2 124M shape (12 layers, 12 heads, width 768, dff 3072, vocab 50257,
  max_length 1024).

Variants, run alternately (one call each per round, `--repeats` rounds, median time reported):

- `ours_cache_xla`: `GPTModel.generate(..., temperature=0.0)` (key/value cache, XLA while loop);
- `ours_no_cache`: the whole sequence through a `tf.function` forward pass (graph mode, traced
  for unknown length, no XLA) for every new token, argmax of the last logits. Its cost grows with the
  square of the length, so on "gpt2" it generates only `--no-cache-tokens` tokens (default 32);
  its tokens/s is for that shorter run and is an upper bound for 256 tokens;
- `keras_hub`: `keras_hub.models.GPT2CausalLM(backbone, preprocessor=None)` compiled with the
  greedy sampler, `generate({"token_ids", "padding_mask"}, stop_token_ids=None)` on the prompt
  right-padded to 16 + 256 tokens (its documented token-id path).

Each variant is called once before timing (tracing and XLA compilation are not timed).

Streaming (`--streaming`), a separate measurement: the time of `stream_text` (chunks of 16
tokens, each a call of the decode loop that carries the key/value cache on) against one
`GPTModel.generate` call plus one detokenization, for 512 new tokens after a 16-byte prompt, sampled
with the CLI's settings (temperature 0.8, top-k 40) and seed 1, on the nanoGPT shape with
max_length 1024 (so that 16 + 512 tokens fit one call). The tokenizer is the byte tokenizer without
an end token: random weights would otherwise end a text at a random step, and both variants must
produce all 512 tokens. Both variants must give the same text; the script checks it. The ratio
streamed / non-streamed is reported (median of `--repeats` alternating rounds; goal <= 1.2).

Usage:
    python benchmarks/generation.py --out results.json      # the full table (minutes)
    python benchmarks/generation.py --smoke                  # tiny shapes, seconds
    python benchmarks/generation.py --streaming              # streamed vs one call (a minute)
    python benchmarks/generation.py --streaming --smoke      # the same on a tiny model, seconds
"""

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _timing import alternate, machine  # noqa: E402

from tf_bigmodels.export import stream_text  # noqa: E402
from tf_bigmodels.models import GPTModel  # noqa: E402
from tf_bigmodels.tokenizers import ByteTokenizer  # noqa: E402

MODELS = {
    "nanogpt": dict(
        vocab_size=258, d_model=128, num_heads=4, dff=512, num_layers=4, max_length=512
    ),
    "gpt2": dict(
        vocab_size=50257, d_model=768, num_heads=12, dff=3072, num_layers=12, max_length=1024
    ),
    "smoke": dict(vocab_size=258, d_model=32, num_heads=2, dff=64, num_layers=2, max_length=64),
}


def _ours(config):
    model = GPTModel(**config, rate=0.0)
    model(np.zeros((1, 1), "int32"))
    return model


def _keras_hub(config):
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=config["vocab_size"],
        num_layers=config["num_layers"],
        num_heads=config["num_heads"],
        hidden_dim=config["d_model"],
        intermediate_dim=config["dff"],
        dropout=0.0,
        max_sequence_length=config["max_length"],
    )
    causal_lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    causal_lm.compile(sampler="greedy")
    return causal_lm


def variants(config, batch, prompt_length, new_tokens, no_cache_tokens=None):
    """name -> (callable, number of new tokens per row it produces).

    `ours_cache_xla` and `keras_hub` always; `ours_no_cache` only if `no_cache_tokens` is given.
    """
    rng = np.random.default_rng(0)
    prompts = rng.integers(0, config["vocab_size"], (batch, prompt_length)).astype("int32")
    ours = _ours(config)

    # No XLA here: XLA would compile once per sequence length.
    forward = tf.function(lambda ids: ours(ids)[:, -1], reduce_retracing=True)

    def no_cache():
        tokens = tf.constant(prompts)
        for _ in range(no_cache_tokens):
            next_token = tf.argmax(forward(tokens), axis=-1, output_type=tf.int32)
            tokens = tf.concat([tokens, next_token[:, None]], axis=1)
        return tokens

    hub = _keras_hub(config)
    total = prompt_length + new_tokens
    hub_inputs = {
        "token_ids": np.pad(prompts, ((0, 0), (0, new_tokens))),
        "padding_mask": np.arange(total)[None].repeat(batch, 0) < prompt_length,
    }
    result = {
        "ours_cache_xla": (lambda: ours.generate(prompts, new_tokens, temperature=0.0), new_tokens)
    }
    if no_cache_tokens:
        result["ours_no_cache"] = (no_cache, no_cache_tokens)
    result["keras_hub"] = (lambda: hub.generate(hub_inputs, stop_token_ids=None), new_tokens)
    return result


def measure(variants, repeats):
    """name -> median seconds of each variant from `variants`, called alternately."""
    timings = alternate({name: run for name, (run, _) in variants.items()}, repeats)
    return {name: timing["median"] for name, timing in timings.items()}


class _ByteTokenizerWithoutEnd(ByteTokenizer):
    """The byte tokenizer with no end token, so that every variant generates all its tokens."""

    end_id = None


STREAMING_GOAL = 1.2  # streamed time / non-streamed time


def streaming(new_tokens, repeats, smoke=False):
    """Median seconds of `stream_text` and of one `generate` call, and their ratio (a dict)."""
    config = MODELS["smoke"] if smoke else {**MODELS["nanogpt"], "max_length": 1024}
    model, tokenizer = _ours(config), _ByteTokenizerWithoutEnd()
    prompt = "First Citizen:\nB"  # 16 bytes
    ids = tokenizer.tokenize([prompt]).to_list()
    settings = dict(temperature=0.8, top_k=40, seed=1)

    def non_streamed():
        out = model.generate(ids, new_tokens, **settings)
        return tokenizer.detokenize(out[:, len(ids[0]) :]).numpy()[0].decode()

    def streamed():
        pieces = stream_text(model, prompt, new_tokens, tokenizer=tokenizer, **settings)
        return "".join(pieces)

    same_text = streamed() == non_streamed().rstrip("\ufffd")  # streaming drops a cut character
    timings = alternate({"non_streamed": non_streamed, "streamed": streamed}, repeats)
    ratio = timings["streamed"]["median"] / timings["non_streamed"]["median"]
    return {
        "model": {**config, "rate": 0.0},
        "prompt_tokens": len(ids[0]),
        "new_tokens": new_tokens,
        "chunk_tokens": 16,
        "settings": settings,
        "same_text": same_text,
        "timings": timings,
        "ratio": ratio,
        "goal": STREAMING_GOAL,
        "met": ratio <= STREAMING_GOAL,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="nanogpt,gpt2")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument(
        "--no-cache-tokens",
        type=int,
        default=None,
        help="new tokens of the no-cache variant (default: all on nanogpt, 32 on gpt2)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny model and lengths, seconds")
    parser.add_argument(
        "--streaming",
        action="store_true",
        help="measure stream_text against one generate call instead (512 new tokens)",
    )
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    if args.streaming:
        keras.utils.set_random_seed(0)
        result = {
            **machine(),
            **streaming(48 if args.smoke else 512, 1 if args.smoke else 5, args.smoke),
        }
        times = {name: t["median"] for name, t in result["timings"].items()}
        print(
            f"{result['new_tokens']} new tokens: one generate call {times['non_streamed']:.3f} s, "
            f"streamed {times['streamed']:.3f} s, ratio {result['ratio']:.2f} (goal <= "
            f"{STREAMING_GOAL}: {'met' if result['met'] else 'missed'}); same text: "
            f"{result['same_text']}",
            flush=True,
        )
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=2)
        return result
    if args.smoke:
        args.models, args.batches, args.prompt, args.new_tokens, args.repeats = (
            "smoke",
            "1,2",
            4,
            8,
            1,
        )
    keras.utils.set_random_seed(0)
    rows = []
    for name in args.models.split(","):
        config = MODELS[name]
        for batch in map(int, args.batches.split(",")):
            no_cache_tokens = args.no_cache_tokens or (32 if name == "gpt2" else args.new_tokens)
            runs = variants(config, batch, args.prompt, args.new_tokens, no_cache_tokens)
            medians = measure(runs, args.repeats)
            for variant, seconds in medians.items():
                tokens = runs[variant][1]
                rows.append(
                    dict(
                        model=name,
                        batch=batch,
                        prompt=args.prompt,
                        new_tokens=tokens,
                        variant=variant,
                        seconds=seconds,
                        tokens_per_second=batch * tokens / seconds,
                    )
                )
                print(
                    f"{name:8s} batch {batch:3d} {variant:15s} {tokens:4d} new tokens "
                    f"{seconds:8.3f} s  {rows[-1]['tokens_per_second']:9.1f} tokens/s",
                    flush=True,
                )
            hub = next(r for r in rows[-3:] if r["variant"] == "keras_hub")
            for row in rows[-3:]:
                row["ratio_vs_keras_hub"] = row["tokens_per_second"] / hub["tokens_per_second"]
            keras.backend.clear_session()
    result = {**machine(), "repeats": args.repeats, "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
