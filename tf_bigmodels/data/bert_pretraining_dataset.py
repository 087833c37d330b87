"""BERT pipeline: documents -> segment pairs (next sentence prediction) -> masked LM examples."""

import random
import re

import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text
from tensorflow_text.python.ops.item_selector_ops import ItemSelector

from tf_bigmodels import _checks
from tf_bigmodels._tracing import graph_code
from tf_bigmodels.data._inputs import epochs, shard_settings, split_texts
from tf_bigmodels.data.corpus import load_corpus
from tf_bigmodels.tokenizers import WordPieceTokenizer, check_tokenizer

# A "sentence" ends at a line break, after . ! ? followed by space, or after a CJK full stop.
_SENTENCE_BREAK = re.compile(r"\n+|(?<=[.!?])\s+|(?<=[。！？])")
_MASK_TOKEN_RATE = 0.8  # BERT: 80% of the chosen tokens become [MASK],
_RANDOM_TOKEN_RATE = 0.1  # 10% a random token, and 10% stay as they are.


def bert_pretraining_dataset(
    texts,
    tokenizer,
    seq_len,
    batch_size,
    *,
    max_predictions_per_seq=20,
    masked_lm_prob=0.15,
    short_seq_prob=0.1,
    dupe_factor=10,
    whole_word_masking=False,
    seed=0,
    repeat=False,
    input_context=None,
):
    """Returns a `tf.data.Dataset` of BERT pretraining `(features, labels)` batches.

    Follows the original BERT recipe (Devlin et al. 2019, §3.1 and appendix A; Google's
    `create_pretraining_data.py`):

    1. Documents are split into sentences (at line breaks, and after `.`/`!`/`?` + space or a CJK
       full stop) and tokenized once.
    2. Per document, sentences are gathered into chunks of `seq_len - 3` tokens; with probability
       `short_seq_prob` (0.1) the document's target length is a random 2..`seq_len - 3` instead,
       so the model also sees short inputs. A chunk is cut at a random sentence into A and B.
    3. Next sentence prediction: with probability 0.5 B is replaced by text from a random *other*
       document (label 1, "not next"; the unused sentences go back for the next example), else B
       is the true continuation (label 0). Where a chunk has a single sentence and the label is
       "next", that sentence is cut at a random token into A and B (the original forced "not
       next" there, which tilts the labels away from 50%).
    4. The pair is truncated to `seq_len - 3` tokens by dropping tokens from the longer segment,
       from its front or back at random, and packed as `[CLS] A [SEP] B [SEP]` with segment ids
       0/1 and a padding mask.
    5. Masked LM, in the tf.data graph, drawn anew every epoch (RoBERTa's dynamic masking) and
       reproducible for a given `seed`: of the n tokens that are not `[CLS]`/`[SEP]`,
       `min(max_predictions_per_seq, max(1, round(masked_lm_prob * n)))` are chosen uniformly
       (15%, at most 20 by default); of those, 80% become `[MASK]`, 10% a random token of the
       vocabulary and 10% stay unchanged. This uses tensorflow-text's `mask_language_model` with
       a selector and a value chooser that keep BERT's count (tensorflow-text's
       `RandomItemSelector` rounds up) and use stateless random ops seeded per batch from
       `tf.data.Dataset.random(seed, rerandomize_each_iteration=True)`.
       With `whole_word_masking`, the wordpieces of a word are chosen together; words are taken
       in random order while the chosen tokens stay within the count (the first word always, if
       it fits `max_predictions_per_seq`).

    Steps 2-4 run `dupe_factor` times over the corpus (10, as Google's script), each time with new
    random cuts and new random partners, in Python when the dataset is built (seconds for the
    bundled corpus); masks change every epoch. Without the duplicates a small corpus gives few
    fixed pairs, and a model learns which of them are "not next" by heart: on tiny Shakespeare
    (`benchmarks/bert_nsp.py`) training NSP accuracy rose to 0.94 while held-out accuracy stayed
    at chance. Examples are shuffled every epoch.

    Under `tf.distribute`, pass the `input_context` of `strategy.distribute_datasets_from_function`:
    every pipeline builds the same pairs and takes its shard (every `num_input_pipelines`-th
    pair), batches `get_per_replica_batch_size(batch_size)`, and shuffles and masks with
    `seed + 1_000_003 * input_pipeline_id`, so replicas do not repeat each other's masks.

    Args:
        texts: list of str (documents, e.g. from `load_corpus`; at least two), or a
            `pathlib.Path` / list of `pathlib.Path`s of UTF-8 files (one document per file).
        tokenizer: a `WordPieceTokenizer`.
        seq_len: int >= 5. Length of `token_ids`.
        batch_size: int. Global batch size (per replica when `input_context` is given: the
            context's share of it).
        max_predictions_per_seq: int in [1, seq_len - 3]. Most tokens masked per example.
            Defaults to 20.
        masked_lm_prob: float in (0, 1]. Share of tokens masked. Defaults to 0.15.
        short_seq_prob: float in [0, 1]. Share of documents packed to a random shorter length.
            Defaults to 0.1.
        dupe_factor: int >= 1. Times the corpus is cut into pairs, each time differently.
            Defaults to 10.
        whole_word_masking: bool. Mask whole words. Defaults to `False`.
        seed: int >= 0. Seed for pairs, shuffling and masks. Defaults to 0.
        repeat: bool. Return an endless stream of epochs, each with a new seeded order and
            masks, the same however often the dataset is iterated. Defaults to False.
        input_context: `tf.distribute.InputContext` or `None`. Defaults to `None`.

    Returns:
        A `tf.data.Dataset` of `(features, labels)`. `features`: `token_ids`, `segment_ids`,
        `padding_mask` (1 = real token), int32 `[batch, seq_len]`; `mask_positions`, int32
        `[batch, max_predictions_per_seq]`. `labels`: `mask_ids` (original tokens at
        `mask_positions`), int32 `[batch, max_predictions_per_seq]`; `mask_weights` (1.0 where a
        position is real, 0.0 where padded), float32 `[batch, max_predictions_per_seq]`;
        `next_sentence_labels` (0 = B follows A, 1 = B is random), int32 `[batch]`.

    Example:

    >>> from tf_bigmodels.data import load_corpus
    >>> from tf_bigmodels.tokenizers import WordPieceTokenizer
    >>> docs = load_corpus("shakespeare")[:4]  # 4 of its 100 documents: a quick example
    >>> tokenizer = WordPieceTokenizer.train(docs, vocab_size=1000, verbose=False)
    >>> ds = bert_pretraining_dataset(docs, tokenizer, seq_len=128, batch_size=32)
    >>> features, labels = next(iter(ds))
    >>> features["token_ids"].shape, labels["mask_weights"].dtype
    (TensorShape([32, 128]), tf.float32)
    """
    seq_len = _checks.integer("seq_len", seq_len, low=5)
    # [CLS] and two [SEP] are never masked, so at most seq_len - 3 tokens can be.
    max_predictions_per_seq = _checks.integer(
        "max_predictions_per_seq", max_predictions_per_seq, low=1, high=seq_len - 3
    )
    masked_lm_prob = _checks.number("masked_lm_prob", masked_lm_prob, low=0, high=1, low_open=True)
    short_seq_prob = _checks.number("short_seq_prob", short_seq_prob, low=0, high=1)
    dupe_factor = _checks.positive_int("dupe_factor", dupe_factor)
    _checks.boolean("whole_word_masking", whole_word_masking)
    _checks.boolean("repeat", repeat)
    # BERT's inputs need [CLS], [SEP] and [MASK], which only a WordPiece vocabulary has.
    check_tokenizer(tokenizer, WordPieceTokenizer)
    documents, files = split_texts(texts)
    if files is not None:
        documents = load_corpus(files, errors="replace")
    num_pipelines, pipeline_id, per_replica_batch, pipeline_seed = shard_settings(
        batch_size, seed, input_context
    )

    sentences = _tokenized_sentences(documents, tokenizer)
    if len(sentences) < 2:
        raise ValueError(
            f"texts has {len(sentences)} document(s) with text; next sentence prediction draws "
            f"'not next' segments from another document, so at least 2 are needed (split one "
            f"file with load_corpus(..., document_separator='\\n\\n') or give more files)."
        )
    rng = random.Random(seed)
    pairs = [
        pair
        for _ in range(dupe_factor)
        for pair in _segment_pairs(sentences, seq_len - 3, short_seq_prob, rng)
    ]
    if len(pairs) // num_pipelines < per_replica_batch:
        raise ValueError(
            f"texts too short: it gives {len(pairs)} sequence pairs of seq_len={seq_len}, "
            f"{len(pairs) // num_pipelines} per input pipeline; one batch needs batch_size="
            f"{per_replica_batch}. Give more text or a smaller seq_len or batch_size."
        )

    segments_a, segments_b, next_sentence_labels = zip(*pairs)
    pairs = tf.data.Dataset.from_tensor_slices(
        (_ragged(segments_a), _ragged(segments_b), np.array(next_sentence_labels, np.int32))
    )
    pairs = pairs.shard(num_pipelines, pipeline_id)
    masker = _Masker(
        tokenizer, seq_len, max_predictions_per_seq, masked_lm_prob, whole_word_masking
    )

    def one_epoch():
        batches = pairs.shuffle(
            len(segments_a), seed=pipeline_seed, reshuffle_each_iteration=True
        ).ragged_batch(per_replica_batch, drop_remainder=True)
        batch_seeds = tf.data.Dataset.random(seed=pipeline_seed, rerandomize_each_iteration=True)
        return tf.data.Dataset.zip(batches, batch_seeds).map(
            graph_code(masker.__call__), num_parallel_calls=tf.data.AUTOTUNE
        )

    return epochs(one_epoch, repeat).prefetch(tf.data.AUTOTUNE)


