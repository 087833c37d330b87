"""Learned absolute position embedding (GPT, BERT)."""

import keras
import tensorflow as tf
from keras import ops

from tf_bigmodels import _checks
from tf_bigmodels.layers.initializers import clone_initializer


@keras.saving.register_keras_serializable(package="tf_bigmodels")
class PositionEmbedding(keras.layers.Layer):
    """A learned `[max_length, width]` table, one row per absolute position.

    Called on a sequence `(batch, seq, width)` it returns the embeddings of positions
    `start_index .. start_index + seq - 1` broadcast to the input's shape, or, when `positions`
    `(batch, seq)` is given, the rows at those positions (left-padded generation). A sequence that
    reaches past `max_length` raises a ValueError (static shapes) or an InvalidArgumentError (in a
    graph) instead of silently reading the wrong rows.

    Args:
        max_length: int. Number of positions the table holds.
        initializer: initializer of the table. Defaults to "glorot_uniform".
        **kwargs: base layer arguments.

    Call arguments:
        x: tensor `(batch, seq, width)`; only its shape is used.
        start_index: int or scalar tensor. Position of the first element. Defaults to 0.
        positions: optional int tensor `(batch, seq)` of explicit positions.

    Example:

    >>> embedding = PositionEmbedding(max_length=128)
    >>> tokens = keras.random.normal((2, 16, 32))
    >>> (tokens + embedding(tokens)).shape
    TensorShape([2, 16, 32])
    """

    def __init__(self, max_length, initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.max_length = _checks.positive_int("max_length", max_length)
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.max_length, input_shape[-1]),
            initializer=clone_initializer(self.initializer),
        )

    def call(self, x, start_index=0, positions=None):
        embeddings = ops.convert_to_tensor(self.embeddings, dtype=self.compute_dtype)
        if positions is not None:
            return ops.take(embeddings, positions, axis=0)
        length = x.shape[1]
        if isinstance(length, int) and isinstance(start_index, int):
            if start_index + length > self.max_length:
                raise ValueError(
                    f"The input sequence must fit the {self.max_length} positions of "
                    f"`max_length`={self.max_length}, got length {length} from position "
                    f"{start_index}. Shorten the input or build the model with a larger "
                    "`max_length`."
                )
        else:
            length = ops.shape(x)[1]
            tf.debugging.assert_less_equal(
                start_index + length,
                self.max_length,
                message=f"sequence length exceeds `max_length`={self.max_length}",
            )
        rows = ops.slice(embeddings, (start_index, 0), (length, ops.shape(embeddings)[1]))
        return ops.broadcast_to(rows, ops.shape(x))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            max_length=self.max_length, initializer=keras.initializers.serialize(self.initializer)
        )
        return config
