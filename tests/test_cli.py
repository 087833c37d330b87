"""User mistakes at the command line: one clear line on stderr, a non-zero exit, no damage.

Each case checks that the exit status is 2 (a usage error), that stderr holds exactly one line
(TensorFlow's start-up notices aside) and no traceback, that the line names what was wrong, and
that files already there are unchanged. Mistakes found before TensorFlow loads, and the cases
about the process itself (its log lines, its arguments' bytes, a mount), run `python -m
tf_bigmodels ...` in a subprocess. Mistakes found after TensorFlow loads run the same
`main` in this process (`run_here`): `python -m tf_bigmodels` exits with what `main` returns, and
a fresh process would add only TensorFlow's import, about 4 s of CPU per case.
Note: the tests run as root, for whom permissions never block a write, so an unwritable output
location is simulated by a path below a regular file (`--out somefile/sub`).
"""

import hashlib
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import is_tensorflow_log_line, run_all_here, run_here

import tf_bigmodels
from tf_bigmodels.models import GPTModel
from tf_bigmodels.tokenizers import WordPieceTokenizer

pytestmark = pytest.mark.slow


def run(*args, cwd=None):
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-m", "tf_bigmodels", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
    )


def run_all(*commands):
    """Runs independent commands three at a time (most of each is TensorFlow's start-up)."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        return list(pool.map(lambda args: run(*args), commands))


def assert_user_error(result, *fragments):
    """Exit status 2 and a single stderr line (no traceback) containing every fragment."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [
        line
        for line in result.stderr.splitlines()
        if line.strip() and not is_tensorflow_log_line(line)
    ]
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert len(lines) == 1, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def snapshot(directory):
    """Digest of every file under `directory`, to prove nothing was changed."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(pathlib.Path(directory).rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory):
    """A run directory as `train` leaves it (config, metrics, model), without training."""
    run_dir = tmp_path_factory.mktemp("runs") / "gpt"
    run_dir.mkdir()
    model = GPTModel(258, 32, 2, 64, 2, rate=0.0, max_length=32)
    model(np.zeros((1, 32), "int32"))
    model.save(run_dir / "model.keras")
    (run_dir / "config.json").write_text(
        json.dumps({"version": tf_bigmodels.__version__, "model": "gpt", "preset": "gpt-test"})
    )
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 10, "loss": 5.0}) + "\n")
    return run_dir


@pytest.fixture()
def a_file(tmp_path):
    path = tmp_path / "somefile"
    path.write_text("not a directory")
    return path


# ---------------------------------------------------------------- usage errors (argparse)
BAD_FLAGS = [
    (["train", "gpt", "--steps", "0"], "--steps: must be a positive integer, got '0'"),
    (["train", "gpt", "--lr", "abc"], "--lr: must be a positive number, got 'abc'"),
    (["train", "llama"], "invalid choice: 'llama'"),
    (["generate"], "the following arguments are required: source"),
    (["plot", "x", "--layer", "one"], "--layer: invalid int value: 'one'"),
]


def test_bad_flags():
    for result, (_, fragment) in zip(run_all(*(args for args, _ in BAD_FLAGS)), BAD_FLAGS):
        assert_user_error(result, fragment, "--help")


# ---------------------------------------------------------------- train
def test_train_bad_corpus_files(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "binary.bin").write_bytes(bytes(range(256)) * 10)
    missing, empty, binary = run_all_here(
        *(
            ["train", "gpt", "--corpus", tmp_path / name, "--out", tmp_path]
            for name in ("missing.txt", "empty.txt", "binary.bin")
        )
    )
    assert_user_error(missing, "missing.txt", "is not an existing file")
    assert_user_error(empty, "holds no text")
    assert_user_error(binary, "is not valid UTF-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["binary.bin", "empty.txt"]


def test_bert_on_too_few_documents_says_so_before_learning_a_vocabulary(tmp_path):
    (tmp_path / "one.txt").write_text("To be, or not to be, that is the question.\n" * 200)
    command = ["train", "bert", "--preset", "bert-test", "--corpus", tmp_path / "one.txt"]
    (result,) = run_all([*command, "--out", tmp_path / "runs"])
    # The run has logged its strategy; the error is its last line, before any vocabulary.
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "`--corpus` must hold at least 4 documents" in last and "got 1" in last, last
    assert "WordPiece" not in result.stderr


BAD_TRAIN_SETTINGS = [
    (["--warmup-steps", "-5"], ["`--warmup-steps`", "-5"]),
    (["--dropout", "1.5"], ["`--dropout`", "1.5"]),
    (["--num-heads", "3"], ["`--d-model` must be divisible by `--num-heads`=3", "got 32"]),
    (["--preset", "gpt-huge"], ["unknown `--preset` 'gpt-huge'"]),
    (["--grad-accum", "0"], ["`--grad-accum`", "0"]),
    (["--weight-decay", "-1"], ["`--weight-decay`", "-1"]),
    (["--samples", "-2"], ["`--samples`", "-2"]),
    (
        ["--steps", "15", "--eval-every", "10"],
        ["`--steps` must be a multiple", "`--eval-every`=10"],
    ),
]


def test_train_out_of_range_settings(tmp_path):
    commands = [
        [
            "train",
            "gpt",
            "--steps",
            "10",
            "--out",
            tmp_path,
            *([] if "--preset" in args else ["--preset", "gpt-test"]),
            *args,
        ]
        for args, _ in BAD_TRAIN_SETTINGS
    ]
    for result, (_, fragments) in zip(run_all(*commands), BAD_TRAIN_SETTINGS):
        assert_user_error(result, *fragments)
    assert not list(tmp_path.iterdir())  # checked before anything is written


def test_train_refuses_a_run_of_an_older_version(gpt_run, tmp_path):
    old = tmp_path / "gpt"
    shutil.copytree(gpt_run, old)
    config = json.loads((old / "config.json").read_text())
    (old / "config.json").write_text(json.dumps({**config, "version": "0.0.1"}))
    before = snapshot(old)
    assert_user_error(
        run("train", "gpt", "--preset", "gpt-test", "--out", tmp_path),
        "'0.0.1'",
        tf_bigmodels.__version__,
    )
    assert snapshot(old) == before


def test_train_refuses_an_unreadable_run_config(tmp_path):
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_bytes(b"\x00\xff binary")
    assert_user_error(
        run("train", "gpt", "--preset", "gpt-test", "--out", tmp_path), "config.json is unreadable"
    )
    assert (tmp_path / "gpt" / "config.json").read_bytes() == b"\x00\xff binary"


def test_train_into_an_unwritable_place(a_file):
    assert_user_error(
        run("train", "gpt", "--preset", "gpt-test", "--out", a_file / "sub"),
        "cannot write the run directory",
    )
    assert a_file.read_text() == "not a directory"


# ---------------------------------------------------------------- a run that fails
def _disk_full_at_checkpoint(self, *args, **kwargs):
    raise tf.errors.ResourceExhaustedError(None, None, "ckpt-10_temp/part: No space left on device")


def _disk_full_at_export(*args, **kwargs):
    raise OSError(28, "No space left on device")


def _disk_full_at_tokenizer(self, directory):
    os.makedirs(directory, exist_ok=True)
    open(os.path.join(directory, "tokenizer.json"), "w").close()
    raise OSError(28, "No space left on device")


def assert_run_error(result, *fragments):
    """Exit status 2, no traceback, and one error line, the last; the run's progress lines
    (INFO on stderr) may come before it."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("tf-bigmodels")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_every_failure_of_a_run_is_one_line(tmp_path, gpt_run, monkeypatch):
    """A full disk at a checkpoint, at an export, at the tokenizer's save; a diverged run (a
    finite but huge loss); a run directory another process writes: one line, status 2, and
    nothing half-written left behind."""
    tiny = ["--preset", "gpt-test", "--steps", "20", "--eval-every", "10"]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for index in range(8):
        (corpus / f"{index}.txt").write_text(f"Document {index}. " + "Some words here. " * 40)
    busy = tmp_path / "busy"
    (busy / "gpt").mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time; h = os.open(sys.argv[1], os.O_RDONLY); "
            "fcntl.flock(h, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(300)",
            str(busy / "gpt"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    bert = ["--preset", "bert-test", "--corpus", corpus / "*.txt", "--vocab-size", "200"]
    try:
        with monkeypatch.context() as patched:
            patched.setattr(tf.train.CheckpointManager, "save", _disk_full_at_checkpoint)
            checkpoint = run_here("train", "gpt", *tiny, "--out", tmp_path / "a")
        with monkeypatch.context() as patched:
            patched.setattr(tf.saved_model, "save", _disk_full_at_export)
            export = run_here("export", gpt_run, "--out", tmp_path / "e", "--no-xla")
        with monkeypatch.context() as patched:
            patched.setattr(WordPieceTokenizer, "save", _disk_full_at_tokenizer)
            tokenizer = run_here("train", "bert", *bert, "--out", tmp_path / "b")
        diverged, locked = run_all_here(
            ["train", "gpt", *tiny, "--lr", "5", "--out", tmp_path / "d"],
            ["train", "gpt", *tiny, "--out", busy],
        )
    finally:
        holder.kill()
        holder.wait()
    assert_run_error(
        checkpoint, "cannot write the checkpoint of step 10", "No space left on device"
    )
    assert not list((tmp_path / "a" / "gpt" / "checkpoints").glob("*"))
    assert_run_error(export, "cannot write the SavedModel under", "No space left on device")
    assert not list((tmp_path / "e").iterdir())
    assert_run_error(tokenizer, "cannot write the tokenizer into", "No space left on device")
    assert sorted(p.name for p in (tmp_path / "b" / "bert").iterdir()) == ["config.json"]
    # One labelled line while the vocabulary is learned, no unlabelled progress bar before it.
    assert "Learning a wordpiece vocabulary of about 200 tokens" in tokenizer.stderr
    assert "━" not in tokenizer.stdout + tokenizer.stderr
    assert_run_error(diverged, "training diverged at step", "The last good checkpoint is")
    assert not (tmp_path / "d" / "gpt" / "model.keras").exists()
    assert_run_error(locked, "another process is writing it", f"PID {holder.pid}")
    assert not list((busy / "gpt").iterdir())


@pytest.fixture()
def read_only_dir(tmp_path):
    """A read-only file system (a tmpfs mounted read-only), where mounting is allowed."""
    path = tmp_path / "read_only"
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode:
        pytest.skip("cannot mount a read-only tmpfs here")
    yield path
    subprocess.run(["umount", str(path)], check=False)


def test_out_on_a_read_only_file_system(gpt_run, read_only_dir):
    exported, plotted, trained = run_all(
        ["export", gpt_run, "--out", read_only_dir / "export", "--no-xla"],
        ["plot", gpt_run, "--out", read_only_dir / "plots"],
        ["train", "gpt", "--preset", "gpt-test", "--out", read_only_dir],
    )
    assert_user_error(exported, "Read-only file system")
    if "matplotlib" in sys.modules or importlib.util.find_spec("matplotlib"):
        assert_user_error(plotted, "Read-only file system")
    assert_user_error(trained, "cannot write the run directory")
    assert not list(read_only_dir.iterdir())


def test_refused_settings_change_nothing(gpt_run, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(gpt_run, runs / "gpt")
    before = snapshot(runs)
    bad_seed, bad_name, vocab = run_all(
        ["train", "gpt", "--preset", "gpt-test", "--seed", "-1", "--out", runs],
        ["train", "gpt", "--name", "../escape", "--out", runs],
        ["train", "gpt", "--vocab-size", "300", "--out", runs],
    )
    assert_user_error(bad_seed, "`--seed` must be an integer in [0, 4294967295], got -1")
    assert_user_error(bad_name, "`--name` must be one directory name", "'../escape'")
    assert_user_error(vocab, "`--vocab-size` must be None with the byte tokenizer")
    assert snapshot(runs) == before and not (tmp_path / "escape").exists()


# ---------------------------------------------------------------- generate
def test_generate_bad_sources(tmp_path, gpt_run):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "garbage.keras").write_bytes(b"\x00\x01 not a zip")
    (tmp_path / "empty_run").mkdir()
    (tmp_path / "empty_run" / "config.json").write_text("{}")
    missing, notes, garbage, empty_run = run_all_here(
        *(
            ["generate", tmp_path / name]
            for name in ("missing", "notes.txt", "garbage.keras", "empty_run")
        )
    )
    assert_user_error(missing, "No such file or directory", "missing")
    assert_user_error(notes, "notes.txt", "neither")
    assert_user_error(garbage, "cannot load", "garbage.keras")
    assert_user_error(empty_run, "has no model yet")


BAD_GENERATE_SETTINGS = [
    (["--temperature", "-1"], "`--temperature`"),
    (["--top-p", "1.5"], "`--top-p`"),
    (["--top-k", "-3"], "`--top-k`"),
    (["--max-new-tokens", "-1"], "`--max-new-tokens` must be an integer >= 0, got -1."),
]


def test_generate_out_of_range_settings(gpt_run):
    commands = [["generate", gpt_run, "--prompt", "Hi", *args] for args, _ in BAD_GENERATE_SETTINGS]
    for result, (_, fragment) in zip(run_all_here(*commands), BAD_GENERATE_SETTINGS):
        assert_user_error(result, fragment)


def test_generate_from_an_older_incompatible_run(gpt_run, tmp_path):
    """A model.keras whose classes this version does not have, in a run of version 0.0.1."""
    old = tmp_path / "old"
    shutil.copytree(gpt_run, old)
    (old / "config.json").write_text(json.dumps({"version": "0.0.1", "model": "gpt"}))
    with (
        zipfile.ZipFile(gpt_run / "model.keras") as source,
        zipfile.ZipFile(old / "model.keras", "w") as target,
    ):
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "config.json":
                data = data.replace(b"GPTModel", b"GPTModelV0")  # class and registered name
            target.writestr(item, data)
    before = snapshot(old)
    generate, export = run_all_here(["generate", old], ["export", old, "--no-xla"])
    assert_user_error(generate, "cannot load", "0.0.1")
    assert_user_error(export, "cannot load", "0.0.1")
    assert snapshot(old) == before


# ---------------------------------------------------------------- export
def test_export_errors_never_touch_existing_versions(gpt_run, tmp_path, a_file):
    out = tmp_path / "export"
    result = run_here("export", gpt_run, "--out", out, "--no-xla", "--version", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    before = snapshot(out)
    again, long, cold, unwritable, missing = run_all_here(
        ["export", gpt_run, "--out", out, "--no-xla", "--version", "1"],
        ["export", gpt_run, "--out", out, "--no-xla", "--max-new-tokens", "1000"],
        ["export", gpt_run, "--out", out, "--no-xla", "--temperature", "-2"],
        ["export", gpt_run, "--out", a_file / "sub", "--no-xla"],
        ["export", tmp_path / "missing.keras"],
    )
    assert_user_error(again, "already exists")
    assert_user_error(long, "`--max-new-tokens`")
    assert_user_error(cold, "`--temperature`")
    assert_user_error(unwritable, "Not a directory")
    assert_user_error(missing, "No such file or directory")
    assert snapshot(out) == before and sorted(os.listdir(out)) == ["1"]
    assert a_file.read_text() == "not a directory"


def test_export_a_model_it_cannot_serve(tmp_path):
    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Dense(1)(inputs)).save(tmp_path / "mine.keras")
    assert_user_error(
        run("export", tmp_path / "mine.keras"),
        "Functional",
        "GPTModel, BERTPretrainer or BERTClassifier",
    )
    assert sorted(os.listdir(tmp_path)) == ["mine.keras"]


# ---------------------------------------------------------------- plot
def test_plot_bad_inputs(gpt_run, tmp_path, a_file):
    pytest.importorskip("matplotlib")
    binary, empty = tmp_path / "binary", tmp_path / "empty"
    for broken, content in ((binary, b"\x00\xff\x00"), (empty, b"")):
        shutil.copytree(gpt_run, broken)
        (broken / "metrics.jsonl").write_bytes(content)
    results = run_all_here(
        ["plot", tmp_path / "missing"],
        ["plot", binary],
        ["plot", empty],
        ["plot", gpt_run, "--out", a_file / "sub"],
        ["plot", gpt_run, "--text", "   "],
    )
    assert_user_error(results[0], "No such run directory")
    assert_user_error(results[1], "line 1 is not JSON")
    assert_user_error(results[2], "no loss values")
    assert_user_error(results[3], "Not a directory")
    assert_user_error(results[4], "`--text`")
    assert not (gpt_run / "plots").exists() and a_file.read_text() == "not a directory"


# generate
# Named by their flags, as the user typed them, not by the Python API's names (`top_p`).
GENERATE_SETTINGS_ERRORS = [
    (["--temperature", "nan"], "`--temperature`"),
    (["--temperature", "-1"], "`--temperature`"),
    (["--temperature", "inf"], "`--temperature`"),
    (["--top-p", "0"], "`--top-p`"),
    (["--top-k", "-3"], "`--top-k`"),
    (["--num-samples", "0"], "`--num-samples` must be an integer >= 1, got 0."),
    (["--num-samples", "0", "--max-new-chars", "-2"], "`--max-new-chars`"),
]


def test_generate_checks_settings_before_loading_anything(tmp_path):
    # The source cannot be loaded: a bad setting must be reported before it is touched.
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"not a model")
    commands = [["generate", garbage, *args] for args, _ in GENERATE_SETTINGS_ERRORS]
    for result, (_, fragment) in zip(run_all_here(*commands), GENERATE_SETTINGS_ERRORS):
        assert_user_error(result, fragment)
        assert result.stdout == ""


