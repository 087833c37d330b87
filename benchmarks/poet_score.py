"""Scores trained Tang-poetry runs: the format score over at least N written lines, and bits/char.

For each run directory (trained by `tf-bigmodels train gpt --corpus tangshi ...`), the run's
model writes a poem for held-out poems' `title\\nauthor\\n` prompts, taken in order, 50 at a
time, until the poems hold at least `--lines` body lines (a few hundred lines give a score that
moves by several points from one set of prompts to the next; a thousand steady it). The held-out
poems are those `benchmarks/poetry.py` holds out, which are the validation poems of a run on
`--corpus tangshi` (both shuffle the corpus with seed 0 and hold out its last tenth).

Reported per run: steps trained, the last logged validation bits per character (the run's own
evaluation, `val_bits_per_char` in `metrics.jsonl`), the format score (格式得分,
`tf_bigmodels.data.poem_format_score`: the share of body lines with the length and punctuation of
a regulated couplet; tones and rhyme are not checked), lines scored and lines per poem; then the
median and range over the runs, next to the score of the held-out real poems.

Sampling is the benchmark's: temperature 0.8, top-k 40, at most 200 new tokens
(`--max-new-tokens`), stop at end of text, seed 0 (`--seed`); a last line cut off by the token
limit is not scored. `--max-poems` bounds the prompts used when the lines are not reached.

Usage:
    python benchmarks/poet_score.py runs/poet-quick [runs/poet-s1 ...] [--lines 1000] [--out f.json]
"""

import argparse
import json
import pathlib
import random
import statistics
import sys

from _timing import machine
from poetry import SETTINGS, held_out_poems, prompt_of, write_poems

from tf_bigmodels.data import load_corpus, poem_format_score, split_poem
from tf_bigmodels.run_directory import RunDirectory
from tf_bigmodels.training.loading import load_run_model

PROMPTS_PER_CALL = 50


def score_run(run_dir, held_out, lines, sampling):
    """The run's format score over at least `lines` body lines, with its logged bits/char."""
    model, tokenizer, _ = load_run_model(run_dir)  # the newest checkpoint: the last step
    written, counted, used = [], 0, 0
    while counted < lines and used < len(held_out):
        prompts = [prompt_of(p) for p in held_out[used : used + PROMPTS_PER_CALL]]
        used += len(prompts)
        poems = write_poems(model, tokenizer, prompts, sampling)
        written += poems
        counted += sum(len(split_poem(p).lines) for p in poems)
        # A few minutes per run on a CPU: each batch of prompts says how far the run is.
        print(
            f"{run_dir}: {counted:,} of {lines:,} lines, {used} poems", file=sys.stderr, flush=True
        )
    log = RunDirectory(run_dir).metrics.read_text(encoding="utf-8").splitlines()
    evaluations = [m for m in map(json.loads, log) if "val_bits_per_char" in m]
    last = evaluations[-1] if evaluations else {}
    return {
        "run": str(run_dir),
        "steps": last.get("step"),
        "val_bits_per_char": last.get("val_bits_per_char"),
        "poem_format_score": poem_format_score(written),
        "lines_scored": counted,
        "poems_written": len(written),
        "lines_per_poem": counted / len(written),
        "sample": written[0],
        "poems": written,  # every written poem, to see which lines failed the format
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories trained on --corpus tangshi")
    parser.add_argument("--lines", type=int, default=1000, help="least body lines to score")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="tokens per poem")
    parser.add_argument(
        "--temperature",
        type=float,
        default=SETTINGS["sampling"]["temperature"],
        help="sampling temperature (default: the benchmark's)",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=SETTINGS["sampling"]["top_k"],
        help="sample among the k likeliest tokens (default: the benchmark's)",
    )
    parser.add_argument(
        "--max-poems", type=int, help="most held-out prompts to use (default: all 5,542)"
    )
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    if args.lines < 1:
        parser.error(f"--lines must be at least 1, got {args.lines}")

    poems = load_corpus("tangshi")
    random.Random(SETTINGS["seed"]).shuffle(poems)
    _, held_out = held_out_poems(poems)
    prompted = held_out[: args.max_poems]
    sampling = dict(
        SETTINGS["sampling"],
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
    )
    rows = [score_run(pathlib.Path(run), prompted, args.lines, sampling) for run in args.runs]

    print("| run | steps | val bits/char | format score | lines scored | lines/poem |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        bits = "" if r["val_bits_per_char"] is None else f"{r['val_bits_per_char']:.3f}"
        print(
            f"| {r['run']} | {r['steps']} | {bits} | {r['poem_format_score']:.3f} "
            f"| {r['lines_scored']:,} | {r['lines_per_poem']:.1f} |"
        )
    scores = [r["poem_format_score"] for r in rows]
    summary = {
        "median": statistics.median(scores),
        "worst": min(scores),
        "best": max(scores),
        "held_out_real_poems": poem_format_score(held_out),
    }
    print(
        f"Format score over {len(rows)} run(s): median {summary['median']:.3f}, range "
        f"{summary['worst']:.3f}–{summary['best']:.3f}; held-out real poems "
        f"{summary['held_out_real_poems']:.3f}."
    )
    print(f"A poem of the first run (seed {args.seed}):\n{rows[0]['sample']}")
    if args.out:
        result = {
            "command": "python benchmarks/poet_score.py "
            + " ".join(args.runs)
            + f" --lines {args.lines} --seed {args.seed} --max-new-tokens {args.max_new_tokens}"
            + f" --temperature {args.temperature} --top-k {args.top_k}"
            + (f" --max-poems {args.max_poems}" if args.max_poems else ""),
            "machine": machine(),
            "sampling": sampling,
            "rows": rows,
            "summary": summary,
        }
        pathlib.Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
