"""Chinese in the training driver: SentencePiece runs on Tang poems, bits per character, the
shuffled 全唐诗 split, the gpt-poet preset, and generate / export of such a run."""

import json
import math
import os
import re
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

from tf_bigmodels import cli
from tf_bigmodels.data import bits_per_character, lm_split_counts, load_corpus
from tf_bigmodels.data.corpus import BUNDLED_CORPORA
from tf_bigmodels.tokenizers import ByteTokenizer, SentencePieceTokenizer
from tf_bigmodels.training import RunConfig, load_run_tokenizer, task_for
from tf_bigmodels.training.tasks import lm_training_texts

HAN = re.compile(r"[\u4e00-\u9fff]")
# A test-size model on 200 poems (one file each), a few steps: seconds.
TRAIN_POET = [
    "train", "gpt", "--preset", "gpt-test", "--tokenizer", "sentencepiece", "--vocab-size",
    "3000", "--steps", "30", "--eval-every", "15", "--eval-steps", "2", "--lr", "5e-3",
    "--samples", "1",
    "--sample-tokens", "16", "--quiet",
]  # fmt: skip


def _validation_records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if "val_loss" in r]


@pytest.fixture(scope="module")
def poet(tmp_path_factory):
    """A SentencePiece GPT run on 200 Tang poems, trained through the command line."""
    root = tmp_path_factory.mktemp("poet")
    (root / "poems").mkdir()
    for index, poem in enumerate(load_corpus("tangshi")[:200]):
        (root / "poems" / f"{index:03d}.txt").write_text(poem, encoding="utf-8")
    corpus = str(root / "poems" / "*.txt")
    argv = [*TRAIN_POET, "--corpus", corpus, "--out", str(root), "--name", "poet"]
    assert cli.main(argv) == 0
    return root / "poet", corpus, argv


@pytest.mark.parametrize("name", BUNDLED_CORPORA)
def test_train_takes_every_bundled_corpus_by_name(name, monkeypatch, tmp_path):
    import tf_bigmodels.training

    seen = []

    def fake_train(config):
        seen.append(config.resolved().corpus)
        raise ValueError("stopped before training")

    monkeypatch.setattr(tf_bigmodels.training, "train", fake_train)
    assert cli.main(["train", "gpt", "--corpus", name, "--out", str(tmp_path)]) == 2
    assert seen == [name]  # the name itself, which load_corpus reads as the bundled corpus


def test_gpt_poet_preset_is_sentencepiece_with_its_vocabulary():
    config = RunConfig(preset="gpt-poet", corpus="tangshi").resolved()
    assert (config.tokenizer, config.vocab_size, config.seq_len, config.d_model) == (
        "sentencepiece",
        8000,
        256,
        128,
    )
    assert RunConfig(preset="gpt-poet", vocab_size=4000).resolved().vocab_size == 4000
    byte = RunConfig(preset="gpt-poet", tokenizer="byte").resolved()
    assert (byte.tokenizer, byte.vocab_size) == ("byte", None)
    assert RunConfig(preset="gpt-nano").resolved().tokenizer == "byte"


def test_tangshi_validation_is_a_seeded_random_slice_of_the_poems():
    in_file_order = load_corpus("tangshi")
    texts = task_for(RunConfig(corpus="tangshi").resolved()).texts()
    assert sorted(texts) == sorted(in_file_order) and texts != in_file_order
    # The same order whatever the run's seed: every run validates on the same poems.
    assert task_for(RunConfig(corpus="tangshi", seed=7).resolved()).texts() == texts
    position = {poem: index for index, poem in enumerate(in_file_order)}
    held_out = [position[p] for p in texts[int(0.9 * len(texts)) :]]
    # From all over the file, not only its last tenth (which is 词 and songs).
    assert min(held_out) < len(texts) // 10 and max(held_out) > 0.9 * len(texts)
    assert sum(i < 0.9 * len(texts) for i in held_out) > 0.8 * len(held_out)
    # Other corpora keep their order.
    shakespeare = task_for(RunConfig().resolved()).texts()
    assert shakespeare == load_corpus("shakespeare")


def test_a_learned_vocabulary_never_sees_the_validation_text(tmp_path):
    poems = load_corpus("tangshi")[:150]
    # A character found only in the last documents, which lie in the validation split.
    texts = poems + ["龘龘龘，龘龘龘。\n" * 20] * 2
    assert not any("龘" in text for text in lm_training_texts(texts))
    config = RunConfig(preset="gpt-test", tokenizer="sentencepiece", vocab_size=3000).resolved()
    tokenizer = task_for(config).tokenizer(texts, tmp_path, save=False)
    # Spelled with its 3 UTF-8 byte pieces: the vocabulary has no piece for it.
    assert tokenizer.tokenize("龘").numpy().tolist() == [4 + b for b in "龘".encode()]
    learned_from_all = SentencePieceTokenizer.train(texts, 3000)
    assert len(learned_from_all.tokenize("龘").numpy()) == 1


