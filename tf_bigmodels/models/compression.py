"""Weight-compressed decoding copies of a `GPTModel`: bfloat16 or int8 weights, float32 logits.

At batch 1 every new token reads every weight once, so decoding is bounded by memory bandwidth /
bytes per token; fewer bytes per weight is the way past the float32 bound. `compress_weights`
returns a copy of a trained model for decoding (`generate`, `export_gpt`, `stream_text`) whose
large matrices are stored in 2 bytes (bfloat16) or 1 byte (int8) per weight:

- The Dense layers (the fused QKV projection, the attention output and both feed-forward
  matrices) become `CompressedDense`: the kernel stored *transposed*, `(units, inputs)`, so each
  output is a dot product over contiguous memory. XLA:CPU runs a bfloat16 matrix-vector product
  fast only in that layout (measured here: over 30x slower in the Keras layout `(inputs, units)`),
  which is also why Keras's own `Dense.quantize("int8")` does not serve for decoding: it keeps
  the `(inputs, units)` layout and, by default, quantizes the activations too (an int8 x int8
  product, less exact and slower on this CPU than the float32 one). int8 kernels here are
  weight-only: per output unit a scale s_j = max_i |W_ij| / 127 and q_ij = round(W_ij / s_j);
  the product dequantizes inside the matmul, y_j = s_j * sum_i x_i q_ij, in float32.
- The tied token embedding (the output projection too) uses Keras's own
  `ReversibleEmbedding.quantize("int8")` with weight-only int8 (one scale per vocabulary row,
  no activation quantizer): the lookup dequantizes one row, and the output projection
  `h E^T` already has the contiguous layout. For bfloat16 the embedding is stored in bfloat16
  with `reverse_dtype="float32"`, so the logits are a float32 product.
- Layer norms, biases, the position table, the attention softmax, the key/value cache, the
  logits and sampling stay float32.

The copy is a `CompressedGPTModel`, a `GPTModel` whose config records the weight format, so that
`keras.saving.load_model` rebuilds the compressed layers before it reads their values: a copy
saved as `.keras` loads back with the same outputs.

Example:

>>> from tf_bigmodels.models import GPTModel
>>> model = GPTModel(258, 32, 2, 64, 1, rate=0.0, max_length=64)
>>> small = compress_weights(model, "int8")
>>> small.blocks[0].ffn_hidden.kernel.dtype
'int8'
"""

import keras
from keras import ops

from tf_bigmodels import _checks
from tf_bigmodels.layers.activations import get_activation, serialize_activation
from tf_bigmodels.models.gpt import GPTModel

WEIGHTS = ("float32", "bfloat16", "int8")
_INT8_MAX = 127.0