def test_generate_on_a_bert_run(tmp_path):
    run_dir = tmp_path / "bert"
    run_dir.mkdir()
    config = {"version": tf_bigmodels.__version__, "model": "bert", "preset": "bert-test"}
    (run_dir / "config.json").write_text(json.dumps(config))
    assert_user_error(run("generate", run_dir), "'bert' run", "GPT run")


def test_generate_refuses_a_prompt_that_is_not_utf8(gpt_run):
    prompt = os.fsdecode(b"ROMEO\xff\xfe:")  # the bytes the shell passes, undecodable
    result = run("generate", gpt_run, "--prompt", prompt)
    assert_user_error(result, "`--prompt`", "UTF-8")
    assert result.stdout == "" and "ROMEO" not in result.stderr  # never echoed


def _printed_samples(stdout, prompt):
    """The texts of `--num-samples` output: '--- sample i ---', then prompt + text."""
    blocks = stdout.split("--- sample ")[1:]
    assert [block.split(" ---\n")[0] for block in blocks] == [
        str(i + 1) for i in range(len(blocks))
    ]
    texts = [block.split(" ---\n", 1)[1] for block in blocks]
    assert all(text.startswith(prompt) and text.endswith("\n") for text in texts)
    return [text[len(prompt) : -1] for text in texts]


