"""int8 against float32 LiteRT: validation loss and the first difference of 200 greedy tokens.

Exports a trained GPT (`.keras`, e.g. `runs/gpt/model.keras`) to LiteRT twice (float32, int8),
then reports the validation loss of each over evenly spaced windows of the last 10% of the
validation text, its relative change, and the first index where the greedy continuations of
`--prompt` differ (None: identical).

Usage:
    python benchmarks/litert_quality.py runs/gpt/model.keras --out litert_quality.json
    python benchmarks/litert_quality.py runs/poet/model.keras --text tangshi --prompt "静夜思"
"""

import argparse
import json
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from tf_bigmodels.data import load_corpus  # noqa: E402
from tf_bigmodels.litert import export_gpt_litert  # noqa: E402
from tf_bigmodels.litert.quality import compare  # noqa: E402
from tf_bigmodels.run_directory import RunDirectory  # noqa: E402
from tf_bigmodels.tokenizers import ByteTokenizer  # noqa: E402


def run(model_path, *, text="shakespeare", prompt="ROMEO:", new_tokens=200, windows=64):
    """Exports `model_path` as float32 and int8 LiteRT files and compares them; a dict."""
    model = keras.saving.load_model(model_path)
    run_dir = RunDirectory.containing(model_path)
    tokenizer = ByteTokenizer()  # a .keras file outside a run directory: a byte-level GPT
    if run_dir is not None:
        from tf_bigmodels.training import load_run_tokenizer

        tokenizer = load_run_tokenizer(run_dir)
    documents = load_corpus(text)
    joined = "".join(documents)
    validation = joined[int(0.9 * len(joined)) :]
    with tempfile.TemporaryDirectory() as directory:
        paths = {
            w: export_gpt_litert(
                model, tokenizer, os.path.join(directory, f"{w}.tflite"), weights=w
            )
            for w in ("float32", "int8")
        }
        sizes = {w: os.path.getsize(p) for w, p in paths.items()}
        result = compare(
            paths["float32"],
            paths["int8"],
            validation,
            prompt=prompt,
            new_tokens=new_tokens,
            windows=windows,
        )
    return {"model": os.fspath(model_path), "text": text, "file_bytes": sizes, **result}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a trained GPT .keras file")
    parser.add_argument("--text", default="shakespeare", help="corpus name or path")
    parser.add_argument("--prompt", default="ROMEO:")
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--out", help="write the result as JSON here")
    args = parser.parse_args()
    result = run(
        args.model,
        text=args.text,
        prompt=args.prompt,
        new_tokens=args.new_tokens,
        windows=args.windows,
    )
    for weights, loss in result["val_loss"].items():
        print(f"val loss {weights:8s} {loss:.4f}  file {result['file_bytes'][weights]:,} bytes")
    print(
        f"int8 vs float32: {100 * result['relative_change']:+.2f}% validation loss; first "
        f"greedy difference in {result['new_tokens']} tokens: {result['first_difference']}"
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2, ensure_ascii=False)
    return result


if __name__ == "__main__":
    main()
