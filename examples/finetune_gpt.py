"""Fine-tune a Tang-poetry GPT on one poet: full fine-tuning against LoRA, in one table.

1. The base model: `--base` names a run directory (its `model.keras` and `tokenizer/`) or a
   `.keras` file (with a `tokenizer/` beside it; without `tokenizer/sentencepiece.model` the
   byte tokenizer is used). Without
   `--base`, a small GPT is trained here on 全唐诗 *without* the chosen poet, so that the poet's
   poems are new to it (a `--base` trained on all of 全唐诗 has already seen most of them).
2. The poet's poems (`load_corpus("tangshi")`, author line `POET`, by default 李白: 1,000 or so)
   are shuffled with a fixed seed; `lm_dataset` then holds out the last 10% of their text as the
   validation slice, and `lm_split_counts` counts its tokens and characters.
3. Two copies of the base continue on the other 90% for the same steps: one with every weight
   trainable, one with `enable_lora(LORA_RANK, target="all")` (adapters on the attention and
   feed-forward projections, everything else frozen; a larger learning rate, as adapters start
   at zero).
4. The table: validation bits per character before and after (a loss that does not depend on
   the tokenizer), parameters trained, wall time of the fine-tuning (after its first step, which
   compiles); then a poem from each
   model, for the same held-out title, with the same seed.

Run:  python examples/finetune_gpt.py                  (trains its base first: the longest part)
      python examples/finetune_gpt.py --base runs/poet  (any GPT run or .keras file)
      python examples/finetune_gpt.py --smoke           (seconds: tiny models, a few steps)
"""

import argparse
import os
import pathlib
import time


def at_least(low):
    """An argparse type: an int >= `low` (anything else is a one-line usage error)."""

    def parse(text):
        if not text.lstrip("-").isdigit() or int(text) < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return int(text)

    return parse


# ---------------------------------------------------------------- settings
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--smoke", action="store_true", help="a fast run for CI")
parser.add_argument("--out", default="example_outputs/finetune_gpt", help="output directory")
parser.add_argument("--base", help="GPT run directory or .keras file (default: train one here)")
parser.add_argument("--poet", default="李白", help="author line of the poems to fine-tune on")
parser.add_argument(
    "--steps", type=at_least(2), help="fine-tuning steps of each method (default 300)"
)
parser.add_argument(
    "--base-steps", type=at_least(1), help="training steps of the base (default 3000)"
)
parser.add_argument("--lora-rank", type=at_least(1), default=8, help="rank of the LoRA adapters")
args = parser.parse_args()

# TensorFlow loads only now, so that --help answers at once, without it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tf_bigmodels.data import (  # noqa: E402
    bits_per_character,
    lm_dataset,
    lm_split_counts,
    load_corpus,
    split_poem,
)
from tf_bigmodels.models import GPTModel  # noqa: E402
from tf_bigmodels.tokenizers import ByteTokenizer, SentencePieceTokenizer  # noqa: E402
from tf_bigmodels.training import build_optimizer  # noqa: E402

out = pathlib.Path(args.out)
out.mkdir(parents=True, exist_ok=True)

POET = args.poet
SEED = 0
SEQ_LEN = 32 if args.smoke else 128
BATCH_SIZE = 4 if args.smoke else 16
# The base trained here (no --base): a 4-layer GPT on SentencePiece pieces.
BASE_POEMS = 1500 if args.smoke else None  # None: every poem but the poet's
BASE_MODEL = (
    dict(d_model=32, num_heads=2, dff=64, num_layers=1, rate=0.0)
    if args.smoke
    else dict(d_model=128, num_heads=4, dff=512, num_layers=4, rate=0.1)
)
BASE_VOCAB_SIZE = 5000 if args.smoke else 8000  # room for every character kept
BASE_STEPS = args.base_steps or (20 if args.smoke else 3000)
BASE_LR = 2e-3
STEPS = args.steps or (6 if args.smoke else 300)
FULL_LR = 3e-4
LORA_RANK = args.lora_rank
LORA_LR = 2e-3
SAMPLING = dict(max_new_tokens=24 if args.smoke else 120, temperature=0.8, top_k=40, seed=SEED)
JIT = not args.smoke  # XLA compilation would take most of a smoke run
keras.utils.set_random_seed(SEED)

# ---------------------------------------------------------------- the poet's poems
poems = load_corpus("tangshi")
poet_poems = [p for p in poems if split_poem(p).author == POET]
if not poet_poems:
    parser.error(f"--poet {POET!r}: no poem of 全唐诗 has that author line")
poet_poems = [poet_poems[i] for i in np.random.default_rng(SEED).permutation(len(poet_poems))]
if args.smoke:
    poet_poems = poet_poems[:120]
