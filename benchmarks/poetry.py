"""Tang poetry: a byte-level and a SentencePiece GPT, same model, same wall-clock budget.

Both GPTs train on 全唐诗 (`load_corpus("tangshi")`) for the same number of minutes, then each
writes a poem for each of 100 held-out poems' title and author lines. The table gives, per
tokenizer: optimizer steps done, validation loss per token and in bits per character (the loss
that does not depend on the tokenizer), and the format score (格式得分: the fraction of generated
body lines with the length and punctuation of a regulated couplet,
`tf_bigmodels.data.poem_format_score`; tones and rhyme are not checked), next to the score of
the held-out real poems themselves.

Fixed settings (all in `SETTINGS` below):
- data: the poems are shuffled with `seed` before `lm_dataset` splits them (first 90% of the
  bytes train, the rest validation), so validation is a random tenth of the poems. The source
  file is in a fixed order that ends with 词 and anonymous songs; a split in file order would
  hold out only those.
- model: `GPTModel(d_model=128, num_heads=4, dff=512, num_layers=4, max_length=seq_len=256)` for
  both tokenizers (only the vocabulary differs: 258 bytes or 8,000 pieces); batch 8 windows of
  256 tokens; AdamW (weight decay 0.1, beta_2 0.99, gradient clipping 1.0), learning rate 2e-3
  with 100 warm-up steps, then cosine decay to 10% over the time budget (the budget, not a step
  count, sets the schedule, so both runs get a whole schedule). The clock starts after the first
  step (tracing and XLA compilation excluded) and counts training only.
- SentencePiece: 8,000 pieces learned from the training poems (its training time is reported,
  not counted in the budget).
- sampling: the prompt is a held-out poem's `title\\nauthor\\n`; temperature 0.8, top-k 40,
  seed 0, at most 200 new tokens, stop at end of text. 200 tokens are about 66 characters for
  the byte model and about 180 for SentencePiece: the same context costs the byte model 3
  tokens per Chinese character. A last line cut off by that limit (no newline after it) is not
  scored.

Usage:
    python benchmarks/poetry.py [--minutes 15] [--vocab-size 8000] [--tokenizers byte,sentencepiece]
                                [--out results.json]
    python benchmarks/poetry.py --smoke     # seconds: tiny model, 600 poems, 10 prompts
"""

import argparse
import json
import math
import pathlib
import random
import time
import warnings

import keras
import tensorflow as tf
from _timing import machine

from tf_bigmodels.data import (
    bits_per_character,
    lm_dataset,
    lm_split_counts,
    load_corpus,
    poem_format_score,
    split_poem,
)
from tf_bigmodels.data.lm_dataset import TRAIN_FRACTION
from tf_bigmodels.models import GPTModel
from tf_bigmodels.tokenizers import ByteTokenizer, SentencePieceTokenizer

SETTINGS = dict(
    seed=0,
    poems=None,  # all 56,053
    model=dict(d_model=128, num_heads=4, dff=512, num_layers=4, rate=0.0),
    seq_len=256,
    batch_size=8,
    learning_rate=2e-3,
    warmup_steps=100,
    min_lr_ratio=0.1,
    sentencepiece_vocab_size=8000,
    eval_batches=None,  # the whole validation split
    prompts=100,
    sampling=dict(max_new_tokens=200, temperature=0.8, top_k=40, seed=0),
    jit_compile=True,
)
SMOKE = dict(
    SETTINGS,
    poems=600,
    model=dict(d_model=32, num_heads=2, dff=64, num_layers=1, rate=0.0),
    seq_len=64,
    batch_size=4,
    warmup_steps=2,
    sentencepiece_vocab_size=5000,
    eval_batches=2,
    prompts=10,
    sampling=dict(max_new_tokens=32, temperature=0.8, top_k=40, seed=0),
    jit_compile=False,  # XLA compilation would take most of a smoke run
)


