"""SentencePieceTokenizer: lossless round trips, in-graph ids, save/load, SavedModel.

Round trips of random text (eager, in-graph, fresh-process SavedModel) for every tokenizer are in
test_tokenizer_round_trip.py; a SentencePiece GPT exported and served Chinese in a fresh process,
equal to the model's own generation, in test_training_chinese.py.
"""

import io
import os
import unicodedata

import pytest
import sentencepiece as spm
import tensorflow as tf

from tf_bigmodels.data import lm_dataset, load_corpus
from tf_bigmodels.tokenizers import SentencePieceTokenizer

ENGLISH = [
    "First Citizen: Before we proceed any further, hear me speak.",
    "All: Speak, speak.  Two spaces,\ttabs and  trailing space ",
]
TEXTS = [
    "静夜思\n李白\n床前明月光，疑是地上霜。\n举头望明月，低头思故乡。\n",  # a poem
    "  Hello,  world!\n\n\tIndented line; 'quotes' & digits 0123.\n",  # English, spaces
    "我用 TensorFlow 2.21 训练 GPT，loss 降到 1.5 了！Great.",  # mixed
    "全角标点：，。！？「」『』（）《》、；…… ＡＢＣ１２３",  # full-width, NFKC would fold
    "生僻字𠀀与表情😀🎉，字节回退。",  # outside the vocabulary: byte pieces
    "",
    "\n",
    "\r\n\u3000 ",
]


@pytest.fixture(scope="module")
def tokenizer():
    return SentencePieceTokenizer.train(load_corpus("tangshi")[:300] + ENGLISH, vocab_size=4000)


def _round_trip(tok, strings):
    return [s.decode("utf-8") for s in tok.detokenize(tok.tokenize(strings)).numpy()]


def test_round_trip_is_exact_on_chinese_english_and_mixed_text(tokenizer):
    assert _round_trip(tokenizer, TEXTS) == TEXTS
    poems = load_corpus("tangshi")[-50:]  # not seen in training
    assert _round_trip(tokenizer, poems) == poems


def test_full_width_punctuation_and_newlines_are_kept(tokenizer):
    text = TEXTS[3]
    assert unicodedata.normalize("NFKC", text) != text  # what the default normaliser would do
    assert _round_trip(tokenizer, [text]) == [text]
    poem = TEXTS[0]
    ids = tokenizer.tokenize(poem).numpy().tolist()
    pieces = spm.SentencePieceProcessor(model_proto=tokenizer.model_proto)
    newline, comma, stop = (pieces.piece_to_id(p) for p in "\n，。")
    assert newline == 3  # right after the specials
    assert [ids.count(i) for i in (newline, comma, stop)] == [4, 2, 2]


def test_chinese_takes_far_fewer_tokens_than_bytes(tokenizer):
    poems = load_corpus("tangshi")[-200:]  # not seen in training
    tokens = int(tf.reduce_sum(tokenizer.tokenize(poems).row_lengths()))
    utf8_bytes = sum(len(p.encode("utf-8")) for p in poems)  # the byte tokenizer's count
    assert tokens < utf8_bytes / 2


def test_same_ids_inside_and_outside_tf_function_and_as_sentencepiece(tokenizer):
    encode = tf.function(
        lambda s: tokenizer.tokenize(s), input_signature=[tf.TensorSpec([None], tf.string)]
    )
    eager = tokenizer.tokenize(TEXTS).to_list()
    assert encode(tf.constant(TEXTS)).to_list() == eager
    reference = spm.SentencePieceProcessor(model_proto=tokenizer.model_proto)
    assert eager == [reference.encode(t) for t in TEXTS]
    assert tokenizer.tokenize(TEXTS[0]).numpy().tolist() == eager[0]  # a scalar string