@keras.saving.register_keras_serializable(package="tf_bigmodels")
class CompressedDense(keras.layers.Layer):
    """A Dense layer for decoding: kernel stored transposed, in bfloat16 or int8.

    y = activation(x W + b), with W kept as W^T `(units, inputs)`. `"bfloat16"`: the product
    runs in bfloat16 and its result is cast back to the input dtype. `"int8"`: weight-only
    int8 with one float32 scale per output unit, `y_j = s_j * sum_i x_i q_ij`, computed in the
    input dtype (the int8 kernel is converted inside the matmul). The bias stays float32.
    Inference only: the kernel is not trainable. Make one from a built `keras.layers.Dense`
    with `from_dense`.

    Args:
        units: int. Output width.
        weights: "bfloat16" or "int8". Storage of the kernel.
        activation: str or callable or None. Defaults to None.
        **kwargs: base layer arguments (`name`, `dtype`).

    Example:

    >>> dense = keras.layers.Dense(4)
    >>> x = keras.random.normal((1, 8))
    >>> y = dense(x)
    >>> small = CompressedDense.from_dense(dense, "int8")
    >>> float(ops.max(ops.abs(small(x) - y))) < 0.05
    True
    """

    def __init__(self, units, weights="bfloat16", activation=None, **kwargs):
        super().__init__(**kwargs)
        self.units = _checks.positive_int("units", units)
        self.weights_format = _checks.one_of("weights", weights, WEIGHTS[1:])
        self.activation = get_activation(activation) if activation is not None else None

    def build(self, input_shape):
        storage = "int8" if self.weights_format == "int8" else "bfloat16"
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.units, input_shape[-1]),
            initializer="zeros",
            dtype=storage,
            trainable=False,
            autocast=False,
        )
        self.kernel_scale = None
        if self.weights_format == "int8":
            self.kernel_scale = self.add_weight(
                name="kernel_scale",
                shape=(self.units,),
                initializer="ones",
                dtype="float32",
                trainable=False,
                autocast=False,
            )
        self.bias = self.add_weight(
            name="bias", shape=(self.units,), initializer="zeros", trainable=False
        )

    def call(self, x):
        if self.weights_format == "bfloat16":
            y = ops.matmul(ops.cast(x, "bfloat16"), ops.transpose(self.kernel))
            y = ops.cast(y, x.dtype)
        else:
            y = ops.matmul(x, ops.transpose(ops.cast(self.kernel, x.dtype)))
            y = y * ops.cast(self.kernel_scale, x.dtype)
        y = y + ops.cast(self.bias, x.dtype)
        return y if self.activation is None else self.activation(y)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    @classmethod
    def from_dense(cls, dense, weights):
        """A built `CompressedDense` holding the compressed weights of a built Dense layer.

        Args:
            dense: a built `keras.layers.Dense` with a bias.
            weights: "bfloat16" or "int8".

        Example:

        >>> dense = keras.layers.Dense(4)
        >>> dense.build((None, 8))
        >>> tuple(CompressedDense.from_dense(dense, "bfloat16").kernel.shape)
        (4, 8)
        """
        layer = cls(
            dense.units,
            weights,
            activation=None
            if dense.activation is keras.activations.linear
            else serialize_activation(dense.activation),
            dtype=dense.dtype_policy,
            name=dense.name,
        )
        kernel = ops.convert_to_numpy(ops.cast(dense.kernel, "float32")).T  # (units, inputs)
        layer.build((None, kernel.shape[1]))
        if layer.weights_format == "int8":
            scale = abs(kernel).max(axis=1) / _INT8_MAX
            scale[scale == 0] = 1.0
            layer.kernel.assign(ops.cast(ops.round(kernel / scale[:, None]), "int8"))
            layer.kernel_scale.assign(scale)
        else:
            layer.kernel.assign(ops.cast(kernel, "bfloat16"))
        layer.bias.assign(ops.cast(dense.bias, "float32"))
        return layer

    def get_config(self):
        config = super().get_config()
        config.update(
            units=self.units,
            weights=self.weights_format,
            activation=None if self.activation is None else serialize_activation(self.activation),
        )
        return config


@keras.saving.register_keras_serializable(package="tf_bigmodels")
class Bfloat16Embedding(keras.layers.ReversibleEmbedding):
    """A `keras.layers.ReversibleEmbedding` stored in bfloat16 that computes in float32.

    The lookup returns the bfloat16 rows as float32; the reverse projection (the logits) is a
    float32 product of the hidden states and the bfloat16 table converted to float32
    (`reverse_dtype="float32"`).

    Args:
        input_dim: int. Vocabulary size.
        output_dim: int. Embedding width.
        **kwargs: other `keras.layers.ReversibleEmbedding` arguments (`tie_weights`, `name`).

    Example:

    >>> layer = Bfloat16Embedding(10, 4)
    >>> keras.backend.standardize_dtype(layer(ops.array([[1, 2]])).dtype), layer.embeddings.dtype
    ('float32', 'bfloat16')
    """

    def __init__(self, input_dim, output_dim, **kwargs):
        kwargs.update(dtype="bfloat16", reverse_dtype="float32")
        super().__init__(input_dim, output_dim, **kwargs)

    def call(self, inputs, reverse=False):
        return ops.cast(super().call(inputs, reverse=reverse), "float32")


@keras.saving.register_keras_serializable(package="tf_bigmodels")
class CompressedGPTModel(GPTModel):
    """A `GPTModel` for decoding whose large matrices are bfloat16 or int8 (see the module).

    `compress_weights` makes one from a trained model. Its config is `GPTModel`'s plus
    `weights`, so a `.keras` file of it loads back with `keras.saving.load_model`, compressed,
    with the same outputs. Inference only (its compressed kernels are not trainable).

    Args:
        *args: `GPTModel`'s arguments (`vocab_size, d_model, num_heads, dff, num_layers`).
        weights: "bfloat16" or "int8". Storage of the large matrices. Defaults to "int8".
        **kwargs: `GPTModel`'s keyword arguments.

    Example:

    >>> model = GPTModel(258, 32, 2, 64, 1, rate=0.0, max_length=64)
    >>> small = compress_weights(model, "int8")
    >>> small.save("small.keras")
    >>> loaded = keras.saving.load_model("small.keras")
    >>> ids = ops.array([[104, 105]])
    >>> type(loaded).__name__, bool(ops.all(loaded(ids) == small(ids)))
    ('CompressedGPTModel', True)
    """

    def __init__(self, *args, weights="int8", **kwargs):
        super().__init__(*args, **kwargs)
        self.weights_format = _checks.one_of("weights", weights, WEIGHTS[1:])

    def build_from_config(self, config):
        # Only `keras.saving.load_model` calls this: the file holds the compressed layers'
        # variables, so those layers must exist before it reads them.
        super().build_from_config(config)
        _compress_layers(self, self.weights_format)

    def get_config(self):
        return {**super().get_config(), "weights": self.weights_format}


