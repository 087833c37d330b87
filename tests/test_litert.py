"""LiteRT export and runner: equal logits, one stored embedding, greedy parity, reproducible
sampling, BERT, the int8 quality check, and the TensorFlow-free doc example.

A conversion takes seconds even for a tiny model (about ten on a loaded machine), and the shared
fixture trains a model and converts it twice, so every test that converts is marked slow; the
doc examples of `tf_bigmodels.litert` convert a tiny model in the everyday lane."""

import json
import os
import pathlib
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from helpers import drain

from tf_bigmodels.data import load_corpus
from tf_bigmodels.export import stream_text
from tf_bigmodels.litert import (
    LiteRTEncoder,
    LiteRTGenerator,
    export_bert_litert,
    export_gpt_litert,
    is_litert_source,
    sample_next_token,
)
from tf_bigmodels.litert.quality import compare, greedy_ids
from tf_bigmodels.models import BERTClassifier, BERTEncoder, GPTModel, compress_weights
from tf_bigmodels.tokenizers import ByteTokenizer, SentencePieceTokenizer, WordPieceTokenizer

ROOT = pathlib.Path(__file__).resolve().parents[1]
VOCAB, D_MODEL, MAX_LENGTH = 258, 32, 64
PROMPT = "ROMEO:"


@pytest.fixture(scope="module")
def trained():
    """A tiny byte-level GPT trained for a few steps on Shakespeare, and its text."""
    keras.utils.set_random_seed(0)
    text = load_corpus("shakespeare")[0][:20000]
    data = np.frombuffer(text.encode(), np.uint8).astype("int32")
    starts = np.arange(0, data.size - MAX_LENGTH - 1, 97)
    x = np.stack([data[s : s + MAX_LENGTH] for s in starts])
    y = np.stack([data[s + 1 : s + MAX_LENGTH + 1] for s in starts])
    model = GPTModel(VOCAB, D_MODEL, 2, 64, 2, rate=0.0, max_length=MAX_LENGTH)
    model.compile(
        keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    return model, text


@pytest.fixture(scope="module")
def exports(trained, tmp_path_factory):
    directory = tmp_path_factory.mktemp("litert")
    model, _ = trained
    return {
        w: export_gpt_litert(model, ByteTokenizer(), directory / f"gpt-{w}.tflite", weights=w)
        for w in ("float32", "int8")
    }


def _buffer_sizes(path):
    model = schema.Model.GetRootAs(pathlib.Path(path).read_bytes(), 0)
    return [model.Buffers(i).DataLength() for i in range(model.BuffersLength())]


@pytest.mark.slow
def test_float32_logits_equal_the_keras_model(trained, exports):
    model, text = trained
    ids = np.frombuffer(text[: 2 * MAX_LENGTH].encode(), np.uint8).astype("int32").reshape(2, -1)
    expected = np.asarray(model(ids))
    got = LiteRTGenerator(exports["float32"]).logits(ids)
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.slow
def test_int8_logits_are_close(trained, exports):
    model, text = trained
    ids = np.frombuffer(text[:MAX_LENGTH].encode(), np.uint8).astype("int32")[None]
    expected = np.asarray(model(ids))
    got = LiteRTGenerator(exports["int8"]).logits(ids)
    assert not np.allclose(got, expected, atol=1e-4)  # it is quantized
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()
    assert (got.argmax(-1) == expected.argmax(-1)).mean() > 0.9


@pytest.mark.slow
def test_the_token_embedding_is_stored_once(exports):
    table = VOCAB * D_MODEL  # no other matrix of the model has this many entries
    float32, int8 = _buffer_sizes(exports["float32"]), _buffer_sizes(exports["int8"])
    assert float32.count(4 * table) == 1
    assert int8.count(table) == 1 and int8.count(4 * table) == 0
    assert sum(int8) < 0.5 * sum(float32)


@pytest.mark.slow
def test_greedy_decoding_equals_generate(trained, exports):
    model, _ = trained
    prompt = list(PROMPT.encode())
    expected = model.generate([prompt], 40, temperature=0.0).to_list()
    assert LiteRTGenerator(exports["float32"]).generate([prompt], 40, temperature=0.0) == expected


@pytest.mark.slow
def test_sampling_is_reproducible_per_seed_and_streaming_gives_the_same_text(exports):
    generator = LiteRTGenerator(exports["int8"])
    settings = dict(temperature=1.0, top_k=20, top_p=0.95)
    one = generator.generate_text(PROMPT, 30, seed=7, **settings)
    assert one == "".join(generator.stream_text(PROMPT, 30, seed=7, **settings))
    assert one == generator.generate_text(PROMPT, 30, seed=7, **settings)
    assert one != generator.generate_text(PROMPT, 30, seed=8, **settings)
    prompt = list(PROMPT.encode())
    alone = generator.generate([prompt], 20, seed=3)
    pair = generator.generate([prompt, prompt], 20, seed=3)
    assert pair[0] == alone[0] and pair[1] != pair[0]  # copies of a prompt draw independently
    greedy = generator.generate([prompt], 20, temperature=0.0)
    assert generator.generate([prompt], 20, top_k=1, seed=5) == greedy


@pytest.mark.slow
def test_a_long_prompt_keeps_its_last_tokens(exports):
    generator = LiteRTGenerator(exports["float32"])
    prompt = list(range(100))
    (row,) = generator.generate([prompt], 10, temperature=0.0)
    assert row[: MAX_LENGTH - 10] == prompt[-(MAX_LENGTH - 10) :] and len(row) == MAX_LENGTH


def test_top_k_and_top_p_draw_only_from_the_kept_tokens():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    rng = np.random.default_rng(0)
    assert {sample_next_token(logits, 1.0, 2, 1.0, rng) for _ in range(200)} == {0, 1}
    assert {sample_next_token(logits, 1.0, 0, 0.7, rng) for _ in range(200)} == {0, 1}
    assert {sample_next_token(logits, 1.0, 0, 1.0, rng) for _ in range(400)} == {0, 1, 2, 3}


@pytest.mark.slow
def test_the_description_says_how_to_run_the_file(exports):
    path = exports["int8"]
    description = json.loads(pathlib.Path(path).with_suffix(".json").read_text())
    assert description["weights"] == "int8" and description["tflite"] == os.path.basename(path)
    assert description["special_ids"] == {"end_id": 256, "pad_id": 257}
    assert description["tokenizer"]["kind"] == "byte"
    assert set(description["signatures"]) == {"prefill", "decode", "logits"}
    runner = LiteRTGenerator(path).interpreter.get_signature_list()
    assert set(runner["decode"]["inputs"]) == {
        "token_ids",
        "positions",
        "key_mask",
        "key_0",
        "value_0",
        "key_1",
        "value_1",
    }
    assert is_litert_source(path) and not is_litert_source(os.path.dirname(path))


@pytest.mark.slow
def test_bad_arguments_are_refused_before_converting(tmp_path):
    model = GPTModel(VOCAB, D_MODEL, 2, 64, 1, max_length=MAX_LENGTH)
    model.build((None, None))
    with pytest.raises(ValueError, match="`weights` must be one of"):
        export_gpt_litert(model, ByteTokenizer(), tmp_path / "a.tflite", weights="bfloat16")
    with pytest.raises(ValueError, match="`path` must end in '.tflite'"):
        export_gpt_litert(model, ByteTokenizer(), tmp_path / "a.bin")
    with pytest.raises(ValueError, match="`model` must hold float32 weights"):
        export_gpt_litert(compress_weights(model, "int8"), ByteTokenizer(), tmp_path / "a.tflite")
    vocabulary = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hi"])
    with pytest.raises(TypeError, match="`tokenizer` must be a ByteTokenizer"):
        export_gpt_litert(model, vocabulary, tmp_path / "a.tflite")
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_the_quality_check_reports_loss_and_first_difference(trained, exports):
    _, text = trained
    result = compare(exports["float32"], exports["int8"], text[-5000:], prompt=PROMPT, windows=8)
    losses = result["val_loss"]
    assert 0 < losses["float32"] < np.log(VOCAB)  # trained: better than uniform
    assert abs(result["relative_change"]) < 0.05
    assert result["new_tokens"] == 200  # beyond the context of 64: in windows
    first = result["first_difference"]
    assert first is None or 0 <= first < result["new_tokens"]
    assert result["greedy_text"]["float32"]


@pytest.mark.slow
def test_a_stream_returns_its_token_count_and_whether_the_end_token_ended_it(exports):
    generator = LiteRTGenerator(exports["float32"])
    prompt = list(PROMPT.encode())
    # A space as the end token ends this text early; with none, the limit ends it.
    for end_id, ended in ((ord(" "), True), (None, False)):
        ids = list(generator.stream_ids(prompt, 40, seed=3, end_id=end_id))
        if ended:
            assert ids[-1] == ord(" ") and len(ids) < 40
        else:
            assert len(ids) == 40
        text, end = drain(generator.stream_text(PROMPT, 40, seed=3, end_id=end_id))
        assert end == (len(ids) - ended, ended)
        assert text == generator.tokenizer.decode(ids[: len(ids) - ended]).rstrip("\ufffd")


@pytest.mark.slow
def test_greedy_text_past_the_context_slides_as_stream_text_does(trained, exports):
    model, _ = trained
    generator = LiteRTGenerator(exports["float32"])
    ids = greedy_ids(generator, list(PROMPT.encode()), 150)
    assert len(ids) == 150 and generator.end_id not in ids
    expected = "".join(stream_text(model, PROMPT, 150, temperature=0.0))
    assert generator.tokenizer.decode(ids) == expected


@pytest.mark.slow
def test_bert_encode_and_classify_equal_the_keras_model(tmp_path):
    keras.utils.set_random_seed(1)
    encoder = BERTEncoder(50, 32, 2, 64, 2, rate=0.0, max_length=16)
    classifier = BERTClassifier(encoder, 3, rate=0.0)
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(45)]
    tokenizer = WordPieceTokenizer(vocabulary)
    inputs = {
        "token_ids": np.array([[2, 7, 9, 3, 0, 0], [2, 11, 12, 13, 14, 3]], np.int32),
        "segment_ids": np.array([[0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1]], np.int32),
        "padding_mask": np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], np.int32),
    }
    expected, logits = encoder(inputs), np.asarray(classifier(inputs))
    path = export_bert_litert(classifier, tokenizer, tmp_path / "bert.tflite")
    assert (tmp_path / "bert.vocab.txt").read_text().split("\n")[:2] == ["[PAD]", "[UNK]"]
    bert = LiteRTEncoder(path)
    got = bert.encode(**inputs)
    np.testing.assert_allclose(got["pooled_output"], expected["pooled_output"], atol=1e-4)
    real = inputs["padding_mask"].astype(bool)
    np.testing.assert_allclose(
        got["sequence_output"][real], np.asarray(expected["sequence_output"])[real], atol=1e-4
    )
    classified = bert.classify(**inputs)
    np.testing.assert_allclose(classified["logits"], logits, atol=1e-4)
    np.testing.assert_allclose(classified["probabilities"].sum(-1), 1.0, atol=1e-5)
    small = LiteRTEncoder(
        export_bert_litert(classifier, tokenizer, tmp_path / "bert8.tflite", weights="int8")
    )
    assert np.abs(small.classify(**inputs)["logits"] - logits).max() < 0.1


