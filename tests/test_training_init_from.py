"""Starting a new run from trained weights (`init_from`), as against resuming the same run."""

import json
import logging

import keras
import numpy as np
import pytest

from tf_bigmodels import cli
from tf_bigmodels.data import load_corpus
from tf_bigmodels.models import GPTModel
from tf_bigmodels.training import RunConfig, load_run_tokenizer, run_config, task_for, train

SMALL = dict(
    preset="gpt-test",
    eval_steps=2,
    samples=0,
    export=False,
    verbose=0,
    log_every=1,
)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A SentencePiece GPT trained for 20 steps on 200 poems: the weights to start from."""
    root = tmp_path_factory.mktemp("source")
    (root / "poems").mkdir()
    for index, poem in enumerate(load_corpus("tangshi")[:200]):
        (root / "poems" / f"{index:03d}.txt").write_text(poem, encoding="utf-8")
    corpus = str(root / "poems" / "*.txt")
    config = RunConfig(
        **SMALL,
        corpus=corpus,
        tokenizer="sentencepiece",
        vocab_size=3000,
        steps=20,
        learning_rate=5e-3,
        out=str(root),
        name="source",
    )
    train(config)
    return root / "source", corpus


def _records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _snapshot(directory):
    return {p: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_first_step_loss_is_the_source_s_loss_on_that_batch(source, tmp_path):
    source_dir, corpus = source
    before = _snapshot(source_dir)
    config = RunConfig(
        **SMALL, corpus=corpus, init_from=str(source_dir), steps=2, out=str(tmp_path), name="ft"
    )
    result = train(config)
    # A new run: its own step count from 0, and the source's tokenizer, settings and shape.
    first = _records(result.run_dir)[0]
    assert first["step"] == 1 and result.step == 2
    assert load_run_tokenizer(result.run_dir).model_proto == (
        load_run_tokenizer(source_dir).model_proto
    )
    stored = json.loads((result.run_dir / "config.json").read_text())
    assert (stored["tokenizer"], stored["vocab_size"]) == ("sentencepiece", 3000)
    # The first step's loss is computed before its update: the source model's loss on the batch.
    task = task_for(run_config(result.run_dir))
    tokenizer = load_run_tokenizer(source_dir)
    train_data, _ = task.datasets(task.texts(), tokenizer)
    x, y = next(iter(train_data))
    source_model = keras.saving.load_model(source_dir / "model.keras")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, source_model(x))
    assert first["loss"] == pytest.approx(float(loss), rel=1e-5)
    # ... well below a new model's (about ln of the vocabulary size).
    assert first["loss"] < 0.9 * np.log(tokenizer.vocab_size)
    assert _snapshot(source_dir) == before  # the source is only read


@pytest.mark.slow
def test_a_keras_file_starts_a_run_too(source, tmp_path):
    source_dir, corpus = source
    config = RunConfig(
        **SMALL,
        corpus=corpus,
        init_from=str(source_dir / "model.keras"),
        steps=2,
        out=str(tmp_path),
        name="ft",
    )
    result = train(config)  # its run directory gives the tokenizer and the shape
    assert result.tokenizer.model_proto == load_run_tokenizer(source_dir).model_proto


@pytest.mark.parametrize(
    "overrides, fragments",
    [
        (dict(d_model=64), ["token_embedding", ", 32) in the source,", ", 64) here"]),
        (dict(num_layers=3), ["it has", "weights, this model"]),
        (dict(seq_len=64), ["(32, 32) in the source, (64, 32) here"]),
        (dict(tokenizer="byte"), ["`tokenizer` must be the tokenizer of `init_from`"]),
    ],
)
@pytest.mark.slow
def test_a_shape_the_source_cannot_fill_is_refused(source, tmp_path, overrides, fragments):
    source_dir, corpus = source
    config = RunConfig(
        **{**SMALL, **overrides},
        corpus=corpus,
        init_from=str(source_dir),
        steps=2,
        out=str(tmp_path),
        name="ft",
    )
    with pytest.raises(ValueError, match="init_from") as error:
        train(config)
    for fragment in fragments:
        assert fragment in str(error.value)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "ft" / "checkpoints").exists()


@pytest.mark.slow
def test_a_vocabulary_that_does_not_match_the_tokenizer_is_refused(tmp_path):
    model = GPTModel(300, 32, 2, 128, 2, rate=0.0, max_length=32)  # the byte tokenizer has 258
    model(np.zeros((1, 32), "int32"))
    model.save(tmp_path / "gpt.keras")
    (tmp_path / "text.txt").write_text("Some text to train on, line after line.\n" * 200)
    config = RunConfig(
        **SMALL,
        corpus=str(tmp_path / "text.txt"),
        init_from=str(tmp_path / "gpt.keras"),
        steps=2,
        out=str(tmp_path),
    )
    with pytest.raises(ValueError, match=r"\(300, 32\) in the source, \(258, 32\) here"):
        train(config)


def test_another_model_kind_is_refused_in_one_line_by_the_command(source, tmp_path, capsys):
    source_dir, corpus = source
    argv = ["train", "bert", "--preset", "bert-test", "--corpus", corpus, "--steps", "2"]
    argv += ["--init-from", str(source_dir), "--out", str(tmp_path), "--quiet"]
    assert cli.main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error
    assert "is a 'gpt' run; this run trains a 'bert' model." in error


@pytest.mark.slow
def test_rerunning_an_init_from_run_resumes_it_and_init_from_may_not_change(
    source, tmp_path, caplog
):
    source_dir, corpus = source
    config = dict(SMALL, corpus=corpus, out=str(tmp_path), name="ft", eval_every=2)
    train(RunConfig(**config, init_from=str(source_dir), steps=2))
    with caplog.at_level(logging.INFO, logger="tf_bigmodels"):
        result = train(RunConfig(**config, init_from=str(source_dir), steps=4))
    assert "Resuming" in caplog.text and result.step == 4
    assert [r["step"] for r in _records(result.run_dir) if "val_loss" in r] == [2, 4]
    # The stored init_from is the run's (a re-run without it continues the same run) ...
    assert train(RunConfig(**config, steps=4)).step == 4
    # ... and another source is another run.
    with pytest.raises(ValueError, match="init_from"):
        train(RunConfig(**config, init_from=str(source_dir / "model.keras"), steps=6))


def test_init_from_and_lora_rank_are_checked():
    with pytest.raises(ValueError, match="`lora_rank` must be None or an integer >= 1, got 0"):
        RunConfig(lora_rank=0).resolved()
    with pytest.raises(ValueError, match="`init_from`"):
        RunConfig(init_from="").resolved()
    args = cli.build_parser().parse_args(
        ["train", "gpt", "--init-from", "runs/poet", "--lora-rank", "4"]
    )
    assert (args.init_from, args.lora_rank) == ("runs/poet", 4)


def _keras_hub_bert_preset(directory, words):
    """A tiny keras-hub BERT preset written offline: backbone and WordPiece tokenizer."""
    import keras_hub

    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    keras_hub.models.BertTokenizer(vocabulary=vocabulary).save_to_preset(directory)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocabulary),
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=128,
        max_sequence_length=32,
    )
    backbone.save_to_preset(directory)
    return backbone, vocabulary


@pytest.mark.slow
def test_bert_starts_from_a_keras_hub_preset_directory(tmp_path):
    words = [
        "the",
        "a",
        "cat",
        "dog",
        "sat",
        "on",
        "mat",
        "ran",
        "far",
        "and",
        "then",
        "slept",
        ".",
        ",",
        "it",
        "was",
        "big",
        "small",
    ]
    backbone, vocabulary = _keras_hub_bert_preset(tmp_path / "preset", words)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(0)
    for index in range(12):
        lines = [" ".join(rng.choice(words, 12)) for _ in range(20)]
        (corpus / f"{index:02d}.txt").write_text("\n".join(lines))
    config = RunConfig(
        **{**SMALL, "preset": "bert-test"},
        model="bert",
        corpus=str(corpus / "*.txt"),
        init_from=str(tmp_path / "preset"),
        steps=2,
        learning_rate=1e-12,
        out=str(tmp_path),
    )
    result = train(config)
    # The preset's vocabulary, kept by the run (not one learned from the corpus).
    assert load_run_tokenizer(result.run_dir).vocabulary == tuple(vocabulary)
    # The encoder computes what the keras-hub backbone does (a learning rate of 1e-12 leaves
    # its weights as they were).
    ids = np.array([[2, 5, 6, 7, 3] + [0] * 27], "int32")
    mask = (ids > 0).astype("int32")
    inputs = {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": mask}
    expected = backbone(inputs)["sequence_output"].numpy()[:, :5]
    got = result.model.encoder(inputs)["sequence_output"].numpy()[:, :5]
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_a_keras_hub_gpt_preset_is_refused_for_its_tokenizer(tmp_path):
    import keras_hub

    keras_hub.models.GPT2Backbone(
        vocabulary_size=258,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=128,
        max_sequence_length=32,
    ).save_to_preset(tmp_path / "preset")
    (tmp_path / "text.txt").write_text("Some text to train on, line after line.\n" * 200)
    config = RunConfig(
        **SMALL,
        corpus=str(tmp_path / "text.txt"),
        init_from=str(tmp_path / "preset"),
        steps=2,
        out=str(tmp_path),
    )
    with pytest.raises(ValueError, match="tokenizer is not one tf_bigmodels has"):
        train(config)


@pytest.mark.slow
def test_lora_rank_trains_only_the_adapters_on_top_of_the_source(source, tmp_path, caplog):
    source_dir, corpus = source
    caplog.set_level(logging.INFO, logger="tf_bigmodels")
    config = RunConfig(
        **SMALL,
        corpus=corpus,
        init_from=str(source_dir),
        lora_rank=2,
        steps=2,
        out=str(tmp_path),
        name="lora",
    )
    result = train(config)
    model = result.model
    # Only the rank-2 adapters of the attention projections train: A (d, r) and B (r, out) for
    # the fused query/key/value projection (out = 3 d) and the output projection (out = d).
    trainable = model.trainable_weights
    assert trainable and all("lora" in w.path for w in trainable)
    d, layers = model.d_model, model.num_layers
    count = layers * (2 * d * 2 + 2 * (3 * d + d))
    assert sum(int(np.prod(w.shape)) for w in trainable) == count
    # One line each says what --init-from and --lora-rank did.
    assert f"Starting from {source_dir} (its model at step 20)." in caplog.messages
    assert any(m.startswith(f"LoRA adapters of rank 2: {count} trainable") for m in caplog.messages)
    # Everything frozen still holds the source's weights.
    source_model = keras.saving.load_model(source_dir / "model.keras")
    frozen = {w.path: w for w in model.non_trainable_weights}
    embedding = next(w for path, w in frozen.items() if "token_embedding" in path)
    expected = next(w for w in source_model.weights if "token_embedding" in w.path)
    np.testing.assert_array_equal(embedding.numpy(), expected.numpy())
