"""Corpus loading and the GPT / BERT tf.data pipelines: windows, splits, masking statistics."""

import configparser
import fnmatch
import hashlib
import importlib.resources
import pathlib
import random
import re

import numpy as np
import pytest
import tensorflow as tf

from tf_bigmodels.data import (
    LabelledCorpus,
    bert_pretraining_dataset,
    lm_dataset,
    load_corpus,
    load_labelled_corpus,
)
from tf_bigmodels.tokenizers import ByteTokenizer, Tokenizer, WordPieceTokenizer

BYTES = ByteTokenizer()


# ---- load_corpus -------------------------------------------------------------------------------


def test_shakespeare_is_100_documents_that_rebuild_the_file():
    docs = load_corpus("shakespeare")
    assert len(docs) == 100 and docs[0].startswith("First Citizen:")
    assert len("\n\n".join(docs)) == 1115394  # characters of tinyshakespeare.txt
    assert max(map(len, docs)) < 2 * min(map(len, docs))


def test_files_globs_and_separator(tmp_path):
    (tmp_path / "a.txt").write_text("alpha\n\nbeta", encoding="utf-8")
    (tmp_path / "b.txt").write_text("你好", encoding="utf-8")
    assert load_corpus(str(tmp_path / "*.txt")) == ["alpha\n\nbeta", "你好"]
    assert load_corpus([tmp_path / "b.txt", tmp_path / "a.txt"]) == ["你好", "alpha\n\nbeta"]
    assert load_corpus(tmp_path / "a.txt", document_separator="\n\n") == ["alpha", "beta"]


def test_load_corpus_bad_input(tmp_path):
    with pytest.raises(ValueError, match="got 'nope.txt', which is not an existing file"):
        load_corpus("nope.txt")
    with pytest.raises(ValueError, match="a glob that matches no file"):
        load_corpus(str(tmp_path / "*.txt"))
    with pytest.raises(TypeError, match=r"`source` must be one of \['shakespeare', 'tangshi'"):
        load_corpus(3)
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="holds no text"):
        load_corpus(tmp_path / "empty.txt")
    (tmp_path / "gbk.txt").write_bytes("你好".encode("gbk"))
    with pytest.raises(
        ValueError, match=r"gbk.txt', which is not valid UTF-8 \(byte 0xc4 at offset 0"
    ):
        load_corpus(tmp_path / "gbk.txt")
    assert "\ufffd" in load_corpus(tmp_path / "gbk.txt", errors="replace")[0]
    with pytest.raises(
        ValueError, match=r"`errors` must be one of \['strict', 'replace'\], got 'ignore'"
    ):
        load_corpus("shakespeare", errors="ignore")
    with pytest.raises(ValueError, match="`document_separator` must be None or a non-empty str"):
        load_corpus(tmp_path / "gbk.txt", document_separator="")
    with pytest.raises(ValueError, match="`encoding` must be a text encoding Python knows"):
        load_corpus(tmp_path / "gbk.txt", encoding="klingon")


@pytest.mark.parametrize("encoding", ["rot13", "hex", "base64", "zlib", "bz2", "uu"])
def test_load_corpus_refuses_codecs_that_are_not_text_encodings(tmp_path, encoding):
    (tmp_path / "a.txt").write_text("some text")
    message = rf"^`encoding` must be a text encoding .*, got '{encoding}', a codec that does not"
    with pytest.raises(ValueError, match=message):
        load_corpus(tmp_path / "a.txt", encoding=encoding)


def test_load_corpus_reads_gbk_files(tmp_path):
    (tmp_path / "gbk.txt").write_bytes("床前明月光，疑是地上霜。".encode("gbk"))
    assert load_corpus(tmp_path / "gbk.txt", encoding="gbk") == ["床前明月光，疑是地上霜。"]


# ---- lm_dataset --------------------------------------------------------------------------------


def _numbered_text(lines):
    return "".join(f"{i:06d}\n" for i in range(lines))  # 7 bytes per line


def _line_numbers(windows):
    """Whole 6-digit line numbers seen in byte windows [n, seq_len]."""
    found = set()
    for row in windows:
        found.update(
            int(m) for m in re.findall(rb"(?<![0-9])[0-9]{6}(?![0-9])", bytes(row.tolist()))
        )
    return found