@pytest.mark.slow
def test_lm_dataset_windows_spell_the_poems(tokenizer):
    poems = load_corpus("tangshi")[:40]
    stream = "".join(poem + "\n" for poem in poems)  # end-of-text ids detokenize to nothing
    x, y = next(iter(lm_dataset(poems, tokenizer, seq_len=48, batch_size=8, seed=1)))
    assert x.numpy()[:, 1:].tolist() == y.numpy()[:, :-1].tolist()
    assert tokenizer.end_id in x.numpy()  # documents are separated
    for text in tokenizer.detokenize(x).numpy():
        assert text.decode("utf-8").strip("\ufffd") in stream  # edges may cut a byte sequence


def test_special_ids(tokenizer):
    assert (tokenizer.unk_id, tokenizer.end_id, tokenizer.pad_id) == (0, 1, 2)
    assert tokenizer.vocab_size <= 4000
    ids = tokenizer.tokenize("月光").numpy().tolist()
    with_specials = [tokenizer.pad_id, *ids, tokenizer.end_id, tokenizer.pad_id]
    assert tokenizer.detokenize([with_specials]).numpy()[0].decode() == "月光"
    assert tokenizer.detokenize([[tokenizer.unk_id]]).numpy()[0].decode() == "\ufffd"
    lone_byte = 4 + 0xE4  # the first byte of a 3-byte character, alone: not UTF-8
    assert tokenizer.detokenize([[lone_byte]]).numpy()[0].decode() == "\ufffd"
    assert (
        tokenizer.tokenize([b"\xff\xfe ok"]).to_list()
        == tokenizer.tokenize(["\ufffd\ufffd ok"]).to_list()
    )


def test_save_load_is_equal_and_atomic(tokenizer, tmp_path):
    tokenizer.save(tmp_path / "tok")
    assert os.listdir(tmp_path / "tok") == ["sentencepiece.model"]  # no temporary file left
    loaded = SentencePieceTokenizer.load(tmp_path / "tok")
    assert loaded.model_proto == tokenizer.model_proto
    assert loaded.vocab_size == tokenizer.vocab_size
    assert loaded.tokenize(TEXTS).to_list() == tokenizer.tokenize(TEXTS).to_list()
    with pytest.raises(ValueError, match="holds no sentencepiece.model"):
        SentencePieceTokenizer.load(tmp_path)


def test_spaces_come_back_as_spaces_from_a_corpus_without_spaces():
    # Too few spaces for character_coverage to keep "▁": a space used to be spelled with the
    # byte pieces of "▁" and come back as "▁".
    poems = [poem.replace(" ", "") for poem in load_corpus("tangshi")[:100]]
    tokenizer = SentencePieceTokenizer.train(poems, vocab_size=3000)
    pieces = spm.SentencePieceProcessor(model_proto=tokenizer.model_proto)
    space = pieces.piece_to_id("\u2581")
    assert space != tokenizer.unk_id and not pieces.IsByte(space)
    texts = ["English and 中文 mixed", "  two  spaces\tand tab", "床前 明月 "]
    assert _round_trip(tokenizer, texts) == texts
    assert tokenizer.tokenize("前 月").numpy().tolist().count(space) == 1


def test_a_model_that_spells_spaces_with_bytes_is_named_when_loaded():
    # What train learned before "▁" was a required piece, on a corpus without spaces.
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["床前明月光", "疑是地上霜"]),
        model_writer=model,
        vocab_size=300,
        hard_vocab_limit=False,
        byte_fallback=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        eos_id=1,
        pad_id=2,
        bos_id=-1,
        unk_id=0,
        minloglevel=2,
    )
    with pytest.warns(UserWarning, match=r'no piece "\u2581", so .* come back as "\u2581"'):
        SentencePieceTokenizer(model.getvalue())


def test_a_literal_lower_block_character_stays_one(tokenizer):
    # SentencePiece writes a space as "▁" and decodes every "▁" piece as a space; a "▁" of the
    # text gets the byte pieces of its UTF-8 bytes, which decode to "▁".
    texts = ["a▁b", "▁", "▁▁ ▁", " ▁月▁ ", "\u2581\u2581"]
    assert _round_trip(tokenizer, texts) == texts
    pieces = spm.SentencePieceProcessor(model_proto=tokenizer.model_proto)
    ids = tokenizer.tokenize("月▁光").numpy().tolist()
    assert [pieces.id_to_piece(i) for i in ids[1:-1]] == ["<0xE2>", "<0x96>", "<0x81>"]
    assert pieces.decode(ids) == "月▁光"  # the saved model file alone decodes it too
    assert ids[:1] == tokenizer.tokenize("月").numpy().tolist()


