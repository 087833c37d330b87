"""Generate text with a trained GPT: greedy, sampled, top-k / top-p, batched, streamed.

`GPTModel.generate` decodes with a key/value cache in one XLA-compiled loop; `stream_text` yields
text while it is produced (what `tf-bigmodels generate` prints).

Run:  python examples/generate.py --run example_outputs/train_gpt/gpt
      python examples/generate.py            (trains a small GPT first if no run is given)
      python examples/generate.py --smoke    (seconds)
"""

import argparse
import os
import pathlib

# ---------------------------------------------------------------- settings
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--smoke", action="store_true", help="a fast run for CI")
parser.add_argument("--out", default="example_outputs/generate", help="directory for samples.txt")
parser.add_argument("--run", help="GPT run directory (default: train a small one here)")
parser.add_argument("--prompt", default="ROMEO:")
args = parser.parse_args()

# TensorFlow loads only now, so that --help answers at once, without it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from tf_bigmodels.export import stream_text  # noqa: E402
from tf_bigmodels.tokenizers import ByteTokenizer  # noqa: E402
from tf_bigmodels.training import RunConfig, train  # noqa: E402

out = pathlib.Path(args.out)
out.mkdir(parents=True, exist_ok=True)
STREAMED_TOKENS = 40 if args.smoke else 400

# ---------------------------------------------------------------- a trained GPT
run_dir = pathlib.Path(args.run) if args.run else None
if run_dir is None:
    print("No --run given: training a small GPT first.")
    config = (
        RunConfig(
            model="gpt",
            preset="gpt-test",
            steps=10,
            eval_every=10,
            eval_steps=2,
            out=str(out),
            samples=0,
            export=False,
            verbose=2,
        )
        if args.smoke
        else RunConfig(
            model="gpt",
            preset="gpt-nano",
            steps=1000,
            eval_every=250,
            out=str(out),
            samples=0,
            export=False,
            verbose=2,
        )
    )
    run_dir = train(config).run_dir
model = keras.saving.load_model(run_dir / "model.keras")  # a GPTModel
tokenizer = ByteTokenizer()  # bytes + end-of-text + padding
# One `generate` call fits prompt and continuation in the context (`max_length` tokens);
# `stream_text` below slides the window to go further.
NEW_TOKENS = model.max_length // 2
samples = []


def show(title, ids):
    texts = [t.decode("utf-8") for t in tokenizer.detokenize(ids).numpy()]
    for text in texts:
        print(f"\n[{title}]\n{text}")
        samples.append(f"[{title}]\n{text}\n")


# ---------------------------------------------------------------- greedy and sampled decoding
# temperature=0 always takes the most likely byte (repetitive on a small model); sampling with a
# temperature below 1 and a top-k or top-p filter reads better. The same seed gives the same text.
prompt = tokenizer.tokenize([args.prompt])
show("greedy", model.generate(prompt, NEW_TOKENS, temperature=0.0))
show(
    "temperature 0.8, top-k 40",
    model.generate(prompt, NEW_TOKENS, temperature=0.8, top_k=40, seed=1),
)
show(
    "temperature 0.8, top-p 0.9",
    model.generate(prompt, NEW_TOKENS, temperature=0.8, top_p=0.9, seed=1),
)
again = model.generate(prompt, NEW_TOKENS, temperature=0.8, top_k=40, seed=1)
first = model.generate(prompt, NEW_TOKENS, temperature=0.8, top_k=40, seed=1)
print(f"\nsame seed, same text: {bool((again.to_tensor() == first.to_tensor()).numpy().all())}")

# ---------------------------------------------------------------- a batch of different prompts
# Prompts of different lengths go in one batch (left-padded inside `generate`); each row stops
# at the end-of-text token when `end_id` is given.
prompts = tokenizer.tokenize(["JULIET:", "First Citizen:\nWe are", "KING"])
show(
    "batch",
    model.generate(
        prompts,
        NEW_TOKENS,
        temperature=0.8,
        top_k=40,
        seed=2,
        end_id=tokenizer.end_id,
        pad_id=tokenizer.pad_id,
    ),
)

# ---------------------------------------------------------------- streaming
# stream_text yields pieces as they are decoded and slides the context window, so it can go on
# past the model's max_length.
print(f"\n[streamed, {STREAMED_TOKENS} tokens]\n{args.prompt}", end="", flush=True)
pieces = []
for piece in stream_text(model, args.prompt, STREAMED_TOKENS, temperature=0.8, top_k=40, seed=3):
    print(piece, end="", flush=True)
    pieces.append(piece)
samples.append(f"[streamed]\n{args.prompt}{''.join(pieces)}\n")

(out / "samples.txt").write_text("\n".join(samples), encoding="utf-8")
print(f"\n\nGENERATE DONE: {len(samples)} samples in {out / 'samples.txt'}")
