"""Argument checks and tf.distribute settings shared by the pipelines."""

import os

import tensorflow as tf

from tf_bigmodels import _checks
from tf_bigmodels._tracing import graph_code
from tf_bigmodels.data.corpus import corpus_files

# Folded into the seed per input pipeline so that replicas draw different shuffles and masks.
_PIPELINE_SEED_STRIDE = 1_000_003


def split_texts(texts):
    """Returns `(documents, files)`: exactly one is a list, the other `None`.

    `texts` is a list of document strings, or a `pathlib.Path` (may hold a glob) or a list of them
    for files to stream.
    """
    if isinstance(texts, os.PathLike):
        texts = [texts]
    if (
        isinstance(texts, (list, tuple))
        and texts
        and all(isinstance(t, os.PathLike) for t in texts)
    ):
        return None, corpus_files(list(texts), "texts")
    if isinstance(texts, str):
        raise TypeError(
            f"`texts` must be a list of document strings or pathlib.Path(s) of files, got one str "
            f"({texts[:40]!r}); wrap a document in a list, or pass pathlib.Path(...) for a file."
        )
    if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
        raise TypeError(
            f"`texts` must be a list of document strings or pathlib.Path(s) of files, "
            f"got {type(texts).__name__}."
        )
    if not any(t.strip() for t in texts):
        raise ValueError(
            "`texts` must hold at least one document with text, got "
            + (f"{len(texts)} blank strings." if texts else "an empty list.")
        )
    return list(texts), None


def shard_settings(batch_size, seed, input_context):
    """Returns `(num_pipelines, pipeline_id, per_replica_batch, pipeline_seed)`."""
    batch_size = _checks.positive_int("batch_size", batch_size)
    seed = _checks.integer("seed", seed, low=0)
    if input_context is None:
        return 1, 0, batch_size, seed
    if not isinstance(input_context, tf.distribute.InputContext):
        raise TypeError(
            f"`input_context` must be a tf.distribute.InputContext or None, got "
            f"{type(input_context).__name__}."
        )
    pipeline_id = input_context.input_pipeline_id
    return (
        input_context.num_input_pipelines,
        pipeline_id,
        input_context.get_per_replica_batch_size(batch_size),
        seed + _PIPELINE_SEED_STRIDE * pipeline_id,
    )


def epochs(one_epoch, repeat):
    """The dataset `one_epoch()` or, with `repeat`, the endless stream of its epochs.

    `one_epoch()` builds one epoch's pipeline with seeded ops that reshuffle on every iteration,
    so each epoch is a new, reproducible order (and new masks). With `repeat`, the repeated
    pipeline is built inside a `flat_map`, so every iterator of the returned dataset gets fresh
    seed state and yields the same stream: Keras iterates a training dataset twice under a
    distribution strategy, and a resumed run re-creates the dataset and skips to its step.
    """
    if not repeat:
        return one_epoch()
    return tf.data.Dataset.range(1).flat_map(graph_code(lambda _: one_epoch().repeat()))