def _tokenized_sentences(documents, tokenizer):
    """Returns, per document with tokens, the list of its sentences' int32 id arrays."""
    sentences = [[s for s in _SENTENCE_BREAK.split(d) if s.strip()] for d in documents]
    ids = tokenizer.tokenize(tf.constant([s for doc in sentences for s in doc], tf.string))
    values, splits = ids.flat_values.numpy().astype(np.int32), ids.row_splits.numpy()
    result, row = [], 0
    for doc in sentences:
        doc_ids = [values[splits[i] : splits[i + 1]] for i in range(row, row + len(doc))]
        row += len(doc)
        doc_ids = [s for s in doc_ids if s.size]
        if doc_ids:
            result.append(doc_ids)
    return result


def _segment_pairs(documents, max_num_tokens, short_seq_prob, rng):
    """BERT's create_instances_from_document over all documents: [(a, b, is_random_next)]."""
    pairs = []
    for doc_index, document in enumerate(documents):
        target_length = max_num_tokens
        if rng.random() < short_seq_prob:
            target_length = rng.randint(2, max_num_tokens)
        chunk, chunk_length, i = [], 0, 0
        while i < len(document):
            chunk.append(document[i])
            chunk_length += document[i].size
            if i == len(document) - 1 or chunk_length >= target_length:
                pair = _pair_from_chunk(chunk, documents, doc_index, target_length, rng)
                if pair is not None:
                    a, b, is_random_next, put_back = pair
                    pairs.append((*_truncate_pair(a, b, max_num_tokens, rng), is_random_next))
                    i -= put_back  # sentences not used for A go back for the next pair
                chunk, chunk_length = [], 0
            i += 1
    return pairs


