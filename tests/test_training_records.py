"""What a run directory records, and how a re-run is checked against it before TensorFlow loads."""

import json
import os
import subprocess
import sys

import pytest

from tf_bigmodels import cli
from tf_bigmodels.run_directory import RunDirectory
from tf_bigmodels.training import records
from tf_bigmodels.training.config import RunConfig

TINY = dict(model="gpt", preset="gpt-test", samples=0, export=False, verbose=0)


def _stored_run(out, *, reached=None, model=False, texts=("some text",), **settings):
    """A run directory as training leaves it: its settings, checkpoints up to `reached`, and
    the final model if `model` (empty files: the checks read names, not contents)."""
    config = RunConfig(**TINY, out=str(out), **settings).resolved()
    run = RunDirectory(out / config.name)
    run.path.mkdir(parents=True)
    fingerprint = records.corpus_fingerprint(list(texts))
    run.config.write_text(json.dumps(records.run_record(config, fingerprint)))
    if reached:
        run.checkpoints.mkdir()
        (run.checkpoints / f"ckpt-{reached}.index").touch()
    if model:
        run.model.touch()
    return run, config


def _parsed(*argv):
    """The `RunConfig` that `tf-bigmodels train ARGV` builds."""
    args = cli.build_parser().parse_args(["train", *argv])
    fields = {k: v for k, v in vars(args).items() if k not in ("command", "handler", "show_tf")}
    return RunConfig(**fields)


def test_a_rerun_with_only_steps_takes_every_other_setting_from_the_stored_run(tmp_path):
    run, _ = _stored_run(
        tmp_path, reached=20, seed=3, weight_decay=0.05, clipnorm=0.5, corpus="tangshi"
    )
    config = _parsed("gpt", "--steps", "40", "--out", str(tmp_path))
    assert config.seed is None and config.corpus is None  # left out: no argparse default
    settled = records.settled(config)
    assert (settled.seed, settled.weight_decay, settled.clipnorm, settled.corpus) == (
        3,
        0.05,
        0.5,
        "tangshi",
    )
    assert records.check_run_dir(run, settled) is False  # accepted, nothing to replace


def test_a_changed_setting_is_still_refused(tmp_path):
    run, _ = _stored_run(tmp_path, reached=20)
    settled = records.settled(_parsed("gpt", "--seed", "5", "--out", str(tmp_path)))
    with pytest.raises(ValueError, match="holds a run with other settings .*seed: 0 -> 5"):
        records.check_run_dir(run, settled)


def test_a_run_that_failed_before_its_first_checkpoint_is_replaced(tmp_path):
    """A command that failed after writing its settings (a corpus too short, a refused
    init_from, an out-of-memory model, divergence before the first checkpoint) holds nothing
    trained; the corrected command replaces it instead of being refused."""
    run, config = _stored_run(tmp_path, seq_len=4096)
    corrected = RunConfig(**TINY, out=str(tmp_path)).resolved()
    assert records.check_run_dir(run, corrected) is True  # replaced, not refused
    assert records.check_run_dir(run, config) is False  # the same command: nothing to replace
    run.model.touch()  # once something is trained, the same change is refused
    with pytest.raises(ValueError, match="seq_len: 4096 -> 32"):
        records.check_run_dir(run, corrected)


def test_a_corpus_whose_text_changed_under_the_same_path_is_refused(tmp_path):
    run, config = _stored_run(tmp_path, reached=20, texts=["the old text"])
    fingerprint = records.corpus_fingerprint(["the new text"])
    with pytest.raises(ValueError, match="was trained on other text"):
        records.check_run_dir(run, config, fingerprint)
    assert records.check_run_dir(run, config, records.corpus_fingerprint(["the old text"])) is False


def test_a_finished_run_whose_checkpoints_are_gone_is_not_retrained_silently(tmp_path):
    run, config = _stored_run(tmp_path, model=True)
    with pytest.raises(ValueError, match="its checkpoints are gone"):
        records.check_run_dir(run, config)


def test_sentencepiece_without_a_vocabulary_size_names_a_value_to_use():
    with pytest.raises(ValueError, match="e.g. 2000 for an English corpus"):
        RunConfig(tokenizer="sentencepiece").resolved()


def test_a_refused_rerun_fails_before_tensorflow_loads(tmp_path):
    """The quick tour's second command on a run that reached more steps: refused at once."""
    _stored_run(tmp_path, reached=40, steps=40, eval_every=20)
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "tf_bigmodels", "train", "gpt"]
        + ["--steps", "20", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 2
    assert "`--steps` must be at least the 40 steps" in result.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "tensorflow" not in imported and "tf_bigmodels.cli" in imported


def test_options_that_do_not_apply_to_a_model_kind_are_refused():
    from tf_bigmodels.training.tasks import BERTTask, GPTTask

    for option in ("weights", "temperature", "max_new_tokens"):
        with pytest.raises(ValueError, match=f"`{option}` does not apply to the export of a bert"):
            BERTTask.export(None, None, "unused", **{option: 1})
    assert "weights" in GPTTask.export_options


def test_the_suggested_prompt_comes_from_the_run_s_own_validation_text():
    from tf_bigmodels.training.tasks import task_for

    poems = [f"第{i}首\n春风又绿江南岸\n明月何时照我还" for i in range(50)]
    prompt = task_for(RunConfig(**TINY).resolved()).prompt(poems)
    text = "\n\n".join(poems)
    assert prompt.endswith("\n") and prompt.strip() in text[len(text) - len(text) // 10 :]
    assert "ROMEO" not in prompt


def test_a_run_that_trained_nothing_gives_no_defaults(tmp_path):
    _stored_run(tmp_path, seq_len=256)  # failed before its first checkpoint
    assert records.settled(RunConfig(**TINY, out=str(tmp_path))).seq_len == 32  # the preset's