def _all(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


def test_lm_windows_shift_by_one_and_have_static_shapes():
    ds = lm_dataset(load_corpus("shakespeare")[:10], BYTES, seq_len=64, batch_size=12)
    assert ds.element_spec[0].shape == (12, 64) and ds.element_spec[0].dtype == tf.int32
    x, y = _all(ds)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    # and y's last token is the stream's next token: every window's x[0] is some y[-1]
    assert set(x[:, 0].tolist()) & set(y[:, -1].tolist())


def test_lm_split_is_by_position_and_no_window_crosses_it():
    text = _numbered_text(3000)
    x_train, _ = _all(lm_dataset([text], BYTES, seq_len=20, batch_size=4))
    x_val, y_val = _all(lm_dataset([text], BYTES, seq_len=20, batch_size=4, split="val"))
    train, val = _line_numbers(x_train), _line_numbers(np.concatenate([x_val, y_val]))
    assert max(train) < min(val)
    assert abs(min(val) - 2700) <= 1  # 90% of the lines
    # every window of each side is there: (tokens - 1) // seq_len, rounded down to whole batches
    assert len(x_train) == (2700 * 7 - 1) // 20 // 4 * 4
    assert len(x_val) == (300 * 7 + 1 - 1) // 20 // 4 * 4  # + the end-of-text token


def test_lm_seeds():
    docs = load_corpus("shakespeare")[:5]
    first = lambda ds: next(iter(ds))[0].numpy()  # noqa: E731
    a, b = lm_dataset(docs, BYTES, 32, 8, seed=1), lm_dataset(docs, BYTES, 32, 8, seed=1)
    np.testing.assert_array_equal(_all(a)[0], _all(b)[0])
    assert not np.array_equal(first(a), first(lm_dataset(docs, BYTES, 32, 8, seed=2)))
    epoch1, epoch2 = _all(a)[0], _all(a)[0]
    assert not np.array_equal(epoch1, epoch2)  # a new order each epoch, of the same windows
    # (up to the remainder that drop_remainder leaves out, fewer than one batch)
    assert len({tuple(r) for r in epoch1} ^ {tuple(r) for r in epoch2}) <= 2 * 7


def test_lm_streams_files_with_end_of_text_between_documents(tmp_path):
    (tmp_path / "a.txt").write_text(_numbered_text(400))
    (tmp_path / "b.txt").write_text(_numbered_text(400))
    x, y = _all(lm_dataset(tmp_path / "*.txt", BYTES, seq_len=16, batch_size=4))
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    assert (x == BYTES.end_id).sum() == 1  # after a.txt; b.txt ends in the "val" split
    for split in ("train", "val"):
        x_paths, _ = _all(
            lm_dataset([tmp_path / "a.txt", tmp_path / "b.txt"], BYTES, 16, 4, split=split)
        )
        x_docs, _ = _all(lm_dataset([_numbered_text(400)] * 2, BYTES, 16, 4, split=split))
        assert {tuple(r) for r in x_paths} == {tuple(r) for r in x_docs}


def test_lm_documents_are_read_exactly_as_the_same_text_in_files(tmp_path):
    # Documents are split into lines in Python, files by tf.data: the two must give one stream,
    # window for window and in the same shuffled order, blank lines and multi-byte text included.
    documents = [
        f"第{i}首\n\n床前明月光，疑是地上霜。\nline {i}\n" * (i % 3 + 1) for i in range(60)
    ]
    paths = []
    for i, document in enumerate(documents):
        paths.append(tmp_path / f"{i:02d}.txt")
        paths[-1].write_text(document, encoding="utf-8")
    for split in ("train", "val"):
        from_files = _all(lm_dataset(paths, BYTES, 16, 4, split=split, seed=5))
        from_documents = _all(lm_dataset(documents, BYTES, 16, 4, split=split, seed=5))
        np.testing.assert_array_equal(from_files[0], from_documents[0])
        np.testing.assert_array_equal(from_files[1], from_documents[1])


def test_lm_with_word_piece_uses_sep_between_documents():
    tok = WordPieceTokenizer.train(load_corpus("shakespeare")[:3], vocab_size=300, verbose=False)
    x, _ = _all(lm_dataset(load_corpus("shakespeare")[:3], tok, seq_len=32, batch_size=4))
    assert (x == tok.sep_id).any() and x.max() < tok.vocab_size


def test_lm_input_context_shards_disjoint_windows():
    docs = [_numbered_text(2000)]
    whole, _ = _all(lm_dataset(docs, BYTES, 14, 8, split="val"))
    shards = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(2, pipeline_id, num_replicas_in_sync=2)
        ds = lm_dataset(docs, BYTES, 14, 8, split="val", input_context=context)
        assert ds.element_spec[0].shape == (4, 14)  # per-replica batch
        shards.append({tuple(r) for r in _all(ds)[0]})
    assert not shards[0] & shards[1]
    assert shards[0] | shards[1] <= {tuple(r) for r in whole}
    assert len(shards[0] | shards[1]) >= len(whole) - 8


def test_lm_dataset_reads_only_what_one_batch_needs_before_it_returns():
    # The check that the split holds one batch tokenizes it until it does, not to its end: a
    # long corpus starts training at once (a short split is counted whole, for its error).
    tokenized = []

    class Counting(ByteTokenizer):
        def tokenize(self, texts):
            count = tf.py_function(
                lambda n: tokenized.append(int(n)) or 0, [tf.size(texts)], tf.int32
            )
            with tf.control_dependencies([count]):
                return super().tokenize(tf.identity(texts))

    docs = load_corpus("shakespeare")
    lines = sum(doc.count("\n") + 1 for doc in docs)  # about 40,000, 36,000 of them "train"
    dataset = lm_dataset(docs, Counting(), seq_len=64, batch_size=12)
    assert 0 < sum(tokenized) < lines // 10
    x, _ = next(iter(dataset))
    assert x.shape == (12, 64)


def test_lm_bad_input(tmp_path):
    with pytest.raises(ValueError, match="^`texts` must hold .* got an empty list.$"):
        lm_dataset([], BYTES, 8, 2)
    with pytest.raises(ValueError, match=r"texts too short.*seq_len=64.*batch_size=2"):
        lm_dataset(["a short text"], BYTES, 64, 2)
    # A text that is merely too short for the window says which seq_len would fit, and how to
    # train on a small text without learning it by heart.
    with pytest.raises(ValueError, match=r"\(seq_len=64 fits this batch_size\).*--dropout 0.2"):
        lm_dataset(["x" * 1200], BYTES, 128, 16)
    with pytest.raises(
        ValueError,
        match="`texts` must be an existing file.*, got '.*missing.txt', which is not an existing",
    ):
        lm_dataset(tmp_path / "missing.txt", BYTES, 8, 2)
    with pytest.raises(TypeError, match="got one str"):
        lm_dataset("shakespeare", BYTES, 8, 2)
    with pytest.raises(ValueError, match=r"^`split` must be one of \['train', 'val'\], got 'test'"):
        lm_dataset(["text"], BYTES, 8, 2, split="test")
    with pytest.raises(ValueError, match="^`seq_len` must be an integer >= 1, got 0.$"):
        lm_dataset(["text"], BYTES, 0, 2)
    with pytest.raises(ValueError, match="^`batch_size` must be an integer >= 1, got 2.0.$"):
        lm_dataset(["text"], BYTES, 8, 2.0)
    with pytest.raises(TypeError, match="^`tokenizer` must be a Tokenizer .*, got str.$"):
        lm_dataset(["text"], "bytes", 8, 2)
    # Invalid UTF-8 inside the text is replaced, not fatal.
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe" + b"abc\n" * 200)
    x, _ = _all(lm_dataset(tmp_path / "bad.txt", BYTES, 8, 2))
    assert (x == 0xEF).any()  # first byte of U+FFFD


# ---- bert_pretraining_dataset ------------------------------------------------------------------

NUM_DOCS = 150
WORDS = [f"w{k}" for k in range(NUM_DOCS)]
SYNTHETIC = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + WORDS)


