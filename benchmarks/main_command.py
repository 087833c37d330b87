"""The main command end to end: `tf-bigmodels train gpt` (nanoGPT's CPU configuration, 2000 steps).

Runs the command in a fresh run directory, measures its wall time, and reads the run's
`metrics.jsonl` for the final validation loss and the median training tokens/s. nanoGPT reports a
validation loss of about 1.88 for this configuration on CPU.

Usage:
    python benchmarks/main_command.py [--precision mixed_bfloat16] [--steps 2000] [--out X.json]
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from _timing import machine


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        command = [
            sys.executable,
            "-m",
            "tf_bigmodels",
            "train",
            "gpt",
            "--steps",
            str(args.steps),
            "--eval-every",
            str(args.eval_every),
            "--precision",
            args.precision,
            "--out",
            directory,
            "--samples",
            "0",
            "--no-export",
        ]
        start = time.perf_counter()
        completed = subprocess.run(
            command, capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        )
        wall = time.perf_counter() - start
        if completed.returncode:
            sys.exit(f"the main command failed:\n{completed.stderr[-3000:]}")
        lines = [
            json.loads(line)
            for line in (pathlib.Path(directory) / "gpt" / "metrics.jsonl").read_text().splitlines()
        ]
    epochs = [line for line in lines if "epoch" in line]
    rates = [line["tokens/s"] for line in lines if "epoch" not in line and "tokens/s" in line]
    result = {
        "command": " ".join(["tf-bigmodels"] + command[3:]),
        "machine": machine(),
        "precision": args.precision,
        "steps": args.steps,
        "final_loss": epochs[-1]["loss"],
        "final_val_loss": epochs[-1]["val_loss"],
        "median_tokens_per_second": statistics.median(rates[1:] or rates),
        "wall_seconds": wall,
    }
    print(
        f"| {args.precision} | {args.steps} | {result['final_loss']:.3f} | "
        f"{result['final_val_loss']:.3f} | {result['median_tokens_per_second']:,.0f} | "
        f"{wall:.0f} s |"
    )
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
