"""Examples per second of the GPT and BERT input pipelines on the bundled corpus.

Measures one full pass (an epoch) over each pipeline, after a warm-up batch, several times, and
reports the median. Settings are the small models' defaults: GPT windows of 64 bytes in batches of
12 (byte tokenizer); BERT sequences of 128 wordpieces in batches of 32 (vocabulary of about 8,000
learned from the corpus).

Usage:
    python benchmarks/pipelines.py [--repeats 5] [--out results.json] [--smoke]
"""

import argparse
import json
import platform
import statistics
import time

import tensorflow as tf

from tf_bigmodels.data import bert_pretraining_dataset, lm_dataset, load_corpus
from tf_bigmodels.tokenizers import ByteTokenizer, WordPieceTokenizer

GPT = {"seq_len": 64, "batch_size": 12}
BERT = {"seq_len": 128, "batch_size": 32}
BERT_VOCAB_SIZE = 8000


def examples_per_second(dataset, batch_size, max_batches):
    """Iterates `dataset` (up to `max_batches` after one warm-up batch); returns examples/s."""
    iterator = iter(dataset)
    next(iterator)
    start, batches = time.perf_counter(), 0
    for _ in iterator:
        batches += 1
        if batches == max_batches:
            break
    return batches * batch_size / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="passes per pipeline (median)")
    parser.add_argument("--out", help="write the results as JSON to this path")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a few batches on a tenth of the corpus, to check that it runs",
    )
    args = parser.parse_args()

    documents = load_corpus("shakespeare")
    if args.smoke:
        documents, args.repeats = documents[:10], 1
    max_batches = 20 if args.smoke else None

    start = time.perf_counter()
    word_piece = WordPieceTokenizer.train(documents, BERT_VOCAB_SIZE, verbose=False, lower_thresh=2)
    train_seconds = time.perf_counter() - start
    pipelines = {
        "gpt": (lambda: lm_dataset(documents, ByteTokenizer(), **GPT), GPT),
        "bert": (lambda: bert_pretraining_dataset(documents, word_piece, **BERT), BERT),
    }
    results = {
        "tensorflow": tf.__version__,
        "machine": platform.processor() or platform.machine(),
        "repeats": args.repeats,
        "smoke": args.smoke,
        "word_piece": {
            "vocab_size": word_piece.vocab_size,
            "train_seconds": round(train_seconds, 2),
        },
    }
    print(f"WordPiece vocabulary: {word_piece.vocab_size} tokens, trained in {train_seconds:.1f} s")
    print(f"{'pipeline':<8} {'seq_len':>7} {'batch':>5} {'build s':>8} {'examples/s':>11}")
    for name, (build, settings) in pipelines.items():
        start = time.perf_counter()
        dataset = build()
        build_seconds = time.perf_counter() - start
        rates = [
            examples_per_second(dataset, settings["batch_size"], max_batches)
            for _ in range(args.repeats)
        ]
        results[name] = {
            **settings,
            "build_seconds": round(build_seconds, 2),
            "examples_per_second": [round(r) for r in rates],
            "median_examples_per_second": round(statistics.median(rates)),
        }
        print(
            f"{name:<8} {settings['seq_len']:>7} {settings['batch_size']:>5} "
            f"{build_seconds:>8.2f} {statistics.median(rates):>11,.0f}"
        )
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