def compress_weights(model, weights):
    """A decoding copy of `model` with its large matrices in bfloat16 or int8 (see the module).

    The copy is a `CompressedGPTModel`, a `GPTModel` (same sizes and outputs: float32 logits)
    for inference only: use it with `generate`, `export_gpt` and `stream_text`, or save it as
    `.keras`, not for training. Its dtype policy is float32 whatever `model`'s (a model trained
    under `mixed_bfloat16` too). `model` is not changed.

    Args:
        model: a `GPTModel` (built, or it is built here), or a copy made by this function.
        weights: "float32" (returns `model` itself), "bfloat16" or "int8". A copy already
            compressed is returned as it is for its own format or "float32", and refused for
            the other (its float32 weights are gone).

    Returns:
        A `GPTModel`: `model` itself or a `CompressedGPTModel`.

    Example:

    >>> from tf_bigmodels.models import GPTModel
    >>> model = GPTModel(258, 32, 2, 64, 1, rate=0.0, max_length=64)
    >>> compress_weights(model, "bfloat16").token_embedding.embeddings.dtype
    'bfloat16'
    >>> compress_weights(model, "fp8")
    Traceback (most recent call last):
    ...
    ValueError: `weights` must be one of ['float32', 'bfloat16', 'int8'], got 'fp8'.
    """
    weights = _checks.one_of("weights", weights, WEIGHTS)
    if not isinstance(model, GPTModel):
        raise TypeError(f"`model` must be a GPTModel, got {type(model).__name__}.")
    if isinstance(model, CompressedGPTModel):
        if weights not in ("float32", model.weights_format):
            raise ValueError(
                f"`weights` must be 'float32' or {model.weights_format!r} for a model already "
                f"compressed to {model.weights_format} (its float32 weights are gone), got "
                f"{weights!r}."
            )
        return model
    # Built, not called: a call on a one-token batch would run the attention softmax over a
    # single key, which Keras warns about.
    if not model.built:
        model.build((None, None))
    if weights == "float32":
        return model
    # The copy computes in float32 whatever `model`'s policy (a mixed_bfloat16 model too): its
    # matmuls run in bfloat16 where the weights are, everything else in float32.
    config = {**model.get_config(), "dtype": "float32", "weights": weights}
    copy = CompressedGPTModel.from_config(config)
    copy.build((None, None))
    copy.set_weights(model.get_weights())
    _compress_layers(copy, weights)
    return copy


def weights_format(model):
    """How a `GPTModel`'s weights are stored: "bfloat16" or "int8" for a `compress_weights`
    copy, else "float32".

    Example:

    >>> from tf_bigmodels.models import GPTModel
    >>> model = GPTModel(258, 32, 2, 64, 1, rate=0.0, max_length=64)
    >>> weights_format(model), weights_format(compress_weights(model, "int8"))
    ('float32', 'int8')
    """
    return model.weights_format if isinstance(model, CompressedGPTModel) else "float32"


def _compress_layers(model, weights):
    """Replaces the Dense layers of `model`'s blocks and its token embedding by compressed
    layers holding their values."""
    for block in model.blocks:
        for owner, name in (
            (block.attention, "qkv"),
            (block.attention, "output_dense"),
            (block, "ffn_hidden"),
            (block, "ffn_output"),
        ):
            _replace(owner, name, CompressedDense.from_dense(getattr(owner, name), weights))
    _replace(model, "token_embedding", _compressed_embedding(model.token_embedding, weights))


def _compressed_embedding(embedding, weights):
    if weights == "int8":
        # Weight-only int8: without an activation quantizer, the output projection multiplies
        # the float32 hidden state by the dequantized embedding.
        embedding.quantize(
            "int8", config=keras.quantizers.Int8QuantizationConfig(activation_quantizer=None)
        )
        return embedding
    layer = Bfloat16Embedding(
        embedding.input_dim,
        embedding.output_dim,
        tie_weights=embedding.tie_weights,
        name=embedding.name,
    )
    layer.build()
    layer.set_weights(embedding.get_weights())
    return layer


def _replace(owner, name, layer):
    """Sets sublayer `name` of `owner` to `layer`, so that `owner` no longer tracks the old one."""
    old = getattr(owner, name)
    if layer is old:
        return
    owner._tracker.untrack(old)
    locked = owner._tracker.locked
    owner._tracker.unlock()
    setattr(owner, name, layer)
    if locked:
        owner._tracker.lock()