def _pair_from_chunk(chunk, documents, doc_index, target_length, rng):
    """Returns (a, b, is_random_next, sentences to put back), or None for a 1-token chunk."""
    is_random_next = rng.random() < 0.5
    if len(chunk) == 1:
        if not is_random_next:
            if chunk[0].size < 2:
                return None
            cut = rng.randint(1, chunk[0].size - 1)
            return chunk[0][:cut], chunk[0][cut:], 0, 0
        a_end = 1
    else:
        a_end = rng.randint(1, len(chunk) - 1)
    a = np.concatenate(chunk[:a_end])
    if not is_random_next:
        return a, np.concatenate(chunk[a_end:]), 0, 0
    other = rng.randrange(len(documents) - 1)
    other += other >= doc_index  # never the same document
    random_document = documents[other]
    b = []
    for sentence in random_document[rng.randrange(len(random_document)) :]:
        b.append(sentence)
        if sum(s.size for s in b) >= target_length - a.size:
            break
    return a, np.concatenate(b), 1, len(chunk) - a_end


def _truncate_pair(a, b, max_num_tokens, rng):
    """Drops tokens from the longer segment, at its front or back at random, until they fit."""
    bounds = [[0, a.size], [0, b.size]]
    while sum(end - start for start, end in bounds) > max_num_tokens:
        longer = (
            bounds[0] if bounds[0][1] - bounds[0][0] > bounds[1][1] - bounds[1][0] else bounds[1]
        )
        if rng.random() < 0.5:
            longer[0] += 1
        else:
            longer[1] -= 1
    return a[bounds[0][0] : bounds[0][1]], b[bounds[1][0] : bounds[1][1]]