def _synthetic_documents():
    """Document k says only the word w<k>, so every token tells which document it came from."""
    rng = random.Random(0)
    return [
        " ".join(" ".join([word] * rng.randint(2, 9)) + " ." for _ in range(60)) for word in WORDS
    ]


def _unmasked(features, labels):
    """Original token ids (mask positions put back), as numpy [batch, seq_len]."""
    ids = features["token_ids"].numpy().copy()
    for row, positions, originals, weights in zip(
        ids,
        features["mask_positions"].numpy(),
        labels["mask_ids"].numpy(),
        labels["mask_weights"].numpy(),
    ):
        real = weights > 0
        row[positions[real]] = originals[real]
    return ids


@pytest.fixture(scope="module")
def shakespeare_word_piece():
    return WordPieceTokenizer.train(load_corpus("shakespeare")[:20], vocab_size=1000, verbose=False)


@pytest.mark.slow
def test_bert_masking_statistics(shakespeare_word_piece):
    tok = shakespeare_word_piece
    ds = bert_pretraining_dataset(
        load_corpus("shakespeare")[:20], tok, seq_len=128, batch_size=16, seed=3
    )
    assert ds.element_spec[0]["token_ids"].shape == (16, 128)
    assert ds.element_spec[1]["mask_weights"].dtype == tf.float32
    chosen = tokens = masked = randomised = kept = 0
    for _ in range(2):  # two epochs: masks differ, statistics pool
        for features, labels in ds:
            originals = _unmasked(features, labels)
            for i in range(len(originals)):
                real = features["padding_mask"].numpy()[i] == 1
                n = int(np.sum(real & ~np.isin(originals[i], [tok.cls_id, tok.sep_id])))
                weights = labels["mask_weights"].numpy()[i]
                positions = features["mask_positions"].numpy()[i][weights > 0]
                assert len(positions) == min(20, max(1, round(0.15 * n)))
                assert real[positions].all()
                assert not np.isin(originals[i][positions], [tok.cls_id, tok.sep_id]).any()
                now = features["token_ids"].numpy()[i][positions]
                was = originals[i][positions]
                masked += np.sum(now == tok.mask_id)
                kept += np.sum(now == was)
                randomised += np.sum((now != was) & (now != tok.mask_id))
                chosen += len(positions)
                tokens += n
    assert abs(chosen / tokens - 0.15) < 0.01
    assert abs(masked / chosen - 0.8) < 0.02
    assert abs(randomised / chosen - 0.1) < 0.02
    assert abs(kept / chosen - 0.1) < 0.02