@pytest.mark.slow
def test_the_doc_example_runs_without_tensorflow(exports, tmp_path):
    source = (ROOT / "docs" / "litert.md").read_text(encoding="utf-8")
    block = re.search(r"greedy decoding is:\n\n```py\n(.*?)```", source, re.S).group(1)
    assert len(block.strip().splitlines()) <= 20
    for suffix in (".tflite", ".json"):
        os.link(pathlib.Path(exports["float32"]).with_suffix(suffix), tmp_path / f"gpt{suffix}")
    check = "\nimport sys\nassert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
    completed = subprocess.run(
        [sys.executable, "-c", block + check],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    generator = LiteRTGenerator(exports["float32"])
    new = MAX_LENGTH - len(PROMPT)  # the example decodes up to the context, past end tokens
    expected = PROMPT + generator.generate_text(PROMPT, new, temperature=0.0, end_id=None)
    assert completed.stdout.rstrip("\n") == expected


@pytest.mark.slow
def test_a_sentencepiece_gpt_carries_its_model_file_and_decodes_text(tmp_path):
    poems = load_corpus("tangshi")[:100]
    tokenizer = SentencePieceTokenizer.train(poems, vocab_size=3000)
    keras.utils.set_random_seed(2)
    model = GPTModel(tokenizer.vocab_size, D_MODEL, 2, 64, 1, rate=0.0, max_length=MAX_LENGTH)
    path = export_gpt_litert(model, tokenizer, tmp_path / "poet.tflite", weights="int8")
    assert (tmp_path / "poet.sentencepiece.model").read_bytes() == tokenizer.model_proto
    generator = LiteRTGenerator(path)
    prompt = "床前明月光"
    assert generator.tokenizer.encode(prompt) == tokenizer.tokenize(prompt).numpy().tolist()
    ids = generator.generate([generator.tokenizer.encode(prompt)], 20, temperature=0.0)[0]
    new = [i for i in ids[len(generator.tokenizer.encode(prompt)) :] if i != tokenizer.end_id]
    text = generator.generate_text(prompt, 20, temperature=0.0)
    assert text == tokenizer.detokenize(new).numpy().decode().rstrip("\ufffd")


@pytest.mark.slow
def test_prefill_of_left_padded_prompts_equals_each_prompt_alone(exports):
    prefill = LiteRTGenerator(exports["float32"]).interpreter.get_signature_runner("prefill")
    short, long = list(b"To be"), list(PROMPT.encode()) + [32]
    padded = np.array([[0] * (len(long) - len(short)) + short, long], np.int32)
    mask = np.arange(len(long)) >= (len(long) - np.array([[len(short)], [len(long)]]))
    together = prefill(token_ids=padded, padding_mask=mask.astype(np.int32))
    for row, prompt in enumerate((short, long)):
        ids = np.array([prompt], np.int32)
        alone = prefill(token_ids=ids, padding_mask=np.ones_like(ids))
        np.testing.assert_allclose(together["logits"][row], alone["logits"][0], atol=1e-5)
        real = together["key_1"][row][:, -len(prompt) :]
        np.testing.assert_allclose(real, alone["key_1"][0], atol=1e-5)


@pytest.mark.slow
def test_the_copying_decode_path_gives_the_same_tokens(exports):
    prompt = list(PROMPT.encode())
    generator = LiteRTGenerator(exports["float32"])
    expected = generator.generate([prompt], 30, temperature=0.0)
    generator._decode._wrapper = None  # as with an ai_edge_litert without the wrapper calls
    assert generator.generate([prompt], 30, temperature=0.0) == expected


@pytest.mark.slow
def test_the_command_line_exports_and_generates_from_a_tflite_file(trained, tmp_path, capsys):
    from tf_bigmodels.cli import main

    model, _ = trained
    model.save(tmp_path / "model.keras")
    out = tmp_path / "gpt.tflite"
    # A decoding setting belongs to the runner, not to a LiteRT file: refused before any work.
    assert (
        main(["export", str(tmp_path / "model.keras"), "--format", "litert", "--top-k", "5"]) == 2
    )
    assert "`--top-k` must not be given with format='litert'" in capsys.readouterr().err
    assert not out.exists()
    assert (
        main(["export", str(tmp_path / "model.keras"), "--format", "litert", "--out", str(out)])
        == 0
    )
    assert f"LiteRT: {out}" in capsys.readouterr().out
    assert main(["generate", str(out), "--prompt", PROMPT, "--max-new-tokens", "20",
                 "--temperature", "0"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    expected = LiteRTGenerator(out).generate_text(PROMPT, 20, temperature=0.0)
    assert printed == PROMPT + expected + "\n"
    assert main(["generate", str(out), "--num-samples", "2"]) == 2