def _ragged(arrays):
    return tf.RaggedTensor.from_row_lengths(
        np.concatenate(arrays), np.array([x.size for x in arrays], np.int64)
    )


class _Masker:
    """Packs a batch of segment pairs and masks it; called in tf.data.map with a per-batch seed."""

    def __init__(
        self, tokenizer, seq_len, max_predictions_per_seq, masked_lm_prob, whole_word_masking
    ):
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        self.max_predictions_per_seq = max_predictions_per_seq
        self.masked_lm_prob = masked_lm_prob
        self.is_continuation = (
            tf.constant([t.startswith("##") for t in tokenizer.vocabulary])
            if whole_word_masking
            else None
        )

    def __call__(self, batch, batch_seed):
        segments_a, segments_b, next_sentence_labels = batch
        tok = self.tokenizer
        select_seed, value_seed = tf.unstack(
            tf.random.experimental.stateless_split(tf.stack([batch_seed, 0]), 2)
        )
        token_ids, segment_ids = tf_text.combine_segments(
            [segments_a, segments_b], start_of_sequence_id=tok.cls_id, end_of_segment_id=tok.sep_id
        )
        items = (
            token_ids
            if self.is_continuation is None
            else _whole_words(token_ids, self.is_continuation)
        )
        token_ids, mask_positions, mask_ids = tf_text.mask_language_model(
            items,
            _BertItemSelector(
                self.max_predictions_per_seq,
                self.masked_lm_prob,
                [tok.cls_id, tok.sep_id],
                select_seed,
            ),
            _BertMaskValuesChooser(tok.vocab_size, tok.mask_id, value_seed),
        )
        token_ids, padding_mask = tf_text.pad_model_inputs(
            token_ids, self.seq_len, pad_value=tok.pad_id
        )
        segment_ids, _ = tf_text.pad_model_inputs(segment_ids, self.seq_len)
        mask_positions, mask_weights = tf_text.pad_model_inputs(
            tf.cast(mask_positions, tf.int32), self.max_predictions_per_seq
        )
        mask_ids, _ = tf_text.pad_model_inputs(mask_ids, self.max_predictions_per_seq)
        batch_size = next_sentence_labels.shape[0]
        features = {
            "token_ids": tf.cast(token_ids, tf.int32),
            "segment_ids": tf.cast(segment_ids, tf.int32),
            "padding_mask": tf.cast(padding_mask, tf.int32),
            "mask_positions": mask_positions,
        }
        labels = {
            "mask_ids": tf.cast(mask_ids, tf.int32),
            "mask_weights": tf.cast(mask_weights, tf.float32),
            "next_sentence_labels": next_sentence_labels,
        }
        static = lambda x: tf.ensure_shape(x, [batch_size] + x.shape[1:])  # noqa: E731
        return tf.nest.map_structure(static, (features, labels))


