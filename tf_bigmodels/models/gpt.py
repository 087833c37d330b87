"""GPT: a decoder-only Transformer language model."""

import math

import keras
from keras import ops

from tf_bigmodels import _checks
from tf_bigmodels.layers import PositionEmbedding, TransformerLayer
from tf_bigmodels.layers.activations import get_activation, serialize_activation
from tf_bigmodels.layers.initializers import clone_initializer


@keras.saving.register_keras_serializable(package="tf_bigmodels")
class GPTModel(keras.Model):
    """A GPT-2 style language model returning next-token logits.

    token + learned position embedding -> dropout -> `num_layers` causal `TransformerLayer`s ->
    final layer norm (pre-norm models) -> logits through the transposed token embedding (tied, the
    GPT-2 default) or a separate output matrix. Training minimises
    L = -sum_i log P(y_i | x_<i), the sparse categorical cross-entropy of these logits against the
    inputs shifted by one; the causal mask is what makes P(y_i | .) depend only on x_<=i.

    Initialisation follows GPT-2: weights normal(0, `initializer_range`), the two residual
    projections of each block normal(0, `initializer_range` / sqrt(2 * num_layers)), biases zero.
    Logits are float32 under every dtype policy.

    Args:
        vocab_size: int. Number of token ids.
        d_model: int. Model width.
        num_heads: int. Attention heads; must divide `d_model`.
        dff: int. Feed-forward width (4 * d_model in GPT-2).
        num_layers: int. Number of Transformer blocks.
        rate: float in [0, 1). Dropout rate. Defaults to 0.1.
        max_length: int. Longest sequence (the position table's size). Defaults to 1024.
        tie_embeddings: bool. Share the token embedding with the output projection.
            Defaults to True.
        norm_first: bool. Pre-norm blocks plus a final layer norm (GPT-2) if True; post-norm blocks
            (GPT-1) if False. Defaults to True.
        activation: str or callable. FFN activation. Defaults to "gelu_approximate" (GPT-2).
        epsilon: float. Layer-norm epsilon. Defaults to 1e-5 (GPT-2).
        initializer_range: float. Standard deviation of the weight initialiser. Defaults to 0.02.
        **kwargs: base model arguments (`name`, `dtype`).

    Call arguments:
        token_ids: int tensor `(batch, seq)`, seq <= max_length.
        padding_mask: optional `(batch, seq)` bool/0-1 tensor, 1 = real token.
        training: bool. Enables dropout.

    Example:

    >>> model = GPTModel(vocab_size=259, d_model=128, num_heads=4, dff=512, num_layers=4,
    ...                  rate=0.0, max_length=64)
    >>> model(keras.ops.ones((2, 64), "int32")).shape
    TensorShape([2, 64, 259])
    """

    def __init__(self, vocab_size, d_model, num_heads, dff, num_layers, rate=0.1, *,
                 max_length=1024, tie_embeddings=True, norm_first=True,
                 activation="gelu_approximate", epsilon=1e-5, initializer_range=0.02, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = _checks.positive_int("vocab_size", vocab_size)
        self.d_model = _checks.positive_int("d_model", d_model)
        self.num_heads = _checks.positive_int("num_heads", num_heads)
        _checks.divisible("d_model", self.d_model, "num_heads", self.num_heads)
        self.dff = _checks.positive_int("dff", dff)
        self.num_layers = _checks.positive_int("num_layers", num_layers)
        self.rate = _checks.unit_interval("rate", rate)
        self.max_length = _checks.positive_int("max_length", max_length)
        self.tie_embeddings = bool(tie_embeddings)
        self.norm_first = bool(norm_first)
        self.activation = serialize_activation(get_activation(activation))
        self.epsilon = _checks.positive_float("epsilon", epsilon)
        self.initializer_range = _checks.positive_float("initializer_range", initializer_range)

        weights = keras.initializers.RandomNormal(stddev=self.initializer_range)
        residual = keras.initializers.RandomNormal(
            stddev=self.initializer_range / math.sqrt(2 * self.num_layers))
        policy = self.dtype_policy
        self.token_embedding = keras.layers.ReversibleEmbedding(
            self.vocab_size, self.d_model, tie_weights=self.tie_embeddings,
            embeddings_initializer=clone_initializer(weights), dtype=policy, name="token_embedding")
        self.position_embedding = PositionEmbedding(
            self.max_length, initializer=clone_initializer(weights), dtype=policy, name="position_embedding")
        self.embedding_dropout = keras.layers.Dropout(
            self.rate, dtype=policy, name="embedding_dropout")
        self.blocks = [
            TransformerLayer(
                self.d_model, self.num_heads, self.dff, self.rate, causal=True,
                norm_first=self.norm_first, activation=self.activation, epsilon=self.epsilon,
                kernel_initializer=weights, output_kernel_initializer=residual, dtype=policy,
                name=f"block_{i}")
            for i in range(self.num_layers)
        ]
        self.final_norm = (
            keras.layers.LayerNormalization(epsilon=self.epsilon, dtype=policy, name="final_norm")
            if self.norm_first else None)

    def build(self, token_ids_shape, padding_mask_shape=None):
        self.token_embedding.build(token_ids_shape)
        hidden_shape = tuple(token_ids_shape) + (self.d_model,)
        self.position_embedding.build(hidden_shape)
        for block in self.blocks:
            block.build(hidden_shape)
        if self.final_norm is not None:
            self.final_norm.build(hidden_shape)

    def call(self, token_ids, padding_mask=None, training=False):
        x = self.hidden_states(token_ids, padding_mask=padding_mask, training=training)
        return ops.cast(self.token_embedding(x, reverse=True), "float32")  # (B, T, vocab)

    def hidden_states(self, token_ids, padding_mask=None, training=False):
        """The final hidden states `(batch, seq, d_model)`, before the output projection.

        Example:

        >>> model = GPTModel(100, 32, 2, 64, 1, max_length=16)
        >>> model.hidden_states(keras.ops.ones((1, 8), "int32")).shape
        TensorShape([1, 8, 32])
        """
        x = self.token_embedding(token_ids)
        x = self.embedding_dropout(x + self.position_embedding(x), training=training)
        for block in self.blocks:
            x = block(x, padding_mask=padding_mask, training=training)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x

    def get_config(self):
        config = super().get_config()
        config.update(
            vocab_size=self.vocab_size, d_model=self.d_model, num_heads=self.num_heads,
            dff=self.dff, num_layers=self.num_layers, rate=self.rate, max_length=self.max_length,
            tie_embeddings=self.tie_embeddings, norm_first=self.norm_first,
            activation=self.activation, epsilon=self.epsilon,
            initializer_range=self.initializer_range)
        return config