class TimeBudget(keras.callbacks.Callback):
    """Stops training after `seconds` and sets the learning rate by the share of them used.

    The clock starts when the first step ends, so tracing and XLA compilation (which differ
    with the vocabulary) are not part of the budget. Linear warm-up over the first
    `warmup_steps` steps, then cosine decay from `peak` to `peak * min_ratio` as the elapsed
    time goes from 0 to `seconds`.
    """

    def __init__(self, seconds, peak, warmup_steps, min_ratio):
        super().__init__()
        self.seconds, self.peak = seconds, peak
        self.warmup_steps, self.min_ratio = warmup_steps, min_ratio
        self.steps, self.start, self.seconds_used = 0, None, 0.0

    def elapsed(self):
        return 0.0 if self.start is None else time.perf_counter() - self.start

    def on_train_end(self, logs=None):
        self.seconds_used = self.elapsed()

    def on_train_batch_begin(self, batch, logs=None):
        progress = min(self.elapsed() / self.seconds, 1.0)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        rate = self.peak * (self.min_ratio + (1 - self.min_ratio) * cosine)
        rate *= min(1.0, (self.steps + 1) / self.warmup_steps)
        self.model.optimizer.learning_rate.assign(rate)

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.start is None:
            self.start = time.perf_counter()
        elif self.elapsed() >= self.seconds:
            self.model.stop_training = True


def held_out_poems(poems):
    """The poems that lie wholly in `lm_dataset`'s validation split (they start after 90%)."""
    sizes = [len(p.encode("utf-8")) + 1 for p in poems]  # each line gets its "\n" back
    split_at = int(TRAIN_FRACTION * sum(sizes))
    start, held_out, training = 0, [], []
    for poem, size in zip(poems, sizes):
        (held_out if start >= split_at else training).append(poem)
        start += size
    return training, held_out


def prompt_of(poem):
    parts = split_poem(poem)
    return f"{parts.title}\n{parts.author}\n"


def shown_sample(poem):
    """A written poem as printed: with a note when the model wrote no body line after the prompt.

    >>> shown_sample("静夜思\\n李白\\n")
    '静夜思\\n李白\\n(no poem: the model wrote no complete line after the title and author)'
    """
    if split_poem(poem).lines:
        return poem
    note = "(no poem: the model wrote no complete line after the title and author)"
    return poem + ("" if poem.endswith("\n") else "\n") + note


def write_poems(model, tokenizer, prompts, sampling):
    """Prompt + completion per prompt; a last line cut off by the token limit is dropped."""
    prompt_ids = tokenizer.tokenize(prompts)
    rows = model.generate(
        prompt_ids, end_id=tokenizer.end_id, pad_id=tokenizer.pad_id, **sampling
    ).to_list()
    poems = []
    for prompt, ids, row in zip(prompts, prompt_ids.to_list(), rows):
        kept = min(len(ids), model.max_length - sampling["max_new_tokens"])  # left truncation
        new = row[kept:]
        text = tokenizer.detokenize([new]).numpy()[0].decode("utf-8")
        if not (new and new[-1] == tokenizer.end_id):  # stopped by the limit, mid-poem
            text = text[: text.rfind("\n") + 1]
        poems.append(prompt + text)
    return poems