def _whole_words(token_ids, is_continuation):
    """[batch, (tokens)] -> [batch, (words), (wordpieces)]; a word starts at a non-"##" piece."""
    starts = tf.logical_not(tf.gather(is_continuation, token_ids.flat_values))
    words = tf.RaggedTensor.from_row_starts(token_ids.flat_values, tf.where(starts)[:, 0])
    words_per_row = tf.reduce_sum(tf.cast(token_ids.with_flat_values(starts), tf.int64), axis=1)
    return tf.RaggedTensor.from_row_lengths(words, words_per_row)


class _BertItemSelector(ItemSelector):
    """Chooses items at random so that min(max, max(1, round(rate * n))) tokens are masked.

    n counts the tokens of selectable items. Items (tokens, or words of several tokens) are taken
    in a random order while their tokens fit the count; the first always, if it fits `max`.
    Randomness is stateless, from `seed` (shape [2]).
    """

    def __init__(self, max_selections, selection_rate, unselectable_ids, seed):
        super().__init__(unselectable_ids)
        self.max_selections = max_selections
        self.selection_rate = selection_rate
        self.seed = seed

    def get_selection_mask(self, input_ids, axis):
        selectable = self.get_selectable(input_ids, axis)  # [batch, (items)] bool
        sizes = (
            input_ids.row_lengths(axis=2).flat_values
            if input_ids.ragged_rank == 2
            else tf.ones_like(selectable.flat_values, tf.int64)
        )
        sizes = tf.where(selectable.flat_values, sizes, tf.zeros_like(sizes))
        n = tf.reduce_sum(selectable.with_flat_values(sizes), axis=1)  # [batch]
        # float64 and round-half-even, exactly as Python's round() in create_pretraining_data.py
        count = tf.cast(tf.round(tf.cast(n, tf.float64) * self.selection_rate), tf.int64)
        count = tf.minimum(tf.minimum(tf.maximum(count, 1), self.max_selections), n)

        scores = tf.random.stateless_uniform(tf.shape(sizes), self.seed)
        scores = tf.where(sizes > 0, scores, -1.0)
        scores = selectable.with_flat_values(scores).to_tensor(default_value=-2.0)  # [batch, items]
        dense_sizes = selectable.with_flat_values(sizes).to_tensor()
        order = tf.argsort(scores, axis=1, direction="DESCENDING", stable=True)
        sorted_sizes = tf.gather(dense_sizes, order, batch_dims=1)
        taken = tf.cumsum(sorted_sizes, axis=1)  # tokens chosen once this item is taken
        take = (taken <= count[:, None]) | (
            (tf.range(tf.shape(order)[1]) == 0)[None, :] & (sorted_sizes <= self.max_selections)
        )
        take &= sorted_sizes > 0
        take = tf.gather(take, tf.argsort(order, axis=1, stable=True), batch_dims=1)
        return tf.RaggedTensor.from_tensor(take, lengths=selectable.row_lengths())


class _BertMaskValuesChooser(tf_text.MaskValuesChooser):
    """80% [MASK], 10% a random id in [0, vocab_size), 10% unchanged; stateless from `seed`."""

    def __init__(self, vocab_size, mask_token, seed):
        super().__init__(
            vocab_size,
            mask_token,
            mask_token_rate=_MASK_TOKEN_RATE,
            random_token_rate=_RANDOM_TOKEN_RATE,
        )
        self.seed = seed

    def get_mask_values(self, masked_lm_ids):
        ids = masked_lm_ids.flat_values
        choice_seed, token_seed = tf.unstack(tf.random.experimental.stateless_split(self.seed, 2))
        choice = tf.random.stateless_uniform(tf.shape(ids), choice_seed)
        random_ids = tf.random.stateless_uniform(
            tf.shape(ids), token_seed, minval=0, maxval=self.vocab_size, dtype=ids.dtype
        )
        values = tf.where(
            choice < _MASK_TOKEN_RATE,
            tf.cast(self.mask_token, ids.dtype),
            tf.where(choice < _MASK_TOKEN_RATE + _RANDOM_TOKEN_RATE, random_ids, ids),
        )
        return masked_lm_ids.with_flat_values(values)
