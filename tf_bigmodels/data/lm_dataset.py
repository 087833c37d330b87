"""GPT pipeline: text -> token ids -> packed (x, y) windows shifted by one."""

import itertools
import os

import tensorflow as tf

from tf_bigmodels import _checks
from tf_bigmodels._tracing import graph_code
from tf_bigmodels.data._inputs import epochs, shard_settings, split_texts
from tf_bigmodels.tokenizers import check_tokenizer

TRAIN_FRACTION = 0.9
_LINES_PER_STEP = 256  # lines tokenized per call


def lm_dataset(
    texts,
    tokenizer,
    seq_len,
    batch_size,
    *,
    split="train",
    seed=0,
    shuffle_buffer=10_000,
    repeat=False,
    input_context=None,
):
    """Returns a `tf.data.Dataset` of `(x, y)` next-token windows for language modelling.

    The documents are read line by line, tokenized, and packed into one token stream with an
    end-of-text token after every document (`tokenizer.end_id`: `[SEP]` for a WordPiece
    tokenizer). The stream is cut into consecutive windows: window `i` has
    `x = stream[i*seq_len : (i+1)*seq_len]` and `y = stream[i*seq_len + 1 : (i+1)*seq_len + 1]`,
    so `y[t] == x[t+1]` and every next-token pair of the stream is in exactly one window.

    Train/validation split by position, as nanoGPT: the lines that start in the first 90% of the
    text's UTF-8 bytes are "train", the rest "val"; the two streams are packed separately, so no
    window crosses the split. "train" windows are shuffled with `seed` (a new, reproducible order
    every epoch); "val" keeps text order. Batches are `[batch, seq_len]` int32 with static shapes
    (`drop_remainder=True`, as TPU/XLA need), prefetched.

    Streaming: given file paths, the files are read with `tf.data.TextLineDataset` and tokenized on
    the fly, so a corpus larger than memory works (only `shuffle_buffer` windows are held). For a
    list of strings the pipeline first tokenizes the split until it holds one batch, so that a
    corpus too short for one batch is a `ValueError` here and not an empty dataset later; for
    files the check uses the file sizes (exact for the byte tokenizer, an upper bound for others).

    Under `tf.distribute`, pass the `input_context` that `strategy.distribute_datasets_from_function`
    hands to your function: each input pipeline then takes every `num_input_pipelines`-th window
    from `input_pipeline_id` on, batches `get_per_replica_batch_size(batch_size)` windows, and
    shuffles with `seed + 1_000_003 * input_pipeline_id`.

    Args:
        texts: list of str (documents, e.g. from `load_corpus`), or a `pathlib.Path` or list of
            `pathlib.Path`s of UTF-8 text files to stream (each file one document; a path may be a
            glob such as `Path("texts/*.txt")`). Invalid UTF-8 becomes U+FFFD.
        tokenizer: a `tf_bigmodels.tokenizers.Tokenizer`, e.g. `ByteTokenizer()`.
        seq_len: int. Window length, >= 1.
        batch_size: int. Global batch size (per replica when `input_context` is given: the
            context's share of it).
        split: `"train"` (first 90%) or `"val"` (last 10%). Defaults to `"train"`.
        seed: int >= 0. Shuffle seed. Defaults to 0.
        shuffle_buffer: int. Windows held for shuffling "train". Defaults to 10,000.
        repeat: bool. Return an endless stream of epochs, each in a new seeded order, that is
            the same however often the dataset is iterated (for `fit` with `steps_per_epoch`
            and for resuming with `skip`). Defaults to False (one epoch per iteration).
        input_context: `tf.distribute.InputContext` or `None`. Defaults to `None` (one pipeline).

    Returns:
        A `tf.data.Dataset` of `(x, y)`, each int32 `[batch_size, seq_len]`.

    Example:

    >>> from tf_bigmodels.data import load_corpus
    >>> from tf_bigmodels.tokenizers import ByteTokenizer
    >>> docs = load_corpus("shakespeare")[:10]  # 10 of its 100 documents: a quick example
    >>> ds = lm_dataset(docs, ByteTokenizer(), seq_len=64, batch_size=12)
    >>> x, y = next(iter(ds))
    >>> x.shape, y.dtype
    (TensorShape([12, 64]), tf.int32)
    """
    seq_len = _checks.positive_int("seq_len", seq_len)
    shuffle_buffer = _checks.positive_int("shuffle_buffer", shuffle_buffer)
    _checks.one_of("split", split, ("train", "val"))
    _checks.boolean("repeat", repeat)
    check_tokenizer(tokenizer)
    documents, files = split_texts(texts)
    num_pipelines, pipeline_id, per_replica_batch, pipeline_seed = shard_settings(
        batch_size, seed, input_context
    )
    if documents is not None:
        # Split and cut into lines here, once: a dataset of the split's own lines, so that neither
        # counting its tokens nor reading "val" walks through the rest of the corpus.
        lines, offsets, is_end = split_records(documents, split)
        records = tf.data.Dataset.from_tensor_slices(
            (tf.constant(lines, tf.string), tf.constant(offsets, tf.int64), tf.constant(is_end))
        )
    else:
        sizes = [os.path.getsize(f) for f in files]
        starts = list(itertools.accumulate(sizes, initial=0))[:-1]  # each file's first byte
        split_at = int(TRAIN_FRACTION * sum(sizes))
        records = tf.data.Dataset.from_tensor_slices(
            (files, tf.constant(starts, tf.int64), tf.constant(sizes, tf.int64))
        ).flat_map(graph_code(_line_records))
        if split == "train":
            records = records.take_while(graph_code(lambda line, offset, is_end: offset < split_at))
        else:
            records = records.filter(graph_code(lambda line, offset, is_end: offset >= split_at))
    end_id = tokenizer.end_id
    tokens = records.batch(_LINES_PER_STEP).map(
        graph_code(
            lambda lines, offsets, is_end: _tokenize_lines(tokenizer, end_id, lines, is_end)
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )  # 1-D chunks of the token stream

    enough = num_pipelines * per_replica_batch * seq_len + 1  # one batch for each pipeline
    num_tokens = (
        _count_tokens(tokens, enough)
        if documents is not None
        else (split_at if split == "train" else sum(sizes) - split_at) + len(files)
    )
    num_windows = max(num_tokens - 1, 0) // seq_len
    if num_windows // num_pipelines < per_replica_batch:
        raise ValueError(
            f"texts too short: its {split!r} split has {'about ' if files else ''}{num_tokens} "
            f"tokens, {num_windows} windows of seq_len={seq_len} (+1 for the target), "
            f"{num_windows // num_pipelines} per input pipeline; one batch needs batch_size="
            f"{per_replica_batch}. Give more text, or a smaller seq_len or batch_size"
            f"{_fitting_seq_len(num_tokens, per_replica_batch * num_pipelines)}. A text this "
            "small is learned by heart within a few hundred steps: also use a small model, "
            "dropout and few steps (for example --num-layers 2 --d-model 64 --num-heads 2 "
            "--dff 256 --dropout 0.2 --seq-len 64 --batch-size 8 --steps 500)."
        )

    windows = (
        tokens.rebatch(seq_len)
        .scan((tf.zeros([seq_len], tf.int32), False), graph_code(_shift_by_one))
        .filter(graph_code(_is_complete))
        .map(graph_code(_window))
    )
    windows = windows.shard(num_pipelines, pipeline_id)

    def one_epoch():
        shuffled = windows
        if split == "train":
            shuffled = windows.shuffle(
                shuffle_buffer, seed=pipeline_seed, reshuffle_each_iteration=True
            )
        return shuffled.batch(per_replica_batch, drop_remainder=True)

    return epochs(one_epoch, repeat).prefetch(tf.data.AUTOTUNE)


def split_records(documents, split):
    """The records of one split of a list of documents: `(lines, offsets, is_end)`.

    Each line comes with its "\\n" and its byte offset in the documents joined, each document with
    a final end record `("", offset of its last byte, True)`, as `tf.data.TextLineDataset` reads a
    file (a document without a final "\\n" is read as if it had one). A record is "train" when its
    offset is in the first `TRAIN_FRACTION` of the bytes, else "val".

    Example:

    >>> split_records(["ab\\ncd"] * 10, "val")
    (['ab\\n', 'cd\\n', ''], [54, 57, 59], [False, False, True])
    """
    documents = [d if d.endswith("\n") else d + "\n" for d in documents]
    split_at = int(TRAIN_FRACTION * sum(len(d.encode("utf-8")) for d in documents))
    keep = split == "train"
    lines, offsets, is_end = [], [], []
    offset = 0
    for document in documents:
        for line in document[:-1].split("\n"):
            line += "\n"
            if (offset < split_at) == keep:
                lines.append(line)
                offsets.append(offset)
                is_end.append(False)
            offset += len(line.encode("utf-8"))
        if (offset - 1 < split_at) == keep:
            lines.append("")
            offsets.append(offset - 1)
            is_end.append(True)
    return lines, offsets, is_end


def _line_records(path, start, size):
    """(line + "\\n", its byte offset, False) per line of a file, then ("", last offset, True)."""

    def step(offset, line):
        line = line + "\n"
        return offset + tf.cast(tf.strings.length(line), tf.int64), (line, offset, False)

    end = tf.data.Dataset.from_tensors((tf.constant(""), start + size - 1, tf.constant(True)))
    return tf.data.TextLineDataset(path).scan(start, graph_code(step)).concatenate(end)


def _tokenize_lines(tokenizer, end_id, lines, is_end):
    ids = tokenizer.tokenize(lines)  # [lines, (tokens)]
    ends = tf.cast(is_end, tf.int64)
    end_tokens = tf.RaggedTensor.from_row_lengths(
        tf.fill([tf.reduce_sum(ends)], tf.constant(end_id, ids.dtype)), ends
    )
    return tf.cast(tf.concat([ids, end_tokens], axis=1).flat_values, tf.int32)


def _count_tokens(chunks, enough):
    """The tokens of the chunks, counted until there are `enough`: exact when fewer."""
    total = 0
    for chunk in chunks:  # the rest of the split is not read: a long corpus starts at once
        total += int(tf.size(chunk))
        if total >= enough:
            break
    return total


def _shift_by_one(state, chunk):
    """Scan step over seq_len chunks of the stream: the previous chunk is x, y borrows chunk[0]."""
    previous, have_previous = state
    seq_len = previous.shape[0]
    y = tf.concat([previous[1:], chunk[:1]], axis=0)
    chunk = tf.pad(chunk, [[0, seq_len - tf.size(chunk)]])  # only the stream's last chunk is short
    return (tf.ensure_shape(chunk, [seq_len]), True), (
        (previous, tf.ensure_shape(y, [seq_len])),
        have_previous,
    )


def _is_complete(window, complete):
    return complete


def _window(window, complete):
    return window


def _fitting_seq_len(num_tokens, windows_needed):
    """The advice on `seq_len` for a split of `num_tokens` tokens that must give at least
    `windows_needed` windows: the largest power of two that fits, if one of at least 8 does."""
    longest = max(num_tokens - 1, 0) // windows_needed
    if longest < 8:
        return ""
    return f" (seq_len={2 ** (longest.bit_length() - 1)} fits this batch_size)"
