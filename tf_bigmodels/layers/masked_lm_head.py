"""The BERT masked-language-model head."""

import keras
from keras import ops

from tf_bigmodels import _checks
from tf_bigmodels.layers.activations import get_activation, serialize_activation
from tf_bigmodels.layers.initializers import clone_initializer


@keras.saving.register_keras_serializable(package="tf_bigmodels")
class MaskedLMHead(keras.layers.Layer):
    """Predicts the tokens at masked positions: gather, Dense + activation, LayerNorm, tied output.

    The output projection is the transposed token-embedding matrix, passed at call time so the
    weights stay tied to the embedding that owns them (and this layer's config stays plain); the
    head has its own output bias. Logits are returned in float32 under any dtype policy.

    Args:
        vocab_size: int. Size of the output vocabulary (rows of the embedding matrix).
        activation: str or callable. Activation of the transform. Defaults to "gelu".
        epsilon: float > 0. Layer-norm epsilon. Defaults to 1e-12 (BERT).
        kernel_initializer: initializer of the transform kernel. Defaults to "glorot_uniform".
        **kwargs: base layer arguments.

    Call arguments:
        sequence: float tensor `(batch, seq, width)`, the encoder output.
        mask_positions: int tensor `(batch, predictions)`, positions to predict.
        embeddings: the `(vocab_size, width)` token-embedding matrix.

    Example:

    >>> head = MaskedLMHead(vocab_size=100)
    >>> table = keras.random.normal((100, 32))
    >>> head(keras.random.normal((2, 16, 32)), keras.ops.array([[1, 5], [0, 2]]), table).shape
    TensorShape([2, 2, 100])
    """

    def __init__(
        self,
        vocab_size,
        activation="gelu",
        epsilon=1e-12,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocab_size = _checks.positive_int("vocab_size", vocab_size)
        self.activation = get_activation(activation)
        self.epsilon = _checks.positive_float("epsilon", epsilon)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, sequence_shape, mask_positions_shape=None, embeddings_shape=None):
        width = sequence_shape[-1]
        self.transform = keras.layers.Dense(
            width,
            activation=self.activation,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            dtype=self.dtype_policy,
            name="transform",
        )
        self.transform.build((None, None, width))
        self.norm = keras.layers.LayerNormalization(
            epsilon=self.epsilon, dtype=self.dtype_policy, name="norm"
        )
        self.norm.build((None, None, width))
        self.bias = self.add_weight(
            name="output_bias", shape=(self.vocab_size,), initializer="zeros"
        )

    def call(self, sequence, mask_positions, embeddings):
        x = ops.take_along_axis(sequence, ops.expand_dims(mask_positions, -1), axis=1)  # (B, P, d)
        x = self.norm(self.transform(x))
        logits = ops.matmul(x, ops.transpose(ops.cast(embeddings, x.dtype)))  # (B, P, vocab)
        return ops.cast(logits, "float32") + ops.cast(self.bias, "float32")

    def compute_output_shape(self, sequence_shape, mask_positions_shape, embeddings_shape):
        return tuple(mask_positions_shape) + (self.vocab_size,)

    def get_config(self):
        config = super().get_config()
        config.update(
            vocab_size=self.vocab_size,
            activation=serialize_activation(self.activation),
            epsilon=self.epsilon,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config
