"""Scaled dot-product attention and multi-head self-attention with a fused QKV projection."""

import math

import keras
from keras import ops

from tf_bigmodels import _checks
from tf_bigmodels.layers.initializers import clone_initializer

# Masked scores are set (not added) in float32, so the value never overflows a float16 tensor and
# a row whose keys are all masked gets a uniform distribution rather than NaN.
_MASKED_SCORE = -1e9


def scaled_dot_product_attention(query, key, value, mask=None, *, dropout=None, training=None):
    """Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V, for every head at once.

    The scores and the softmax are computed in float32 whatever the input dtype (mixed precision
    safe); the weighted sum runs in the dtype of `value`.

    Args:
        query: tensor `(B, heads, Tq, d_k)`.
        key: tensor `(B, heads, Tk, d_k)`.
        value: tensor `(B, heads, Tk, d_v)`.
        mask: bool tensor broadcastable to `(B, Tq, Tk)`, True where a query may attend to a key
            (see `tf_bigmodels.layers.attention_mask`), or None.
        dropout: optional `keras.layers.Dropout` applied to the attention weights.
        training: bool. Passed to `dropout`.

    Returns:
        `(output, weights)`: output `(B, heads, Tq, d_v)` and float32 weights `(B, heads, Tq, Tk)`.

    Example:

    >>> q = k = v = keras.random.normal((1, 2, 4, 8))
    >>> out, weights = scaled_dot_product_attention(q, k, v)
    >>> out.shape, weights.shape
    (TensorShape([1, 2, 4, 8]), TensorShape([1, 2, 4, 4]))
    """
    depth = query.shape[-1]
    query = query * ops.cast(1.0 / math.sqrt(depth), query.dtype)
    scores = ops.cast(ops.einsum("bhqd,bhkd->bhqk", query, key), "float32")  # (B, h, Tq, Tk)
    if mask is not None:
        scores = ops.where(ops.expand_dims(mask, 1), scores, _MASKED_SCORE)
    weights = ops.softmax(scores, axis=-1)
    probabilities = ops.cast(weights, value.dtype)
    if dropout is not None:
        probabilities = dropout(probabilities, training=training)
    return ops.einsum("bhqk,bhkd->bhqd", probabilities, value), weights


@keras.saving.register_keras_serializable(package="tf_bigmodels")
class MultiHeadSelfAttention(keras.layers.Layer):
    """Multi-head self-attention: MultiHead(X) = Concat(head_1, ..., head_h) W^O.

    Each head is `scaled_dot_product_attention` on its own `d_model // num_heads` slice of one
    fused projection `X W^{QKV}` (one matmul instead of three). The output projection `W^O` maps the
    concatenated heads back to `d_model`.

    We write this layer rather than use `keras.layers.MultiHeadAttention` because the GPT decoder
    needs a fused QKV projection and a key/value cache that Keras's layer does not have.

    Key/value cache (incremental decoding): pass `cache`, a tensor
    `(B, 2, num_heads, cache_length, head_dim)` holding the keys (`[:, 0]`) and values (`[:, 1]`)
    of earlier positions, and `cache_index`, the slot of the first query. The layer writes the
    keys and values of `x` into slots `cache_index .. cache_index + T - 1` and attends to all
    `cache_length` slots; `attention_mask` (`(B, T, cache_length)`) must hide the slots not yet
    written (a causal mask with `query_offset=cache_index` does). The call then also returns the
    updated cache. The cache has a static shape, so the same graph serves every decoding step.

    Args:
        num_heads: int. Number of heads; must divide the input width.
        rate: float in [0, 1). Dropout on the attention weights. Defaults to 0.
        kernel_initializer: initializer of the QKV kernel. Defaults to "glorot_uniform".
        output_kernel_initializer: initializer of `W^O`; None uses `kernel_initializer`.
        bias_initializer: initializer of both biases. Defaults to "zeros".
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        x: tensor `(B, T, d_model)`.
        attention_mask: bool tensor broadcastable to `(B, T, T)`, True where attending is
            allowed, or None.
        training: bool.
        return_attention_scores: bool. Also return the float32 weights `(B, heads, T, keys)`.
        cache: optional key/value cache `(B, 2, heads, cache_length, head_dim)` (see above).
        cache_index: int or scalar int tensor. Cache slot of the first query. Defaults to 0.

    Returns:
        The output `(B, T, d_model)`, followed by the weights if `return_attention_scores` and
        by the updated cache if `cache` is given (a tuple when there is more than one).

    Example:

    >>> attention = MultiHeadSelfAttention(num_heads=4)
    >>> attention(keras.random.normal((2, 10, 64))).shape
    TensorShape([2, 10, 64])
    """

    def __init__(
        self,
        num_heads,
        rate=0.0,
        *,
        kernel_initializer="glorot_uniform",
        output_kernel_initializer=None,
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = _checks.positive_int("num_heads", num_heads)
        self.rate = _checks.unit_interval("rate", rate)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.output_kernel_initializer = keras.initializers.get(
            output_kernel_initializer or kernel_initializer
        )
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.attention_dropout = keras.layers.Dropout(
            self.rate, dtype=self.dtype_policy, name="attention_dropout"
        )

    def build(self, input_shape):
        d_model = input_shape[-1]
        _checks.divisible("d_model", d_model, "num_heads", self.num_heads)
        self.head_dim = d_model // self.num_heads
        self.qkv = keras.layers.Dense(
            3 * d_model,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            bias_initializer=clone_initializer(self.bias_initializer),
            dtype=self.dtype_policy,
            name="qkv",
        )
        self.qkv.build(input_shape)
        self.output_dense = keras.layers.Dense(
            d_model,
            kernel_initializer=clone_initializer(self.output_kernel_initializer),
            bias_initializer=clone_initializer(self.bias_initializer),
            dtype=self.dtype_policy,
            name="output_dense",
        )
        self.output_dense.build(input_shape)

    def call(
        self,
        x,
        attention_mask=None,
        training=None,
        return_attention_scores=False,
        cache=None,
        cache_index=0,
    ):
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        qkv = ops.reshape(self.qkv(x), (batch, length, 3, self.num_heads, self.head_dim))
        qkv = ops.transpose(qkv, (0, 2, 3, 1, 4))  # (B, 3, h, T, hd)
        query = qkv[:, 0]
        if cache is not None:
            zero = ops.zeros((), "int32")
            cache = ops.slice_update(
                cache,
                (zero, zero, zero, ops.cast(cache_index, "int32"), zero),
                ops.cast(qkv[:, 1:], cache.dtype),
            )  # (B, 2, h, cache_length, hd)
            key, value = cache[:, 0], cache[:, 1]
        else:
            key, value = qkv[:, 1], qkv[:, 2]
        heads, weights = scaled_dot_product_attention(
            query, key, value, attention_mask, dropout=self.attention_dropout, training=training
        )
        heads = ops.reshape(ops.transpose(heads, (0, 2, 1, 3)), (batch, length, -1))  # (B, T, d)
        outputs = (self.output_dense(heads),)
        if return_attention_scores:
            outputs += (weights,)
        if cache is not None:
            outputs += (cache,)
        return outputs if len(outputs) > 1 else outputs[0]

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            rate=self.rate,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            output_kernel_initializer=keras.initializers.serialize(self.output_kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
        )
        return config