def run(name, tokenizer, poems, prompts, settings, seconds):
    keras.utils.set_random_seed(settings["seed"])
    seq_len, batch = settings["seq_len"], settings["batch_size"]
    model = GPTModel(tokenizer.vocab_size, **settings["model"], max_length=seq_len)
    model(tf.zeros((1, 1), tf.int32))
    model.compile(
        optimizer=keras.optimizers.AdamW(
            settings["learning_rate"], weight_decay=0.1, beta_2=0.99, clipnorm=1.0
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=settings["jit_compile"],
    )
    train = lm_dataset(
        poems, tokenizer, seq_len, batch, split="train", seed=settings["seed"], repeat=True
    )
    budget = TimeBudget(
        seconds, settings["learning_rate"], settings["warmup_steps"], settings["min_lr_ratio"]
    )
    model.fit(train, epochs=1, steps_per_epoch=10**9, callbacks=[budget], shuffle=False, verbose=0)

    val = lm_dataset(poems, tokenizer, seq_len, batch, split="val")
    if settings["eval_batches"]:
        val = val.take(settings["eval_batches"])
    with warnings.catch_warnings():
        # Keras warns whenever a dataset of unknown length ends, as this one must.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        val_loss = float(model.evaluate(val, verbose=0))
    tokens, characters = lm_split_counts(poems, tokenizer, "val")
    written = write_poems(
        model, tokenizer, prompts, dict(settings["sampling"], jit_compile=settings["jit_compile"])
    )
    return {
        "tokenizer": name,
        "vocab_size": tokenizer.vocab_size,
        "parameters": model.count_params(),
        "steps": budget.steps,
        "tokens_seen": budget.steps * batch * seq_len,
        "val_loss_per_token": val_loss,
        "val_tokens_per_character": tokens / characters,
        "bits_per_character": bits_per_character(val_loss, tokens, characters),
        "poem_format_score": poem_format_score(written),
        "lines_per_poem": sum(len(split_poem(p).lines) for p in written) / len(written),
        "train_seconds": budget.seconds_used,
        "samples": written[:3],
        "poems": written,  # every written poem, to see which lines failed the format
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget per model")
    parser.add_argument("--smoke", action="store_true", help="tiny settings, seconds per model")
    parser.add_argument("--vocab-size", type=int, help="SentencePiece pieces (default 8000)")
    parser.add_argument(
        "--tokenizers", default="byte,sentencepiece", help="comma-separated subset to train"
    )
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    names = args.tokenizers.split(",")
    if set(names) - {"byte", "sentencepiece"} or not names:
        parser.error(f"--tokenizers {args.tokenizers!r}: choose from byte, sentencepiece")
    settings = SMOKE if args.smoke else SETTINGS
    if args.vocab_size:
        settings = dict(settings, sentencepiece_vocab_size=args.vocab_size)
    seconds = 3.0 if args.smoke else args.minutes * 60

    poems = load_corpus("tangshi")
    random.Random(settings["seed"]).shuffle(poems)
    poems = poems[: settings["poems"]]
    training, held_out = held_out_poems(poems)
    prompts = [prompt_of(p) for p in held_out[: settings["prompts"]]]

    start = time.perf_counter()
    sentence_piece = SentencePieceTokenizer.train(training, settings["sentencepiece_vocab_size"])
    sentence_piece_seconds = time.perf_counter() - start

    rows = [
        run(name, tokenizer, poems, prompts, settings, seconds)
        for name, tokenizer in (("byte", ByteTokenizer()), ("sentencepiece", sentence_piece))
        if name in names
    ]
    real = {
        "prompted": poem_format_score(held_out[: settings["prompts"]]),
        "all_held_out": poem_format_score(held_out),
    }

    print(
        f"Budget {seconds / 60:g} min of training per model; {len(poems)} poems, "
        f"{len(held_out)} held out; SentencePiece learned in {sentence_piece_seconds:.0f} s."
    )
    print(
        "| tokenizer | vocab | steps | tokens seen | val loss/token | tokens/char | bits/char "
        "| format score | lines/poem | train wall time |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['tokenizer']} | {r['vocab_size']:,} | {r['steps']:,} | {r['tokens_seen']:,} "
            f"| {r['val_loss_per_token']:.3f} | {r['val_tokens_per_character']:.2f} "
            f"| {r['bits_per_character']:.3f} | {r['poem_format_score']:.3f} "
            f"| {r['lines_per_poem']:.1f} | {r['train_seconds']:.0f} s |"
        )
    print(
        f"Held-out real poems: {real['prompted']:.3f} (the {len(prompts)} prompted), "
        f"{real['all_held_out']:.3f} (all {len(held_out)})."
    )
    sampling = settings["sampling"]
    print(
        f"Samples (temperature {sampling['temperature']}, top-k {sampling['top_k']}, "
        f"seed {sampling['seed']}):"
    )
    for r in rows:
        print(f"--- {r['tokenizer']} ---\n{shown_sample(r['samples'][0])}")
    if args.out:
        result = {
            "command": "python benchmarks/poetry.py"
            + (" --smoke" if args.smoke else f" --minutes {args.minutes:g}")
            + (f" --vocab-size {args.vocab_size}" if args.vocab_size else "")
            + (f" --tokenizers {args.tokenizers}" if names != ["byte", "sentencepiece"] else ""),
            "machine": machine(),
            "settings": settings,
            "budget_seconds": seconds,
            "sentencepiece_train_seconds": sentence_piece_seconds,
            "held_out_real_poem_score": real,
            "rows": rows,
        }
        pathlib.Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