def test_bert_pairs_next_sentence_labels_and_layout():
    ds = bert_pretraining_dataset(
        _synthetic_documents(),
        SYNTHETIC,
        seq_len=16,
        batch_size=64,
        max_predictions_per_seq=3,
        dupe_factor=1,
    )
    labels_seen, count = [], 0
    for features, labels in ds:
        originals = _unmasked(features, labels)
        for ids, segments, mask, label in zip(
            originals,
            features["segment_ids"].numpy(),
            features["padding_mask"].numpy(),
            labels["next_sentence_labels"].numpy(),
        ):
            ids, segments = ids[mask == 1], segments[mask == 1]
            seps = np.flatnonzero(ids == SYNTHETIC.sep_id)
            assert ids[0] == SYNTHETIC.cls_id and len(seps) == 2 and seps[1] == len(ids) - 1
            assert (segments[: seps[0] + 1] == 0).all() and (segments[seps[0] + 1 :] == 1).all()
            words_a = set(ids[1 : seps[0]]) - {5}  # 5 is "."
            words_b = set(ids[seps[0] + 1 : seps[1]]) - {5}
            assert len(words_a) <= 1 and len(words_b) <= 1
            if words_a and words_b:
                assert (words_a == words_b) == (label == 0)  # "not next" B: another document
            labels_seen.append(label)
            count += 1
    assert count > 5000
    assert abs(np.mean(labels_seen) - 0.5) < 0.02


def test_bert_dupe_factor_cuts_the_corpus_again_with_new_partners():
    docs = _synthetic_documents()[:12]

    def examples(dupe_factor):
        ds = bert_pretraining_dataset(
            docs,
            SYNTHETIC,
            seq_len=16,
            batch_size=1,
            max_predictions_per_seq=3,
            dupe_factor=dupe_factor,
        )
        partners = set()
        for features, labels in ds:
            ids = _unmasked(features, labels)[0]
            segments = features["segment_ids"].numpy()[0]
            if labels["next_sentence_labels"].numpy()[0] == 1:  # "not next": another document
                partners.add((ids[1], ids[segments == 1][0]))  # (A's word, B's word)
        return int(ds.cardinality()), partners

    (one, partners_one), (three, partners_three) = examples(1), examples(3)
    assert 2.5 * one < three < 3.5 * one  # three cuts of the corpus
    assert partners_one < partners_three  # the later cuts draw new random partners
    with pytest.raises(ValueError, match="`dupe_factor` must be an integer >= 1, got 0"):
        bert_pretraining_dataset(docs, SYNTHETIC, seq_len=32, batch_size=1, dupe_factor=0)