def test_training_and_loading_print_nothing_on_stderr(capfd):
    # A model no other test has: tensorflow-text loads it afresh (it shares loaded models).
    texts = ["沉默的训练日志", "不要打印任何东西 quiet"]
    capfd.readouterr()
    tokenizer = SentencePieceTokenizer.train(texts, vocab_size=300)
    again = SentencePieceTokenizer(tokenizer.model_proto)
    ids = again.tokenize(texts)
    assert _round_trip(again, texts) == texts
    tf.function(again.detokenize)(ids)
    err = capfd.readouterr().err
    assert "precompiled_charsmap" not in err and "LOG(INFO)" not in err, err


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_save_gives_the_model_file_the_umasks_mode(tokenizer, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        tokenizer.save(tmp_path)
    finally:
        os.umask(old)
    assert oct((tmp_path / "sentencepiece.model").stat().st_mode & 0o777) == oct(mode)


def test_trainer_options_cannot_undo_losslessness():
    poems = load_corpus("tangshi")[:50]
    for option, value in [
        ("remove_extra_whitespaces", True),
        ("add_dummy_prefix", True),
        ("byte_fallback", False),
        ("normalization_rule_name", "nmt_nfkc"),
        ("user_defined_symbols", ["<sep>"]),
    ]:
        with pytest.raises(ValueError, match=rf"^`trainer_options` must not set \['{option}'\]"):
            SentencePieceTokenizer.train(poems, 3000, **{option: value})
    kept = SentencePieceTokenizer.train(poems, 3000, required_chars="Жж")
    pieces = spm.SentencePieceProcessor(model_proto=kept.model_proto)
    assert all(not pieces.IsUnknown(pieces.piece_to_id(c)) for c in "Жж\u2581")


def test_detokenize_refuses_ids_that_are_not_token_ids(tokenizer):
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`ids` must be integer token ids"):
        tokenizer.detokenize([[5, tokenizer.vocab_size]])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"(?s)got.*\b4294967368\b"):
        tokenizer.detokenize(tf.constant([2**32 + 72], tf.int64))  # not wrapped to 72
    with pytest.raises(TypeError, match=r"^`ids` must be integer .*, got dtype float32\.$"):
        tokenizer.detokenize([72.9])


def test_bad_arguments():
    poems = load_corpus("tangshi")[:300]
    with pytest.raises(ValueError, match=r"`vocab_size` must be at least \d+ for these texts"):
        SentencePieceTokenizer.train(poems, vocab_size=1000)
    with pytest.raises(ValueError, match="`vocab_size` must be an integer >= 261, got 100"):
        SentencePieceTokenizer.train(poems, vocab_size=100)
    with pytest.raises(ValueError, match=r"`model_type` must be one of \['unigram', 'bpe'\]"):
        SentencePieceTokenizer.train(poems, 4000, model_type="word")
    with pytest.raises(ValueError, match=r"`character_coverage` must be a number in \(0, 1\]"):
        SentencePieceTokenizer.train(poems, 4000, character_coverage=0)
    with pytest.raises(TypeError, match="`texts` must be a list of str, got one str"):
        SentencePieceTokenizer.train("床前明月光", 4000)
    with pytest.raises(ValueError, match="`texts` must hold some text"):
        SentencePieceTokenizer.train(["", "\n\n"], 4000)
    with pytest.raises(ValueError, match="do not parse as one"):
        SentencePieceTokenizer(b"not a model")


def test_tokenizer_survives_resetting_the_random_seed(tokenizer):
    before = tokenizer.tokenize(TEXTS).to_list()
    tf.random.set_seed(0)  # clears TensorFlow's eager kernel cache
    assert tokenizer.tokenize(TEXTS).to_list() == before
