"""The Chinese sentiment comparison over several seeds: per-seed scores, median and range, verdict.

Each argument is the output directory of one `examples/finetune_classifier.py --seed S --out DIR`
run, which holds its `results.json`: test accuracy and macro-F1 of the majority class, the
character n-gram logistic regression and BERT, all on the same test split (the split's seed is
fixed; `--seed` changes weights, masks and shuffling, the baseline's shuffling included).

The goal is judged by one rule: met when BERT's median test accuracy over the seeds is at least
the n-gram baseline's median over the same seeds.

Usage:
    python examples/finetune_classifier.py --general-steps 5000 --seed 0 --out runs/sentiment-s0
    (the same with --seed 1 and --seed 2)
    python benchmarks/sentiment_seeds.py runs/sentiment-s0 runs/sentiment-s1 runs/sentiment-s2
"""

import argparse
import json
import pathlib
import statistics

BASELINE = "char 1-2-gram logistic regression"


def _bert_name(results):
    names = [name for name in results if name.startswith("BERT")]
    if len(names) != 1:
        raise ValueError(f"a run's results must hold one BERT row, got {names}")
    return names[0]


def summarize(runs):
    """Per-seed scores of every model, their median and range, and the verdict.

    Args:
        runs: list of dict. Each run's `results.json`, as `finetune_classifier.py` writes it.

    Returns:
        dict: `seeds`, `models` ({name: {"accuracy": [...], "macro_f1": [...]}} in seed order,
        BERT under its own row name), `median` and `range` of each, `bert` (BERT's row name) and
        `goal_met`.

    Example:
        >>> def run(seed, bert, ngram):
        ...     return {"split_seed": 0, "seed": seed, "results": {
        ...         "BERT, fully fine-tuned": {"accuracy": bert, "macro_f1": bert},
        ...         BASELINE: {"accuracy": ngram, "macro_f1": ngram}}}
        >>> s = summarize([run(0, 0.84, 0.85), run(1, 0.86, 0.85), run(2, 0.85, 0.84)])
        >>> s["median"]["BERT, fully fine-tuned"]["accuracy"], s["goal_met"]
        (0.85, True)
    """
    if not runs:
        raise ValueError("runs must hold at least one run's results, got none")
    seeds = [run["seed"] for run in runs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"each run must have its own seed, got seeds {seeds}")
    split_seeds = {run["split_seed"] for run in runs}
    if len(split_seeds) != 1:
        raise ValueError(
            f"the runs must share one test split, got split seeds {sorted(split_seeds)}"
        )
    bert = _bert_name(runs[0]["results"])
    models = {}
    for run in runs:
        if (other := _bert_name(run["results"])) != bert:
            raise ValueError(
                f"the runs must fine-tune BERT the same way, got {bert!r} and {other!r}"
            )
        for name, result in run["results"].items():
            scores = models.setdefault(name, {"accuracy": [], "macro_f1": []})
            for metric in scores:
                scores[metric].append(result[metric])
    median = {
        name: {metric: statistics.median(values) for metric, values in scores.items()}
        for name, scores in models.items()
    }
    spread = {
        name: {metric: [min(values), max(values)] for metric, values in scores.items()}
        for name, scores in models.items()
    }
    return {
        "seeds": seeds,
        "models": models,
        "median": median,
        "range": spread,
        "bert": bert,
        "goal_met": median[bert]["accuracy"] >= median[BASELINE]["accuracy"],
    }


def table(summary):
    """The markdown table: a row per model, a column per seed, then median (range).

    Example:
        >>> s = {"seeds": [0], "models": {"m": {"accuracy": [0.5], "macro_f1": [0.25]}},
        ...      "median": {"m": {"accuracy": 0.5, "macro_f1": 0.25}},
        ...      "range": {"m": {"accuracy": [0.5, 0.5], "macro_f1": [0.25, 0.25]}}}
        >>> print(table(s).splitlines()[2])
        | m | 0.5000 | 0.5000 (0.5000–0.5000) | 0.2500 (0.2500–0.2500) |
    """
    seeds = summary["seeds"]
    lines = [
        "| model | "
        + " | ".join(f"accuracy, seed {s}" for s in seeds)
        + " | accuracy, median (range) | macro-F1, median (range) |",
        "|---|" + "---:|" * (len(seeds) + 2),
    ]
    for name, scores in summary["models"].items():
        cells = [f"{a:.4f}" for a in scores["accuracy"]]
        for metric in ("accuracy", "macro_f1"):
            low, high = summary["range"][name][metric]
            cells.append(f"{summary['median'][name][metric]:.4f} ({low:.4f}–{high:.4f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="finetune_classifier.py output directories")
    parser.add_argument("--out", help="also write the summary here, as JSON")
    args = parser.parse_args()
    runs = []
    for directory in args.runs:
        path = pathlib.Path(directory) / "results.json"
        if not path.is_file():
            parser.error(
                f"runs: {directory!r} holds no results.json (a finetune_classifier.py --out)"
            )
        runs.append(json.loads(path.read_text(encoding="utf-8")))
    try:
        summary = summarize(runs)
    except ValueError as error:
        parser.error(f"runs: {error}")
    print(table(summary))
    bert, baseline = summary["median"][summary["bert"]], summary["median"][BASELINE]
    verdict = "met" if summary["goal_met"] else "missed"
    print(
        f"Goal (BERT's median test accuracy >= the n-gram baseline's): {verdict}, "
        f"{bert['accuracy']:.4f} against {baseline['accuracy']:.4f} over seeds {summary['seeds']}"
    )
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(summary, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