def test_bert_masks_are_dynamic_and_seeded():
    docs = _synthetic_documents()[:10]
    make = lambda seed: bert_pretraining_dataset(docs, SYNTHETIC, 32, 32, seed=seed)  # noqa: E731
    positions = lambda ds: np.concatenate(  # noqa: E731
        [f["mask_positions"].numpy() for f, _ in ds]
    )
    a = make(5)
    epoch1, epoch2 = positions(a), positions(a)
    np.testing.assert_array_equal(epoch1, positions(make(5)))
    assert not np.array_equal(epoch1, epoch2)
    assert not np.array_equal(epoch1, positions(make(6)))


def test_bert_whole_word_masking_masks_every_piece(shakespeare_word_piece):
    tok = shakespeare_word_piece
    continuation = np.array([t.startswith("##") for t in tok.vocabulary])
    ds = bert_pretraining_dataset(
        load_corpus("shakespeare")[:20], tok, seq_len=64, batch_size=32, whole_word_masking=True
    )
    multi_piece_words = 0
    for features, labels in ds.take(10):
        originals = _unmasked(features, labels)
        for ids, positions, weights in zip(
            originals, features["mask_positions"].numpy(), labels["mask_weights"].numpy()
        ):
            chosen = set(positions[weights > 0].tolist())
            for p in chosen:
                if p + 1 < len(ids) and continuation[ids[p + 1]]:
                    assert p + 1 in chosen
                    multi_piece_words += 1
                if continuation[ids[p]]:
                    assert p - 1 in chosen
    assert multi_piece_words > 0


def test_bert_input_context_gives_disjoint_shards(shakespeare_word_piece):
    docs = load_corpus("shakespeare")[:10]
    shards = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(2, pipeline_id, num_replicas_in_sync=2)
        # One cut of the corpus: with more, the same pair of texts can be cut twice.
        ds = bert_pretraining_dataset(
            docs, shakespeare_word_piece, 64, 16, dupe_factor=1, input_context=context
        )
        assert ds.element_spec[0]["token_ids"].shape == (8, 64)
        shards.append({tuple(r) for features, labels in ds for r in _unmasked(features, labels)})
    assert shards[0] and shards[1] and not shards[0] & shards[1]


def test_bert_bad_input(shakespeare_word_piece):
    tok, docs = shakespeare_word_piece, load_corpus("shakespeare")[:3]
    with pytest.raises(ValueError, match="1 document.*at least 2"):
        bert_pretraining_dataset(docs[:1], tok, 64, 4)
    with pytest.raises(ValueError, match="^`texts` must hold .* got 2 blank strings.$"):
        bert_pretraining_dataset(["", " "], tok, 64, 4)
    with pytest.raises(TypeError, match="^`tokenizer` must be a WordPieceTokenizer, got Byte"):
        bert_pretraining_dataset(docs, BYTES, 64, 4)
    with pytest.raises(ValueError, match="^`seq_len` must be an integer >= 5, got 4.$"):
        bert_pretraining_dataset(docs, tok, 4, 4)
    with pytest.raises(
        ValueError, match=r"^`max_predictions_per_seq` must be an integer in \[1, 61\], got 62.$"
    ):
        bert_pretraining_dataset(docs, tok, 64, 4, max_predictions_per_seq=62)
    with pytest.raises(
        ValueError, match=r"^`masked_lm_prob` must be a number in \(0, 1\], got 0.$"
    ):
        bert_pretraining_dataset(docs, tok, 64, 4, masked_lm_prob=0)
    with pytest.raises(ValueError, match="^`short_seq_prob` must be a number in .*, got nan.$"):
        bert_pretraining_dataset(docs, tok, 64, 4, short_seq_prob=float("nan"))
    with pytest.raises(ValueError, match=r"texts too short.*batch_size=100000"):
        bert_pretraining_dataset(docs, tok, 64, 100_000)
    with pytest.raises(
        ValueError,
        match="`texts` must be an existing file.*, got '.*missing.txt', which is not an existing",
    ):
        bert_pretraining_dataset([pathlib.Path("missing.txt")], tok, 64, 4)


