"""Every example runs in `--smoke` mode from a foreign working directory and produces its outputs.

Each script runs with a temporary directory (not the repository) as its working directory and
the default `--out`, so the tests also check that outputs land under `./example_outputs/<name>`
of the caller and never inside the package. `train_gpt.py` runs in a process of its own, as a
reader runs it; the others run in the test's process (`run_script_here`), which saves each
TensorFlow's start-up. The GPT and BERT runs of `train_gpt.py` and `pretrain_bert.py` are reused by
the examples that start from a trained model.
"""

import json

import pytest
from helpers import EXAMPLES, run_example

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("examples_cwd")


@pytest.fixture(scope="module")
def gpt_run(workdir):
    stdout = run_example("train_gpt", workdir, fresh_process=True)
    assert "TRAIN_GPT DONE" in stdout and "validation loss per evaluation" in stdout
    return workdir / "example_outputs" / "train_gpt" / "gpt"


@pytest.fixture(scope="module")
def bert_run(workdir):
    stdout = run_example("pretrain_bert", workdir)
    assert "MLM accuracy: train" in stdout and "NSP accuracy: train" in stdout
    assert "PRETRAIN_BERT DONE" in stdout
    return workdir / "example_outputs" / "pretrain_bert" / "bert"


def test_every_example_has_a_test():
    tested = {
        "article_walkthrough",
        "train_gpt",
        "pretrain_bert",
        "finetune_classifier",
        "generate",
        "export_and_serve",
        "custom_model",
        "finetune_gpt",
    }
    assert {p.stem for p in EXAMPLES.glob("*.py")} == tested


def test_article_walkthrough(workdir):
    """Each verdict follows from the printed numbers by its printed rule, and in smoke mode every
    defect of the README's table shows, so a narrative the numbers do not support fails here."""
    stdout = run_example("article_walkthrough", workdir)
    results = json.loads(
        (workdir / "example_outputs/article_walkthrough/walkthrough.json").read_text()
    )
    defects = results["defects"]
    assert list(defects) == [str(n) for n in range(1, 11)]  # numbered as the README's table
    for number, defect in defects.items():
        holds = eval(defect["rule"], {"__builtins__": {"len": len}}, dict(defect["numbers"]))
        assert defect["shown"] == bool(holds), number
        verdict = "SHOWN" if holds else "NOT SHOWN IN THIS RUN"
        assert f"DEFECT {number}: {defect['title']}" in stdout
        assert f"  rule: {defect['rule']}\n  verdict: {verdict}:" in stdout
    not_shown = [n for n, d in defects.items() if not d["shown"]]
    assert not not_shown, f"defects not shown in smoke mode: {not_shown}"
    assert "DEFECTS SHOWN IN THIS RUN: 10 of 10" in stdout

    causal = defects["4"]["numbers"]  # the classic one, in plain numbers as well as by its rule
    assert causal["leaky_teacher_forced_loss"] < 0.5
    assert causal["leaky_prefix_only_loss"] > causal["ours_prefix_only_loss"]
    assert abs(causal["ours_teacher_forced_loss"] - causal["ours_prefix_only_loss"]) < 1e-3
    samples = results["samples"]
    assert samples["leaky"].startswith("KING RICHARD") and samples["ours"].startswith("KING")
    assert f"leaky: {samples['leaky']!r}" in stdout and f"ours: {samples['ours']!r}" in stdout
    assert results["attention_formula"]["by_hand_vs_keras"] < 1e-5
    assert "WALKTHROUGH DONE" in stdout


def test_train_gpt(gpt_run):
    for name in ("config.json", "metrics.jsonl", "model.keras", "best.keras"):
        assert (gpt_run / name).is_file(), name


def test_pretrain_bert(bert_run):
    assert (bert_run / "model.keras").is_file()
    assert (bert_run / "tokenizer" / "vocab.txt").is_file()


def test_finetune_classifier(workdir, bert_run):
    stdout = run_example("finetune_classifier", workdir, "--pretrained", str(bert_run))
    assert "Held-out accuracy:" in stdout and "majority-class baseline" in stdout
    out = workdir / "example_outputs" / "finetune_classifier"
    assert (out / "classifier.keras").is_file()
    assert (out / "export" / "1" / "saved_model.pb").is_file()


def test_generate(workdir, gpt_run):
    stdout = run_example("generate", workdir, "--run", str(gpt_run))
    assert "same seed, same text: True" in stdout and "GENERATE DONE" in stdout
    samples = (workdir / "example_outputs" / "generate" / "samples.txt").read_text()
    assert "[greedy]" in samples and "[streamed]" in samples


def test_export_and_serve(workdir, gpt_run):
    stdout = run_example("export_and_serve", workdir, "--run", str(gpt_run))
    assert "EXPORT_AND_SERVE DONE" in stdout
    out = workdir / "example_outputs" / "export_and_serve"
    responses = json.loads((out / "responses.json").read_text())
    assert responses["signatures"] == ["generate", "logits", "serving_default"]
    assert len(responses["serving_default"]) == 2 and responses["logits_shape"] == [1, 5, 258]


def test_custom_model(workdir, tmp_path):
    # An explicit --out outside the working directory works too.
    stdout = run_example("custom_model", workdir, "--out", str(tmp_path / "forecaster"))
    assert "CUSTOM_MODEL DONE" in stdout and "naive last-value forecast" in stdout
    assert (tmp_path / "forecaster" / "forecaster.keras").is_file()


def test_examples_write_nothing_into_the_repository(workdir, gpt_run):
    repository = EXAMPLES.parent
    assert not (repository / "example_outputs").exists()
    assert not list((repository / "tf_bigmodels").rglob("*.keras"))
