"""The Transformer block: self-attention and a feed-forward network, each with a residual."""

import keras
from keras import ops

from tf_bigmodels import _checks
from tf_bigmodels.layers.activations import get_activation, serialize_activation
from tf_bigmodels.layers.attention import MultiHeadSelfAttention
from tf_bigmodels.layers.initializers import clone_initializer
from tf_bigmodels.layers.masks import attention_mask


@keras.saving.register_keras_serializable(package="tf_bigmodels")
class TransformerLayer(keras.layers.Layer):
    """One Transformer block, encoder (bidirectional) or decoder-only (causal).

    Post-norm (original Transformer, BERT; `norm_first=False`):
        x = LN(x + Dropout(MHA(x)));  x = LN(x + Dropout(FFN(x)))
    Pre-norm (GPT-2; `norm_first=True`):
        x = x + Dropout(MHA(LN(x)));  x = x + Dropout(FFN(LN(x)))
    with FFN(x) = Dense(d_model)(activation(Dense(dff)(x))), so the block maps `d_model` back to
    `d_model` whatever `dff` is, and each of the `num_heads` heads has `d_model // num_heads` dims.

    Masks: `padding_mask` `[batch, seq]` (1/True = real token) keeps padded positions out of every
    real position's output; `causal=True` makes position i depend only on positions <= i. Both are
    merged by `tf_bigmodels.layers.attention_mask`. Under a mixed-precision policy the layer norms
    and the attention softmax run in float32.

    Args:
        d_model: int. Width of the input and output.
        num_heads: int. Number of attention heads; must divide `d_model`.
        dff: int. Width of the feed-forward hidden layer (usually 4 * d_model).
        rate: float in [0, 1). Dropout on attention weights, attention output and FFN output.
            Defaults to 0.1.
        causal: bool. Mask future positions (GPT). Defaults to False.
        norm_first: bool. Pre-norm if True, post-norm if False. Defaults to False.
        activation: str or callable. FFN activation: "gelu" (exact erf form),
            "gelu_approximate" (tanh form, GPT-2) or any Keras activation. Defaults to "gelu".
        epsilon: float > 0. Layer-norm epsilon. Defaults to 1e-6.
        kernel_initializer: initializer of the QKV and first FFN kernels.
            Defaults to "glorot_uniform".
        output_kernel_initializer: initializer of the two residual projections (attention output,
            second FFN dense); None uses `kernel_initializer`. GPT-2 scales it by
            1/sqrt(2 * num_layers).
        bias_initializer: initializer of every bias. Defaults to "zeros".
        **kwargs: base layer arguments (`name`, `dtype`, `trainable`).

    Call arguments:
        x: float tensor `(batch, seq, d_model)`.
        padding_mask: `(batch, seq)` bool or 0/1 tensor, or None.
        training: bool. Enables dropout.
        return_attention_scores: bool. Also return the float32 attention weights
            `(batch, heads, seq, seq)`.
        mask: the Keras mask of the input (e.g. from `Embedding(mask_zero=True)`), used as the
            padding mask when `padding_mask` is None. Keras passes it automatically.
        cache: optional key/value cache `(batch, 2, num_heads, cache_length, d_model // num_heads)`
            for incremental decoding (see `MultiHeadSelfAttention`). With a cache, `x` holds the
            positions at cache slots `cache_index .. cache_index + seq - 1`, `padding_mask` covers
            the cache slots `(batch, cache_length)`, and the call returns `(output, cache)` (or
            `(output, weights, cache)`). Slots after the current query are hidden by the causal
            mask, so use a cache only with `causal=True`.
        cache_index: int or scalar int tensor. Cache slot of the first position of `x`.
            Defaults to 0.

    Example:

    >>> inputs = keras.Input((None, 64))
    >>> x = TransformerLayer(d_model=64, num_heads=4, dff=256, causal=True)(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(1)(x))
    """

    def __init__(
        self,
        d_model,
        num_heads,
        dff,
        rate=0.1,
        *,
        causal=False,
        norm_first=False,
        activation="gelu",
        epsilon=1e-6,
        kernel_initializer="glorot_uniform",
        output_kernel_initializer=None,
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.d_model = _checks.positive_int("d_model", d_model)
        self.num_heads = _checks.positive_int("num_heads", num_heads)
        _checks.divisible("d_model", self.d_model, "num_heads", self.num_heads)
        self.dff = _checks.positive_int("dff", dff)
        self.rate = _checks.unit_interval("rate", rate)
        self.causal = _checks.boolean("causal", causal)
        self.norm_first = _checks.boolean("norm_first", norm_first)
        self.activation = get_activation(activation)
        self.epsilon = _checks.positive_float("epsilon", epsilon)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.output_kernel_initializer = keras.initializers.get(
            output_kernel_initializer or kernel_initializer
        )
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.supports_masking = True

        self.attention = MultiHeadSelfAttention(
            self.num_heads,
            self.rate,
            kernel_initializer=self.kernel_initializer,
            output_kernel_initializer=self.output_kernel_initializer,
            bias_initializer=self.bias_initializer,
            dtype=self.dtype_policy,
            name="attention",
        )
        self.attention_dropout = keras.layers.Dropout(
            self.rate, dtype=self.dtype_policy, name="attention_output_dropout"
        )
        self.attention_norm = keras.layers.LayerNormalization(
            epsilon=self.epsilon, dtype=self.dtype_policy, name="attention_norm"
        )
        self.ffn_hidden = keras.layers.Dense(
            self.dff,
            activation=self.activation,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            bias_initializer=clone_initializer(self.bias_initializer),
            dtype=self.dtype_policy,
            name="ffn_hidden",
        )
        self.ffn_output = keras.layers.Dense(
            self.d_model,
            kernel_initializer=clone_initializer(self.output_kernel_initializer),
            bias_initializer=clone_initializer(self.bias_initializer),
            dtype=self.dtype_policy,
            name="ffn_output",
        )
        self.ffn_dropout = keras.layers.Dropout(
            self.rate, dtype=self.dtype_policy, name="ffn_dropout"
        )
        self.ffn_norm = keras.layers.LayerNormalization(
            epsilon=self.epsilon, dtype=self.dtype_policy, name="ffn_norm"
        )

    def build(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] != self.d_model:
            raise ValueError(
                f"The input of TransformerLayer '{self.name}' must have last dimension "
                f"`d_model`={self.d_model}, got {input_shape[-1]}."
            )
        self.attention.build(input_shape)
        self.attention_norm.build(input_shape)
        self.ffn_hidden.build(input_shape)
        self.ffn_output.build(tuple(input_shape[:-1]) + (self.dff,))
        self.ffn_norm.build(input_shape)

    def call(
        self,
        x,
        padding_mask=None,
        training=None,
        return_attention_scores=False,
        mask=None,
        cache=None,
        cache_index=0,
    ):
        if padding_mask is None:
            padding_mask = mask
        if cache is not None and not self.causal:
            raise ValueError(
                f"`cache` must be None for TransformerLayer '{self.name}', which has "
                "causal=False (a key/value cache serves causal decoding only), got a cache."
            )
        length = ops.shape(x)[1]
        key_length = length if cache is None else ops.shape(cache)[3]
        allowed = attention_mask(
            padding_mask,
            causal=self.causal,
            query_length=length,
            key_length=key_length,
            query_offset=0 if cache is None else cache_index,
        )

        residual = x
        if self.norm_first:
            x = self.attention_norm(x)
        if cache is None:
            x, weights = self.attention(
                x, attention_mask=allowed, training=training, return_attention_scores=True
            )
        else:
            x, weights, cache = self.attention(
                x,
                attention_mask=allowed,
                training=training,
                return_attention_scores=True,
                cache=cache,
                cache_index=cache_index,
            )
        x = residual + self.attention_dropout(x, training=training)
        if not self.norm_first:
            x = self.attention_norm(x)

        residual = x
        if self.norm_first:
            x = self.ffn_norm(x)
        x = self.ffn_output(self.ffn_hidden(x))
        x = residual + self.ffn_dropout(x, training=training)
        if not self.norm_first:
            x = self.ffn_norm(x)
        outputs = (x, weights) if return_attention_scores else (x,)
        if cache is not None:
            outputs += (cache,)
        return outputs if len(outputs) > 1 else outputs[0]

    def compute_mask(self, x, mask=None):
        return mask

    def get_config(self):
        config = super().get_config()
        config.update(
            d_model=self.d_model,
            num_heads=self.num_heads,
            dff=self.dff,
            rate=self.rate,
            causal=self.causal,
            norm_first=self.norm_first,
            activation=serialize_activation(self.activation),
            epsilon=self.epsilon,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            output_kernel_initializer=keras.initializers.serialize(self.output_kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
        )
        return config