def _first_batches(dataset, count):
    return [tf.nest.map_structure(lambda t: t.numpy(), batch) for batch in dataset.take(count)]


def test_lm_repeat_is_a_stream_of_new_epochs_independent_of_iteration():
    docs = load_corpus("shakespeare")[:2]
    stream = lm_dataset(docs, BYTES, 64, 32, seed=3, repeat=True)
    per_epoch = sum(1 for _ in lm_dataset(docs, BYTES, 64, 32, seed=3))
    first = _first_batches(stream, 2 * per_epoch + 1)
    again = _first_batches(stream, 2 * per_epoch + 1)  # a second iterator: the same stream
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a[0], b[0])
    epoch1 = np.concatenate([x for x, _ in first[:per_epoch]])
    epoch2 = np.concatenate([x for x, _ in first[per_epoch : 2 * per_epoch]])
    assert not np.array_equal(epoch1, epoch2)  # each epoch in its own order
    resumed = _first_batches(stream.skip(per_epoch + 1), 1)[0]
    np.testing.assert_array_equal(resumed[0], first[per_epoch + 1][0])


@pytest.mark.slow
def test_bert_repeat_draws_new_masks_each_epoch_independent_of_iteration():
    docs = _synthetic_documents()[:10]
    stream = bert_pretraining_dataset(docs, SYNTHETIC, 32, 32, seed=5, repeat=True)
    per_epoch = sum(1 for _ in bert_pretraining_dataset(docs, SYNTHETIC, 32, 32, seed=5))
    first = _first_batches(stream, 2 * per_epoch)
    again = _first_batches(stream, 2 * per_epoch)
    for (fa, _), (fb, _) in zip(first, again):
        np.testing.assert_array_equal(fa["mask_positions"], fb["mask_positions"])
    epoch1 = np.concatenate([f["token_ids"] for f, _ in first[:per_epoch]])
    epoch2 = np.concatenate([f["token_ids"] for f, _ in first[per_epoch:]])
    assert not np.array_equal(epoch1, epoch2)


def test_repeat_works_under_a_global_seed_of_zero():
    tf.random.set_seed(0)
    docs = load_corpus("shakespeare")[:2]
    stream = lm_dataset(docs, BYTES, 64, 32, seed=0, repeat=True)
    np.testing.assert_array_equal(_first_batches(stream, 3)[2][0], _first_batches(stream, 3)[2][0])


class _AsciiTokenizer(Tokenizer):
    """A tokenizer written outside the package: ASCII code points, 127 for anything else."""

    def __init__(self):
        super().__init__()
        self.vocab_size, self.end_id, self.pad_id = 129, 128, 127

    def tokenize(self, strings):
        ids = tf.strings.unicode_decode(strings, "UTF-8", errors="replace")
        return tf.ragged.map_flat_values(lambda i: tf.where(i < 127, i, 127), ids)

    def detokenize(self, ids):
        return tf.strings.unicode_encode(ids, "UTF-8")


def test_any_tokenizer_subclass_plugs_into_the_lm_pipeline():
    x, y = _all(lm_dataset(["ab\n" * 40, "cd\n" * 40], _AsciiTokenizer(), 8, 2, split="train"))
    assert set(np.unique(x)) == {ord("a"), ord("b"), ord("\n"), 128, ord("c"), ord("d")}
    assert (x[:, 1:] == y[:, :-1]).all()


# Chinese corpora -------------------------------------------------------------------------------

# sha256 of the source files (quantangshi.txt, neg.txt, pos.txt) the bundled data were made from.
TANGSHI_SHA256 = "3fec5af88e534e84427404c4c9b46f4eed0b32739e2afb9b586e58db5dcd4301"
REVIEWS_SHA256 = {
    0: "461b72768663057eff27dea5debcfd1404edd7ed1c3f9761c577b807a11bc8a1",
    1: "9f651025714e0237efcc449ba6ca6a6e742e8765f4e5cce6c7ecb907c83b5f05",
}