held_out = split_poem(poet_poems[-1])  # the last poem is in lm_dataset's validation slice
print(f"{len(poet_poems)} poems by {POET}; the last 10% of their text is held out")


def compile_for(model, learning_rate, steps):
    model.compile(
        optimizer=build_optimizer(
            model,
            learning_rate=learning_rate,
            total_steps=steps,
            warmup_steps=max(1, steps // 10),
            beta_2=0.99,
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=JIT,
    )


# ---------------------------------------------------------------- 1. the base model
if args.base:
    base_file = pathlib.Path(args.base)
    base_file = base_file if base_file.suffix == ".keras" else base_file / "model.keras"
    tokenizer_dir = base_file.parent / "tokenizer"
    tokenizer = (
        SentencePieceTokenizer.load(tokenizer_dir)
        if (tokenizer_dir / "sentencepiece.model").is_file()
        else ByteTokenizer()
    )
    print(f"Base model: {base_file}")
else:
    others = [p for p in poems if split_poem(p).author != POET][:BASE_POEMS]
    print(f"Training a base GPT on {len(others)} poems by other poets ({BASE_STEPS} steps)")
    start = time.perf_counter()
    tokenizer = SentencePieceTokenizer.train(others, BASE_VOCAB_SIZE)
    base = GPTModel(tokenizer.vocab_size, **BASE_MODEL, max_length=SEQ_LEN)
    base(np.zeros((1, SEQ_LEN), "int32"))
    compile_for(base, BASE_LR, BASE_STEPS)
    reports = max(1, BASE_STEPS // 500)
    base.fit(
        lm_dataset(others, tokenizer, SEQ_LEN, BATCH_SIZE, seed=SEED, repeat=True),
        steps_per_epoch=BASE_STEPS // reports,
        epochs=reports,
        shuffle=False,  # the dataset shuffles itself
        verbose=2,
    )
    base_file = out / "base" / "model.keras"
    base_file.parent.mkdir(exist_ok=True)
    base.save(base_file)
    tokenizer.save(base_file.parent / "tokenizer")
    print(f"Base trained in {time.perf_counter() - start:.0f} s, saved to {base_file.parent}")

train_data = lm_dataset(poet_poems, tokenizer, SEQ_LEN, BATCH_SIZE, seed=SEED, repeat=True)
val_data = lm_dataset(poet_poems, tokenizer, SEQ_LEN, BATCH_SIZE, split="val")
val_batches = sum(1 for _ in val_data)  # told to evaluate, which cannot see the end coming
val_tokens, val_characters = lm_split_counts(poet_poems, tokenizer, split="val")


def validation_bpc(model):
    """Bits per character on the poet's held-out slice."""
    loss = model.evaluate(val_data, steps=val_batches, verbose=0)
    return bits_per_character(loss, val_tokens, val_characters)


def sample(model):
    prompt = f"{held_out.title}\n{POET}\n"
    ids = tokenizer.tokenize([prompt]).to_list()
    new = model.generate(ids, end_id=tokenizer.end_id, **SAMPLING)
    return tokenizer.detokenize(new).numpy()[0].decode("utf-8")


# ---------------------------------------------------------------- 2. two fine-tunings
rows = {}
for method in ("full fine-tuning", f"LoRA rank {LORA_RANK}, attention + feed-forward"):
    keras.utils.set_random_seed(SEED)
    model = keras.saving.load_model(base_file)  # an identical copy of the base each time
    lora = method.startswith("LoRA")
    if lora:
        model.enable_lora(LORA_RANK, target="all")
    compile_for(model, LORA_LR if lora else FULL_LR, STEPS)
    before = validation_bpc(model)
    # The first step traces and compiles the training step; the clock starts after it.
    model.fit(train_data, steps_per_epoch=1, epochs=1, shuffle=False, verbose=0)
    start = time.perf_counter()
    model.fit(train_data, steps_per_epoch=STEPS - 1, epochs=1, shuffle=False, verbose=2)
    seconds = time.perf_counter() - start
    rows[method] = dict(
        before=before,
        after=validation_bpc(model),
        parameters=int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        seconds=seconds,
        sample=sample(model),
    )

# ---------------------------------------------------------------- 3. the table and samples
print(f"\n{POET}: validation bits per character ({val_characters} held-out characters)")
print("| method | val bits/char before | after | parameters trained | wall time (s) |")
print("|---|---|---|---|---|")
for method, r in rows.items():
    print(
        f"| {method} | {r['before']:.3f} | {r['after']:.3f} | {r['parameters']:,} "
        f"| {r['seconds']:.0f} |"
    )
for method, r in rows.items():
    print(f"\n[{method}] (temperature 0.8, top-k 40, seed {SEED})\n{r['sample']}")
print("\nFINETUNE_GPT DONE")