def test_generate_samples_streams_and_counts_characters(gpt_run):
    common = ["generate", gpt_run, "--prompt", "你好", "--seed", "3"]
    # 40 tokens: longer than the model's 32-token context, so the context slides. The same seed
    # gives the same text in another process.
    again = run(*common, "--max-new-tokens", "40")
    one, three, chars = run_all_here(
        [*common, "--max-new-tokens", "40"],
        [*common, "--max-new-tokens", "40", "--num-samples", "3"],
        [*common, "--max-new-chars", "7"],
    )
    for result in (one, again, three, chars):
        assert result.returncode == 0, result.stderr[-2000:]
    assert one.stdout == again.stdout and one.stdout.startswith("你好")
    streamed = one.stdout[len("你好") : -1]
    samples = _printed_samples(three.stdout, "你好")
    assert len(samples) == 3 and samples[0] == streamed and len(set(samples)) == 3
    for text in (streamed, *samples, chars.stdout[:-1]):
        assert not text.endswith("\ufffd")  # a character cut off at the end is dropped
    assert len(chars.stdout[len("你好") : -1]) <= 7


def test_errors_name_the_flag_the_user_typed(gpt_run, tmp_path, capsys):
    """The Python API names a setting `max_batch_size`; the command, `--max-batch-size`
    (`generate`'s settings are checked above)."""
    from tf_bigmodels import cli
    from tf_bigmodels.serving import cli as serving_cli

    export = tmp_path / "gpt" / "1"  # found as an export; the settings are refused before loading
    export.mkdir(parents=True)
    (export / "saved_model.pb").touch()
    for argv, error in [
        (["export", str(gpt_run), "--temperature", "-1"], "`--temperature` must be a number"),
        (["serve", str(export.parent), "--max-batch-size", "0"], "`--max-batch-size` must be"),
        (["train", "gpt", "--seed", "99999999999"], "`--seed` must be an integer in [0, "),
    ]:
        assert cli.main(argv) == 2, argv
        assert f"tf-bigmodels {argv[0]}: error: {error}" in capsys.readouterr().err
    # `python -m tf_bigmodels.serving`, the server's command on its own, says the same.
    assert serving_cli.main([str(export.parent), "--batch-wait-ms", "-1"]) == 2
    assert "serve: error: `--batch-wait-ms` must be a number >= 0" in capsys.readouterr().err
    assert not (gpt_run / "export").exists()


def test_generate_reports_an_in_graph_check_in_one_line():
    from tf_bigmodels.export import streaming
    from tf_bigmodels.models import generation

    model = GPTModel(258, 32, 2, 64, 1, rate=0.0, max_length=32)
    settings = generation.GenerationSettings(4).as_tensors()
    settings["temperature"] = tf.constant(-1.0)
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        generation.generate_function(model)(tf.ragged.constant([[1, 2]]), settings)
    assert streaming._graph_error(caught.value).startswith("`temperature` must be >= 0")
