"""Round trips of every tokenizer on hard text: spaces, tabs, newlines, scripts, emoji, "▁".

`ByteTokenizer` and `SentencePieceTokenizer` are lossless: `detokenize(tokenize(s)) == s` for every
valid UTF-8 string, eagerly, inside `tf.function` and in a SavedModel loaded by a process that has
only tensorflow and tensorflow_text. `WordPieceTokenizer` is not (it lower-cases, splits off
punctuation and joins words with single spaces); what it does guarantee is checked instead.
"""

import json
import os
import random
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from tf_bigmodels.data import load_corpus
from tf_bigmodels.tokenizers import ByteTokenizer, SentencePieceTokenizer, WordPieceTokenizer

CASES = [
    "English and 中文 mixed",
    "  two  spaces\tand tab",
    " leading space",
    "trailing space ",
    " ",
    "     ",
    "\u3000全角空格\u3000与　标点，。",
    "line one\nline two\r\nthree\n\n",
    "a▁b",
    "▁",
    "▁▁ ▁ ",
    "▁leading and trailing▁",
    "Русский текст, 中文 and English 123",
    "emoji 😀🎉 family 👩‍👩‍👧 flag 🇨🇳 skin 👍🏽",
    "Ελληνικά, العربية, हिन्दी, 한국어, 日本語のテキスト",
    "",
    "\x00nul\x7f del",
    "tabs\t\t\tvertical\x0bfeed\x0c",
    "\ufffd replacement and \ufeff bom",
    "e\u0301 combining and é precomposed",
]

# Characters the random strings are made of: any code point but surrogates (not valid UTF-8),
# and, much more often, the ones that tokenizers get wrong.
_HARD = " \t\n\r\u3000▁▁ 床前明月光，。ЖжЯ😀🎉éa1"
_CHARACTERS = st.one_of(st.characters(blacklist_categories=("Cs",)), st.sampled_from(_HARD))
_STRINGS = st.lists(st.text(alphabet=_CHARACTERS, max_size=30), min_size=1, max_size=4)


def _chinese_without_spaces():
    # A corpus without a single space: too few for character_coverage to keep "▁" on its own.
    return [poem.replace(" ", "") for poem in load_corpus("tangshi")[:100]]


@pytest.fixture(scope="module")
def tokenizers():
    mixed = load_corpus("tangshi")[:100] + [
        "First Citizen: Before we proceed any further, hear me speak.",
        "Все счастливые семьи похожи друг на друга.",
    ]
    return {
        "byte": ByteTokenizer(),
        "sentencepiece_chinese": SentencePieceTokenizer.train(
            _chinese_without_spaces(), vocab_size=3000
        ),
        "sentencepiece_mixed": SentencePieceTokenizer.train(mixed, vocab_size=3000),
        "sentencepiece_bpe": SentencePieceTokenizer.train(mixed, vocab_size=3000, model_type="bpe"),
        "wordpiece": WordPieceTokenizer.train(
            [line for text in mixed for line in text.split("\n")], vocab_size=400, verbose=False
        ),
    }


LOSSLESS = ["byte", "sentencepiece_chinese", "sentencepiece_mixed", "sentencepiece_bpe"]

_GRAPH_ROUND_TRIPS = {}


def _round_trips(tokenizer):
    """The eager round trip and the same inside one traced `tf.function` (traced once)."""
    if id(tokenizer) not in _GRAPH_ROUND_TRIPS:
        _GRAPH_ROUND_TRIPS[id(tokenizer)] = tf.function(
            lambda s: tokenizer.detokenize(tokenizer.tokenize(s)),
            input_signature=[tf.TensorSpec([None], tf.string)],
        )
    in_graph = _GRAPH_ROUND_TRIPS[id(tokenizer)]
    eager = lambda strings: tokenizer.detokenize(tokenizer.tokenize(strings))  # noqa: E731
    return {"eager": eager, "tf.function": in_graph}


def _texts(tensor):
    return [text.decode("utf-8") for text in tensor.numpy()]


@pytest.mark.parametrize("name", LOSSLESS)
@pytest.mark.slow
def test_lossless_on_hard_cases_eagerly_and_in_graph(tokenizers, name):
    tokenizer = tokenizers[name]
    for mode, round_trip in _round_trips(tokenizer).items():
        assert _texts(round_trip(tf.constant(CASES))) == CASES, mode
    for text in CASES:  # one string at a time: scalar in, scalar out
        assert tokenizer.detokenize(tokenizer.tokenize(text)).numpy().decode("utf-8") == text