def test_lm_training_texts_are_the_lines_lm_dataset_trains_on():
    texts = [
        "床前明月光\n疑是地上霜",
        "举头望明月，低头思故乡。\n",
        "春眠不觉晓\n处处闻啼鸟\n夜来",
    ] * 7
    training = lm_training_texts(texts)
    # With bytes, a Han character (or "，") is 3 tokens and 1 character, "\n" and the end of a
    # document 1 and 1: the split's tokens - characters is twice its other characters.
    tokens, characters = lm_split_counts(texts, ByteTokenizer(), "train")
    assert sum(len(t) - t.count("\n") for t in training) == (tokens - characters) // 2
    whole = "".join(t if t.endswith("\n") else t + "\n" for t in texts)
    assert whole.startswith("".join(training)) and all(t.endswith("\n") for t in training)


@pytest.mark.slow
def test_sentencepiece_run_logs_bits_per_character_of_its_validation_loss(poet):
    run_dir, corpus, _ = poet
    tokenizer = load_run_tokenizer(run_dir)
    assert isinstance(tokenizer, SentencePieceTokenizer)
    tokens, characters = lm_split_counts(load_corpus(corpus), tokenizer, "val")
    records = _validation_records(run_dir)
    assert [r["step"] for r in records] == [15, 30]
    for record in records:
        expected = bits_per_character(record["val_loss"], tokens, characters)
        assert record["val_bits_per_char"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.slow
def test_byte_run_bits_per_char_is_val_loss_in_bits_on_ascii(tmp_path, capsys):
    (tmp_path / "text.txt").write_text(
        "".join(f"Line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(300))
    )
    argv = [
        "train", "gpt", "--preset", "gpt-test", "--corpus", str(tmp_path / "text.txt"),
        "--steps", "4", "--eval-every", "2", "--eval-steps", "2", "--samples", "0",
        "--no-export", "--log-every", "2", "--out", str(tmp_path),
    ]  # fmt: skip
    assert cli.main(argv) == 0
    records = _validation_records(tmp_path / "gpt")
    assert len(records) == 2
    for record in records:
        # One byte a character, the end-of-text token counted as one character too.
        assert record["val_bits_per_char"] == pytest.approx(
            record["val_loss"] / math.log(2), rel=1e-12
        )
    output = capsys.readouterr().out
    last = records[-1]
    assert f"val_bits_per_char {last['val_bits_per_char']:.4f}" in output
    assert f"{last['val_bits_per_char']:.4f} bits per character" in output
    assert f"loss {last['val_loss']:.4f} per token" in output
    events = tf.compat.v1.train.summary_iterator  # TensorBoard holds it under "bits_per_char"
    names = {
        value.tag
        for path in (tmp_path / "gpt" / "logs" / "validation").iterdir()
        for event in events(str(path))
        for value in event.summary.value
    }
    assert "bits_per_char" in names


@pytest.mark.slow
def test_resume_reuses_the_run_s_tokenizer(poet, tmp_path, caplog):
    run_dir, corpus, argv = poet
    copy = tmp_path / "poet"
    subprocess.run(["cp", "-r", str(run_dir), str(copy)], check=True)
    before = (copy / "tokenizer" / "sentencepiece.model").read_bytes()
    steps = argv.index("--steps") + 1
    resumed = [*argv[:steps], "45", *argv[steps + 1 :]]
    resumed[resumed.index("--out") + 1] = str(tmp_path)
    with caplog.at_level("INFO", logger="tf_bigmodels"):
        assert cli.main(resumed) == 0
    assert "Resuming" in caplog.text and "Learning a" not in caplog.text
    assert (copy / "tokenizer" / "sentencepiece.model").read_bytes() == before
    assert [r["step"] for r in _validation_records(copy)] == [15, 30, 45]


@pytest.mark.slow
def test_generate_writes_chinese_with_the_run_s_tokenizer(poet, capsys):
    run_dir, _, _ = poet
    outputs = []
    for source in (run_dir, run_dir / "model.keras"):  # the run's SavedModel, its .keras file
        capsys.readouterr()
        args = ["generate", str(source), "--prompt", r"静夜思\n李白\n", "--seed", "0"]
        assert cli.main([*args, "--max-new-tokens", "24"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    assert outputs[0].startswith("静夜思\n李白\n")  # the escapes are newlines
    assert HAN.search(outputs[0][len("静夜思\n李白\n") :]), outputs[0]


_SERVE_GPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the SentencePiece ops)
    generate = tf.saved_model.load(sys.argv[1]).signatures["generate"]
    assert not any(name.startswith("tf_bigmodels") for name in sys.modules)
    completions = generate(
        prompts=tf.constant(json.loads(sys.argv[2])),
        max_new_tokens=tf.constant(24),
        temperature=tf.constant(1.0),
        top_k=tf.constant(0),
        top_p=tf.constant(1.0),
        seed=tf.constant(0),
    )["completions"]
    with open(sys.argv[3], "w") as f:
        json.dump([s.decode("utf-8") for s in completions.numpy()], f, ensure_ascii=False)
""")


@pytest.mark.slow
def test_exported_run_serves_chinese_in_a_fresh_process(poet, tmp_path):
    import keras

    run_dir, _, _ = poet
    out = tmp_path / "export"
    assert cli.main(["export", str(run_dir), "--out", str(out)]) == 0
    prompts = ["静夜思\n李白\n", "春晓\n孟浩然\n"]
    result = tmp_path / "served.json"
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.run(
        [sys.executable, "-c", _SERVE_GPT, str(out / "1"), json.dumps(prompts), str(result)],
        capture_output=True,
        text=True,
        timeout=600,
        env=environment,
    )
    assert process.returncode == 0, process.stderr[-4000:]
    served = json.loads(result.read_text(encoding="utf-8"))
    # The same sampling as the trained model with the run's tokenizer, in this process.
    model = keras.saving.load_model(run_dir / "model.keras")
    tokenizer = load_run_tokenizer(run_dir)
    prompt_ids = tokenizer.tokenize(prompts).to_list()
    generated = model.generate(
        prompt_ids,
        24,
        temperature=1.0,
        seed=0,
        end_id=tokenizer.end_id,
        pad_id=tokenizer.pad_id,
    ).to_list()
    # A prompt keeps its last max_length - max_new_tokens tokens (the context is 32 tokens).
    kept = [min(len(p), model.max_length - 24) for p in prompt_ids]
    expected = [
        tokenizer.detokenize([row[k:]]).numpy()[0].decode("utf-8").rstrip("\ufffd")
        for row, k in zip(generated, kept)
    ]
    assert served == expected
    assert all(HAN.search(text) for text in served), served


@pytest.mark.slow
def test_plot_run_tokenizes_with_the_run_s_tokenizer(poet, tmp_path):
    pytest.importorskip("matplotlib")
    from tf_bigmodels import plot

    run_dir, _, _ = poet
    text = "床前明月光，疑是地上霜。"
    pieces = load_run_tokenizer(run_dir).tokenize(text).numpy()
    assert len(pieces) != len(text.encode())  # pieces, not bytes
    maps = plot.plot_run(run_dir, tmp_path, text=text)["attention_maps"]
    assert maps.shape[1:] == (len(pieces), len(pieces))


@pytest.mark.slow
def test_export_takes_a_sentencepiece_tokenizer_directory(poet, tmp_path):
    run_dir, _, _ = poet
    # A .keras file outside its run directory, with the tokenizer given by --tokenizer.
    subprocess.run(["cp", str(run_dir / "model.keras"), str(tmp_path)], check=True)
    out = tmp_path / "export"
    argv = ["export", str(tmp_path / "model.keras"), "--out", str(out), "--no-xla"]
    assert cli.main([*argv, "--tokenizer", str(run_dir / "tokenizer")]) == 0
    loaded = tf.saved_model.load(str(out / "1"))
    ids = loaded.tokenize(tf.constant(["静夜思\n李白\n"]))
    expected = load_run_tokenizer(run_dir).tokenize(["静夜思\n李白\n"])
    assert ids.to_list() == expected.to_list()


@pytest.mark.slow
def test_train_reads_a_gbk_corpus_with_corpus_encoding(tmp_path, capsys):
    path = tmp_path / "poems-gbk.txt"
    path.write_bytes("\n\n".join(load_corpus("tangshi")[:60]).encode("gbk", errors="ignore"))
    argv = [
        "train", "gpt", "--preset", "gpt-test", "--corpus", str(path), "--steps", "2",
        "--eval-every", "2", "--eval-steps", "1", "--samples", "0", "--no-export",
        "--quiet", "--out", str(tmp_path),
    ]  # fmt: skip
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert "--corpus-encoding gbk" in error and "--corpus-errors replace" in error
    assert "encoding='gbk'" not in error and "errors='replace'" not in error
    assert cli.main([*argv, "--corpus-encoding", "gbk"]) == 0
    assert _validation_records(tmp_path / "gpt")[0]["val_bits_per_char"] > 0


def test_gpt_poet_preset_has_the_poetry_benchmark_s_settings(monkeypatch):
    import importlib.util
    import pathlib

    from tf_bigmodels.training import get_preset

    benchmarks = pathlib.Path(__file__).parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(benchmarks))  # for its `_timing`
    spec = importlib.util.spec_from_file_location("poetry_benchmark", benchmarks / "poetry.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    settings = module.SETTINGS
    preset = get_preset("gpt", "gpt-poet")
    assert preset.model == settings["model"]
    assert (preset.seq_len, preset.batch_size, preset.learning_rate, preset.warmup_steps) == (
        settings["seq_len"],
        settings["batch_size"],
        settings["learning_rate"],
        settings["warmup_steps"],
    )
    assert (preset.vocab_size, preset.decay) == (settings["sentencepiece_vocab_size"], "cosine")
