"""int8 against float32 LiteRT: validation loss and the first difference of 200 greedy tokens.

Exports a trained GPT (`.keras`, e.g. `runs/gpt/model.keras`) to LiteRT twice (float32, int8),
then reports the validation loss of each over evenly spaced windows of the last 10% of the
validation text, its relative change, and the first index where the greedy continuations of
`--prompt` differ (None: identical).

With `--classifier TOKENIZER_DIR`, the model is a Chinese-review `BERTClassifier` (as
`examples/finetune_classifier.py` saves it: `OUT/classifier.keras`, its tokenizer in
`OUT/pretrained/tokenizer`): the script reports the test accuracy of the Keras model and of the
float32 and int8 files on that example's test split, and how often the two files agree.

Usage:
    python benchmarks/litert_quality.py runs/gpt/model.keras --out litert_quality.json
    python benchmarks/litert_quality.py runs/poet/model.keras --text tangshi --prompt "静夜思"
    python benchmarks/litert_quality.py OUT/classifier.keras --classifier OUT/pretrained/tokenizer
"""

import argparse
import json
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tf_bigmodels.data import load_corpus, load_labelled_corpus  # noqa: E402
from tf_bigmodels.litert import LiteRTEncoder, export_bert_litert, export_gpt_litert  # noqa: E402
from tf_bigmodels.litert.quality import compare  # noqa: E402
from tf_bigmodels.run_directory import RunDirectory  # noqa: E402
from tf_bigmodels.tokenizers import ByteTokenizer, WordPieceTokenizer  # noqa: E402

SPLIT_SEED = 0  # examples/finetune_classifier.py's split: a seeded permutation cut 80/10/10


def run(model_path, *, text="shakespeare", prompt="ROMEO:", new_tokens=200, windows=64):
    """Exports `model_path` as float32 and int8 LiteRT files and compares them; a dict."""
    model = keras.saving.load_model(model_path, compile=False)  # weights only
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


def run_classifier(model_path, tokenizer_dir, *, batch_size=64):
    """Test accuracy of a review classifier: Keras, and its float32 and int8 LiteRT files."""
    model = keras.saving.load_model(model_path, compile=False)  # weights only
    tokenizer = WordPieceTokenizer.load(tokenizer_dir)
    reviews = load_labelled_corpus("chinese_reviews")
    order = np.random.default_rng(SPLIT_SEED).permutation(len(reviews.texts))
    test = order[int(0.9 * len(order)) :]
    texts = [reviews.texts[i] for i in test]
    labels = np.array([reviews.labels[i] for i in test])
    # The example's packing: [CLS] review [SEP], trimmed to the encoder's length, padded.
    length = model.encoder.max_length
    token_ids = np.full((len(texts), length), tokenizer.pad_id, np.int32)
    for row, pieces in enumerate(tokenizer.tokenize(texts).to_list()):
        pieces = [tokenizer.cls_id] + pieces[: length - 2] + [tokenizer.sep_id]
        token_ids[row, : len(pieces)] = pieces
    inputs = {
        "token_ids": token_ids,
        "segment_ids": np.zeros_like(token_ids),
        "padding_mask": (token_ids != tokenizer.pad_id).astype(np.int32),
    }
    batches = range(0, len(texts), batch_size)
    keras_logits = np.concatenate(
        [model({k: v[i : i + batch_size] for k, v in inputs.items()}) for i in batches]
    )
    predictions = {"keras float32": keras_logits.argmax(-1)}
    with tempfile.TemporaryDirectory() as directory:
        sizes = {}
        for weights in ("float32", "int8"):
            path = export_bert_litert(
                model, tokenizer, os.path.join(directory, f"{weights}.tflite"), weights=weights
            )
            sizes[weights] = os.path.getsize(path)
            encoder = LiteRTEncoder(path)
            probabilities = np.concatenate(
                [
                    encoder.classify(**{k: v[i : i + batch_size] for k, v in inputs.items()})[
                        "probabilities"
                    ]
                    for i in batches
                ]
            )
            predictions[f"litert {weights}"] = probabilities.argmax(-1)
    accuracy = {name: float(np.mean(p == labels)) for name, p in predictions.items()}
    return {
        "model": os.fspath(model_path),
        "test_reviews": len(texts),
        "file_bytes": sizes,
        "accuracy": accuracy,
        "int8_minus_float32_points": 100 * (accuracy["litert int8"] - accuracy["litert float32"]),
        "int8_float32_agreement": float(
            np.mean(predictions["litert int8"] == predictions["litert float32"])
        ),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "model", help="a trained GPT .keras file (a BERTClassifier with --classifier)"
    )
    parser.add_argument("--text", default="shakespeare", help="corpus name or path")
    parser.add_argument("--prompt", default="ROMEO:")
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--out", help="write the result as JSON here")
    parser.add_argument(
        "--classifier",
        metavar="TOKENIZER_DIR",
        help="the model is a Chinese-review BERTClassifier with this WordPiece tokenizer",
    )
    args = parser.parse_args()
    if args.classifier:
        result = run_classifier(args.model, args.classifier)
        for name, accuracy in result["accuracy"].items():
            print(f"test accuracy {name:15s} {accuracy:.4f}")
        print(
            f"int8 - float32: {result['int8_minus_float32_points']:+.2f} points; the two files "
            f"agree on {100 * result['int8_float32_agreement']:.2f}% of the reviews"
        )
        _write(args.out, result)
        return result
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
    _write(args.out, result)
    return result


def _write(path, result):
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2, ensure_ascii=False)


if __name__ == "__main__":
    main()