@pytest.mark.parametrize("name", LOSSLESS)
@settings(max_examples=20, deadline=None)
@given(strings=_STRINGS)
@pytest.mark.slow
def test_lossless_on_random_text_eagerly_and_in_graph(tokenizers, name, strings):
    for mode, round_trip in _round_trips(tokenizers[name]).items():
        assert _texts(round_trip(tf.constant(strings))) == strings, mode


def _check_word_piece(tokenizer, strings):
    ids = tokenizer.tokenize(tf.constant(strings))
    flat = ids.flat_values.numpy()
    assert ((flat >= 0) & (flat < tokenizer.vocab_size)).all()
    assert tokenizer.pad_id not in flat
    for mode, round_trip in _round_trips(tokenizer).items():
        texts = _texts(round_trip(tf.constant(strings)))
        for text, row in zip(texts, ids.to_list()):
            # Words joined by single spaces: no run, no leading or trailing space, no tab or
            # newline; one word per token at most.
            assert text == " ".join(text.split(" ")) and "  " not in text, (mode, text)
            assert text == text.strip() and not any(c in text for c in "\t\n\r"), (mode, text)
            assert len(text.split()) <= len(row)
            # What it spells tokenizes to the same ids, unless a word was unknown ("[UNK]" is
            # text of its own).
            if tokenizer.unk_id not in row:
                assert tokenizer.tokenize(text).numpy().tolist() == row, (mode, text)


def test_word_piece_guarantees_on_hard_cases(tokenizers):
    _check_word_piece(tokenizers["wordpiece"], CASES)


@settings(max_examples=20, deadline=None)
@given(strings=_STRINGS)
def test_word_piece_guarantees_on_random_text(tokenizers, strings):
    _check_word_piece(tokenizers["wordpiece"], strings)


# Runs in a fresh interpreter: only tensorflow and tensorflow_text are imported.
_SERVE_ROUND_TRIPS = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the tokenizer ops)
    loaded = tf.saved_model.load(sys.argv[1])
    texts = tf.constant(json.loads(sys.argv[2]))
    names = json.loads(sys.argv[3])
    assert not any(name.startswith("tf_bigmodels") for name in sys.modules)
    out = {}
    for name in names:
        ids = getattr(loaded, "encode_" + name)(texts)
        back = getattr(loaded, "decode_" + name)(ids)
        out[name] = {"ids": ids.to_list(), "texts": [t.decode("utf-8") for t in back.numpy()]}
    with open(sys.argv[4], "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)
""")


@pytest.mark.slow
def test_round_trips_through_a_saved_model_in_a_fresh_process(tokenizers, tmp_path):
    pool = list(_HARD) + [chr(c) for c in range(0x20, 0x3000, 7)] + ["\U0001f600", "\U00020000"]
    rng = random.Random(0)
    strings = CASES + [
        "".join(rng.choice(pool) for _ in range(rng.randrange(40))) for _ in range(100)
    ]
    module = tf.Module()
    for name, tokenizer in tokenizers.items():
        setattr(module, name, tokenizer)
        setattr(
            module,
            "encode_" + name,
            tf.function(tokenizer.tokenize, input_signature=[tf.TensorSpec([None], tf.string)]),
        )
        setattr(
            module,
            "decode_" + name,
            tf.function(
                tokenizer.detokenize,
                input_signature=[tf.RaggedTensorSpec([None, None], tf.int32, ragged_rank=1)],
            ),
        )
    tf.saved_model.save(module, str(tmp_path / "model"))
    out = tmp_path / "out.json"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _SERVE_ROUND_TRIPS,
            str(tmp_path / "model"),
            json.dumps(strings),
            json.dumps(list(tokenizers)),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    served = json.loads(out.read_text(encoding="utf-8"))
    for name, tokenizer in tokenizers.items():
        ids = tokenizer.tokenize(strings)
        assert served[name]["ids"] == ids.to_list(), name
        expected = strings if name in LOSSLESS else _texts(tokenizer.detokenize(ids))
        assert served[name]["texts"] == expected, name