def _sha256(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_tangshi_is_56053_poems_that_rebuild_the_source_file():
    poems = load_corpus("tangshi")
    assert len(poems) == 56_053
    assert _sha256("\n\n".join(poems) + "\n") == TANGSHI_SHA256
    assert sum(map(len, poems)) + 2 * len(poems) - 1 == 4_460_701  # characters of the file
    assert poems[0] == "帝京篇十首 一\n太宗皇帝\n" + (
        "秦川雄帝宅，函谷壮皇居。\n绮殿千寻起，离宫百雉余。\n"
        "连甍遥接汉，飞观迥凌虚。\n云日隐层阙，风烟出绮疎。"
    )
    lines = [poem.split("\n") for poem in poems]
    assert all(len(poem) >= 3 and all(line.strip() for line in poem) for poem in lines)


def test_chinese_reviews_are_labelled_and_rebuild_the_source_files():
    reviews = load_labelled_corpus("chinese_reviews")
    assert isinstance(reviews, LabelledCorpus) and len(reviews) == 17_363
    assert reviews.label_names == ("负面", "正面")
    assert [reviews.labels.count(k) for k in (0, 1)] == [9_031, 8_332]
    for label, digest in REVIEWS_SHA256.items():
        texts = [t for t, k in zip(reviews.texts, reviews.labels) if k == label]
        assert _sha256("\n".join(texts) + "\n") == digest
    assert len(set(reviews.texts)) == len(reviews.texts)  # deduplicated, no review under both
    assert load_corpus("chinese_reviews") == reviews.texts


def test_one_poets_poems_by_name_or_by_spec_string():
    li_bai = load_corpus("tangshi:李白")
    assert len(li_bai) == 1194
    assert {poem.split("\n")[1] for poem in li_bai} == {"李白"}
    assert load_corpus("tangshi", author="李白") == li_bai
    every = load_corpus("tangshi")
    assert li_bai == [poem for poem in every if poem.split("\n")[1] == "李白"]
    # As the command line passes --corpus: a list, here with two poets, in the order given.
    du_fu = load_corpus(["tangshi:杜甫"])
    assert len(du_fu) == 1477
    assert load_corpus(["tangshi:李白", "tangshi:杜甫"]) == li_bai + du_fu


def test_an_unknown_poet_or_a_misplaced_author_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"^`author` must name one of the 3,531 authors .*'李百'"):
        load_corpus("tangshi", author="李百")
    with pytest.raises(ValueError, match=r"got 'tangshi:李百' \(close: '李百药', '李白'"):
        load_corpus("tangshi:李百")
    with pytest.raises(ValueError, match=r"^`author` must be None unless `source` is 'tangshi'"):
        load_corpus("shakespeare", author="李白")
    for spec in ("shakespeare:李白", "tangshi:"):
        with pytest.raises(ValueError, match=rf"^`source` must be .*, got '{spec}'\."):
            load_corpus(spec)
    (tmp_path / "a.txt").write_text("some text")
    assert load_corpus(["shakespeare", tmp_path / "a.txt"])[-1] == "some text"


def test_bundled_corpora_are_fresh_lists_from_a_cache():
    poems = load_corpus("tangshi")
    poems.clear()
    assert len(load_corpus("tangshi")) == 56_053
    load_labelled_corpus("chinese_reviews").texts.clear()
    assert len(load_labelled_corpus("chinese_reviews").texts) == 17_363


def test_chinese_corpora_ship_as_package_data_with_their_licences():
    data = importlib.resources.files("tf_bigmodels.data")
    for licence in ("tangshi/LICENSE", "chinese_reviews/LICENSE.md"):
        assert "MIT License" in data.joinpath(licence).read_text(encoding="utf-8")
    # Every data file in the source tree is matched by setup.cfg's package_data, so the wheel
    # (and an installed package) carries it.
    setup = configparser.ConfigParser()
    setup.read(pathlib.Path(__file__).parents[1] / "setup.cfg")
    patterns = setup["options.package_data"]["tf_bigmodels.data"].split()
    root = pathlib.Path(str(data))
    shipped = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    shipped = [p for p in shipped if not p.endswith((".py", ".pyc"))]
    assert {"tangshi/quantangshi.txt.xz", "chinese_reviews/pos.txt.xz"} <= set(shipped)
    assert [p for p in shipped if not any(fnmatch.fnmatch(p, pat) for pat in patterns)] == []


def test_load_labelled_corpus_names_the_allowed_corpora():
    with pytest.raises(
        ValueError, match=r"`name` must be one of \['chinese_reviews'\], got 'tangshi'"
    ):
        load_labelled_corpus("tangshi")
