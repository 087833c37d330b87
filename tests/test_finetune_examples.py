"""The fine-tuning examples run with `--smoke`, and their numbers are consistent with their data.

The examples run in the test's process (`run_script_here`); the exported classifier is served in a
fresh one, which imports only TensorFlow and tensorflow-text."""

import json
import re
import textwrap

import pytest
from helpers import EXAMPLES, run_example, run_script

pytestmark = pytest.mark.slow

# Runs in a fresh interpreter: only tensorflow and tensorflow_text are imported.
_SERVE_CLASSIFIER = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the WordPiece ops)
    assert not any(name.startswith("tf_bigmodels") for name in sys.modules)
    served = tf.saved_model.load(sys.argv[1]).signatures["serving_default"](
        text=tf.constant(["质量很好，下次还买。", "太差了，退货！", ""]))
    print(json.dumps({
        "probabilities": served["probabilities"].numpy().tolist(),
        "label": served["label"].numpy().tolist(),
        "label_name": [s.decode() for s in served["label_name"].numpy()],
    }))
""")


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("finetune_classifier")
    stdout = run_example(
        "finetune_classifier", cwd, "--lora-rank", "2", "--general-steps", "10", "--seed", "1"
    )
    out = cwd / "example_outputs" / "finetune_classifier"
    return stdout, out, json.loads((out / "results.json").read_text(encoding="utf-8"))


def test_the_split_is_80_10_10_of_the_reviews(classifier_run):
    _, _, summary = classifier_run
    sizes = summary["split_sizes"]
    total = sum(sizes.values())
    assert sizes["train"] == int(0.8 * total)
    assert sizes["validation"] == int(0.9 * total) - int(0.8 * total)
    assert sum(summary["test_label_counts"]) == sizes["test"]


def test_baselines_are_scored_on_the_same_test_split(classifier_run):
    _, _, summary = classifier_run
    counts, results = summary["test_label_counts"], summary["results"]
    share = counts[summary["train_majority_label"]] / sum(counts)
    majority = results["majority-class baseline"]
    # Always answering one class: accuracy is that class's share p of the test split, its F1 is
    # 2p / (1 + p) and the other class's is 0.
    assert majority["accuracy"] == pytest.approx(share)
    assert majority["macro_f1"] == pytest.approx(share / (1 + share))
    assert majority["parameters_trained"] == 0
    for result in results.values():
        assert 0 <= result["macro_f1"] <= 1 and 0 <= result["accuracy"] <= 1


def test_two_stage_pre_training_learns_its_vocabulary_from_the_poems_too(classifier_run):
    from tf_bigmodels.data import load_corpus, load_labelled_corpus

    stdout, out, summary = classifier_run
    assert summary["seed"] == 1
    assert summary["pretraining_steps"] == {"all bundled Chinese text": 10, "training reviews": 20}
    general = stdout.index("Pre-training on all the bundled Chinese text")
    assert general < stdout.index("Pre-training on the training reviews")
    vocab = (out / "pretrained" / "tokenizer" / "vocab.txt").read_text(encoding="utf-8").split()
    review_characters = set("".join(load_labelled_corpus("chinese_reviews").texts))
    from_poems = {piece for piece in vocab if len(piece) == 1 and piece not in review_characters}
    assert from_poems and from_poems <= set("".join(load_corpus("tangshi")[:2000]))


def test_parameters_trained_are_those_of_each_model(classifier_run):
    stdout, _, summary = classifier_run
    results = summary["results"]
    # Logistic regression: one weight per n-gram and class, plus a bias per class.
    ngram = results["char 1-2-gram logistic regression"]["parameters_trained"]
    assert ngram % 2 == 0 and ngram > 2
    # Smoke BERT: 1 block of width 32, rank-2 adapters on qkv (32 -> 96) and output (32 -> 32),
    # and the new head (32 x 2 + 2).
    assert results["BERT, LoRA rank 2"]["parameters_trained"] == (32 + 96) * 2 + 64 * 2 + 66
    assert summary["encoder"] == {"d_model": 32, "num_heads": 2, "dff": 64, "num_layers": 1}
    for name in results:
        assert f"| {name} |" in stdout  # the table has a row for each


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--width", "100"], "--width must be a multiple of 64, without --smoke or --pretrained"),
        (["--width", "256", "--smoke"], "without --smoke or --pretrained (which set the encoder)"),
        (["--width", "32"], "--width: must be an integer >= 64, got '32'"),
    ],
)
def test_width_is_a_multiple_of_64_for_a_full_run_only(arguments, message, tmp_path):
    # Refused while the arguments are read, before TensorFlow loads.
    result = run_script(EXAMPLES / "finetune_classifier.py", *arguments, cwd=tmp_path, timeout=60)
    last = result.stderr.splitlines()[-1]
    assert result.returncode == 2 and message in last and arguments[1] in last, result.stderr
    assert not (tmp_path / "example_outputs").exists()


def test_classifier_savedmodel_serves_chinese_labels_in_a_fresh_process(classifier_run, tmp_path):
    _, out, _ = classifier_run
    assert (out / "classifier.keras").is_file()
    served = run_script("-c", _SERVE_CLASSIFIER, out / "export" / "1", cwd=tmp_path)
    assert served.returncode == 0, served.stderr[-3000:]
    served = json.loads(served.stdout.splitlines()[-1])
    assert served["label_name"] == [["负面", "正面"][label] for label in served["label"]]
    for row in served["probabilities"]:
        assert sum(row) == pytest.approx(1, abs=1e-5)


def test_finetune_gpt_compares_full_fine_tuning_and_lora(tmp_path):
    stdout = run_example("finetune_gpt", tmp_path)
    assert "FINETUNE_GPT DONE" in stdout
    rows = re.findall(r"^\| (.+?) \| ([\d.]+) \| ([\d.]+) \| ([\d,]+) \| \d+ \|$", stdout, re.M)
    assert [row[0] for row in rows] == [
        "full fine-tuning",
        "LoRA rank 8, attention + feed-forward",
    ]
    (_, full_before, _, full_params), (_, lora_before, _, lora_params) = rows
    assert full_before == lora_before  # both start from the same base
    # Smoke GPT: 1 block, width 32, dff 64; rank-8 adapters on qkv, output, and both FFN layers.
    assert int(lora_params.replace(",", "")) == 8 * ((32 + 96) + (32 + 32) + 2 * (32 + 64))
    assert int(full_params.replace(",", "")) > 10 * int(lora_params.replace(",", ""))
    for method in ("full fine-tuning", "LoRA rank 8"):
        sample = stdout.split(f"[{method}")[1].split("\n", 1)[1]
        assert sample.split("\n")[1] == "李白"  # the prompt: a held-out title and the poet
