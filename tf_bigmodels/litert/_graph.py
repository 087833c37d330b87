"""The GPT and BERT forward passes as plain TensorFlow ops on constant weights, for the converter.

Why not trace the Keras models themselves: LiteRT wants a different cache than the Keras decode
loop. The model's cache is one 5-D tensor per layer updated in place by a slice update; in a
`.tflite` file that becomes strided slices that XNNPACK does not run, and any whole-cache update
is a copy of the cache per token. Here a decode step takes one key and one value input per layer
and returns only the NEW key/value rows; the caller writes them into the interpreter's input
buffers. The attention of a step is computed over the cache (masked by `key_mask`) plus the
step's own key, joined at the scores, so no cache-sized tensor is ever built.

Weights enter as constants (a converter reading a Keras model's variables can silently leave the
weights out of the file). The tied embedding is ONE constant in float32 (gather and output
projection read the same buffer). For int8, the converter would quantize the table twice (per
tensor for the gather, per row for the output projection); so the table is quantized here, per
row, and the output projection gets the same int8 values (as float32, scaled per row after the
product), which the converter re-quantizes to identical bytes and stores once.

`tests/test_litert.py` checks these graphs against the Keras models (logits to ~1e-4).
"""

import math
import tempfile

import numpy as np
import tensorflow as tf
from keras import ops

from tf_bigmodels._tracing import graph_function

_MASKED_SCORE = -1e9  # as the Keras attention: set, not added
_INT8_MAX = 127.0


def _numpy(variable):
    return ops.convert_to_numpy(ops.cast(variable, "float32"))


def _constant(array):
    return tf.constant(np.asarray(array, np.float32))


def _reshape(x, like, tail):
    """`x` reshaped to `like`'s leading dims (all but its last) followed by `tail`.

    With at most one unknown dim the target shape is a constant (-1 for the unknown), so the
    file has no shape arithmetic there: after the runner sizes the inputs, every shape is
    static, and XNNPACK runs the ops (it does not take shapes computed at run time).
    """
    dims = list(like.shape[:-1])
    if sum(d is None for d in dims) <= 1:
        return tf.reshape(x, [-1 if d is None else d for d in dims] + list(tail))
    dynamic = tf.shape(like)[:-1]
    return tf.reshape(x, tf.concat([dynamic, tf.constant(list(tail), tf.int32)], 0))


class _Dense:
    def __init__(self, dense, columns=None):
        kernel, bias = _numpy(dense.kernel), _numpy(dense.bias)
        if columns is not None:  # a slice of the output units
            kernel, bias = kernel[:, columns], bias[columns]
        self.kernel, self.bias = _constant(kernel), _constant(bias)
        self.activation = dense.activation

    def __call__(self, x):
        flat = tf.reshape(x, [-1, self.kernel.shape[0]])  # a 2-D product: FULLY_CONNECTED
        y = tf.matmul(flat, self.kernel) + self.bias
        if x.shape.rank > 2:
            y = _reshape(y, x, [self.kernel.shape[1]])
        return self.activation(y)


class _LayerNorm:
    def __init__(self, norm):
        self.gamma, self.beta = _constant(_numpy(norm.gamma)), _constant(_numpy(norm.beta))
        self.epsilon = norm.epsilon

    def __call__(self, x):
        mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
        return (x - mean) * tf.math.rsqrt(variance + self.epsilon) * self.gamma + self.beta


class _Block:
    """One `TransformerLayer` (pre- or post-norm) with attention written for LiteRT."""

    def __init__(self, layer):
        self.num_heads = layer.num_heads
        self.head_dim = layer.d_model // layer.num_heads
        self.norm_first = layer.norm_first
        # The fused QKV projection as three products: slicing its output would cost strided
        # slices at run time.
        width = layer.d_model
        self.qkv = [
            _Dense(layer.attention.qkv, slice(i * width, (i + 1) * width)) for i in range(3)
        ]
        self.attention_output = _Dense(layer.attention.output_dense)
        self.attention_norm = _LayerNorm(layer.attention_norm)
        self.ffn_hidden = _Dense(layer.ffn_hidden)
        self.ffn_output = _Dense(layer.ffn_output)
        self.ffn_norm = _LayerNorm(layer.ffn_norm)

    def _heads(self, x):
        """(B, T, d) -> query, key, value, each (B, h, T, hd)."""
        query, key, value = (
            tf.transpose(
                _reshape(dense(x), x, [self.num_heads, self.head_dim]), [0, 2, 1, 3]
            )  # (B, h, T, hd)
            for dense in self.qkv
        )
        return query * (1.0 / math.sqrt(self.head_dim)), key, value

    def _merge(self, heads):
        """(B, h, T, hd) -> (B, T, d) through the output projection."""
        merged = tf.transpose(heads, [0, 2, 1, 3])  # (B, T, h, hd)
        merged = _reshape(merged, merged[..., 0], [self.num_heads * self.head_dim])
        return self.attention_output(merged)

    def _residual(self, x, attend):
        """The block around an attention function `attend(normed x) -> (out, extra)`."""
        y, extra = attend(self.attention_norm(x) if self.norm_first else x)
        x = x + y
        if not self.norm_first:
            x = self.attention_norm(x)
        y = self.ffn_output(self.ffn_hidden(self.ffn_norm(x) if self.norm_first else x))
        x = x + y
        if not self.norm_first:
            x = self.ffn_norm(x)
        return x, extra

    def full(self, x, mask):
        """Attention over the sequence itself; `mask` (B, 1|T, T) bool. Returns (x, (k, v))."""

        def attend(h):
            query, key, value = self._heads(h)
            scores = tf.matmul(query, key, transpose_b=True)  # (B, h, T, T)
            scores = tf.where(tf.expand_dims(mask, 1), scores, _MASKED_SCORE)
            weights = tf.nn.softmax(scores, axis=-1)
            return self._merge(tf.matmul(weights, value)), (key, value)

        return self._residual(x, attend)

    def step(self, x, key_mask, cached_key, cached_value):
        """One token (B, 1, d) against the cache (B, h, T, hd); returns (x, (new k, new v))."""

        def attend(h):
            query, key, value = self._heads(h)  # (B, h, 1, hd)
            cached = tf.matmul(query, cached_key, transpose_b=True)  # (B, h, 1, T)
            visible = tf.expand_dims(tf.expand_dims(key_mask, 1), 1)  # (B, 1, 1, T)
            cached = tf.where(visible, cached, _MASKED_SCORE)
            own = tf.reduce_sum(query * key, axis=-1, keepdims=True)  # (B, h, 1, 1)
            weights = tf.nn.softmax(tf.concat([cached, own], axis=-1), axis=-1)
            on_cache, on_own = tf.split(weights, [-1, 1], axis=-1)  # constant sizes
            heads = tf.matmul(on_cache, cached_value) + on_own * value
            return self._merge(heads), (key, value)

        return self._residual(x, attend)


class _TokenEmbedding:
    """The token table (lookup and, tied, the output projection), float32 or int8, stored once."""

    def __init__(self, embedding, weights):
        table = _numpy(embedding.embeddings)  # (V, d)
        self.weights = weights
        if weights == "int8":
            scale = np.abs(table).max(axis=1) / _INT8_MAX
            scale[scale == 0] = 1.0
            quantized = np.round(table / scale[:, None])
            self.table = tf.constant(quantized.astype(np.int8))
            # The lookup's scales as int32 bits: the converter quantizes a float table read by
            # a gather, and these scales must stay exact.
            self.scale_bits = tf.constant(scale.astype(np.float32).view(np.int32))
            self.scale = _constant(scale)
            self.projection = _constant(quantized)  # re-quantized per row to the same bytes
        else:
            self.table = self.projection = _constant(table)
        self.reverse = None
        if not embedding.tie_weights:
            self.reverse = _constant(_numpy(embedding.reverse_embeddings))  # (d, V)

    def lookup(self, token_ids):
        rows = tf.gather(self.table, token_ids)
        if self.weights != "int8":
            return rows
        scale = tf.bitcast(tf.gather(self.scale_bits, token_ids), tf.float32)
        return tf.cast(rows, tf.float32) * tf.expand_dims(scale, -1)

    def logits(self, hidden):
        """(B, T, d) -> float32 (B, T, V)."""
        flat = tf.reshape(hidden, [-1, hidden.shape[-1]])
        if self.reverse is not None:
            logits = tf.matmul(flat, self.reverse)
        else:
            logits = tf.matmul(flat, self.projection, transpose_b=True)
            if self.weights == "int8":
                logits = logits * self.scale
        return _reshape(logits, hidden, [logits.shape[-1]])


class GPTGraph(tf.Module):
    """A `GPTModel`'s `prefill`, `decode` and `logits` functions on constant weights.

    Args:
        model: a built float32 `GPTModel`.
        weights: "float32" or "int8" (the token table; other matrices are quantized by the
            converter).
    """

    def __init__(self, model, weights):
        super().__init__(name="gpt_litert")
        self.num_layers, self.num_heads = model.num_layers, model.num_heads
        self.head_dim = model.d_model // model.num_heads
        self._embedding = _TokenEmbedding(model.token_embedding, weights)
        self._positions = _constant(_numpy(model.position_embedding.embeddings))
        self._blocks = [_Block(block) for block in model.blocks]
        self._final_norm = _LayerNorm(model.final_norm) if model.final_norm is not None else None
        cache = tf.TensorSpec([None, self.num_heads, None, self.head_dim], tf.float32)
        ids = tf.TensorSpec([None, None], tf.int32, name="token_ids")
        mask = tf.TensorSpec([None, None], tf.int32, name="padding_mask")

        # Each signature is named after its Python function.
        def prefill(token_ids, padding_mask):
            return self._prefill(token_ids, padding_mask)

        def logits(token_ids):
            return self._logits(token_ids)

        def decode(token_ids, positions, key_mask, *caches):
            return self._decode(token_ids, positions, key_mask, *caches)

        self.prefill = graph_function(prefill, input_signature=[ids, mask])
        self.logits = graph_function(logits, input_signature=[ids])
        step = [
            tf.TensorSpec([None, 1], tf.int32, name="token_ids"),
            tf.TensorSpec([None, 1], tf.int32, name="positions"),
            tf.TensorSpec([None, None], tf.int32, name="key_mask"),
        ]
        caches = [
            tf.TensorSpec(cache.shape, tf.float32, name=f"{kind}_{i}")
            for i in range(self.num_layers)
            for kind in ("key", "value")
        ]
        self.decode = graph_function(decode, input_signature=step + caches)

    def _embed(self, token_ids, positions):
        return self._embedding.lookup(token_ids) + tf.gather(self._positions, positions)

    def _final(self, x):
        return x if self._final_norm is None else self._final_norm(x)

    def _hidden(self, token_ids, padding_mask):
        """Left-padded prompts (B, P) -> (final hidden states, [(k, v) per layer])."""
        real = padding_mask > 0
        positions = tf.maximum(tf.cumsum(padding_mask, axis=1) - 1, 0)  # from the first real
        length = tf.shape(token_ids)[1]
        slots = tf.range(length)
        causal = tf.expand_dims(slots, 1) >= tf.expand_dims(slots, 0)  # (P, P)
        mask = tf.logical_and(tf.expand_dims(causal, 0), tf.expand_dims(real, 1))  # (B, P, P)
        x, cache = self._embed(token_ids, positions), []
        for block in self._blocks:
            x, key_value = block.full(x, mask)
            cache.append(key_value)
        return self._final(x), cache

    def _prefill(self, token_ids, padding_mask):
        hidden, cache = self._hidden(token_ids, padding_mask)
        outputs = {"logits": self._embedding.logits(hidden[:, -1:])[:, 0]}
        for i, (key, value) in enumerate(cache):
            outputs[f"key_{i}"], outputs[f"value_{i}"] = key, value
        return outputs

    def _logits(self, token_ids):
        hidden, _ = self._hidden(token_ids, tf.ones_like(token_ids))
        return {"logits": self._embedding.logits(hidden)}

    def _decode(self, token_ids, positions, key_mask, *caches):
        x, outputs = self._embed(token_ids, positions), {}
        visible = key_mask > 0
        for i, block in enumerate(self._blocks):
            x, (key, value) = block.step(x, visible, caches[2 * i], caches[2 * i + 1])
            outputs[f"new_key_{i}"], outputs[f"new_value_{i}"] = key, value
        outputs["logits"] = self._embedding.logits(self._final(x))[:, 0]
        return outputs

    def functions(self):
        """The concrete functions to convert, signature name first."""
        return {
            "prefill": self.prefill.get_concrete_function(),
            "decode": self.decode.get_concrete_function(),
            "logits": self.logits.get_concrete_function(),
        }


class BERTGraph(tf.Module):
    """A BERT encoder's `encode` function (and a classifier's `classify`) on constant weights.

    Args:
        encoder: a built float32 `BERTEncoder`.
        classifier_dense: the classifier's output `Dense`, or None.
    """

    def __init__(self, encoder, classifier_dense=None):
        super().__init__(name="bert_litert")
        self._tokens = _constant(_numpy(encoder.token_embedding.embeddings))
        self._segments = _constant(_numpy(encoder.segment_embedding.embeddings))
        self._positions = _constant(_numpy(encoder.position_embedding.embeddings))
        self._embedding_norm = _LayerNorm(encoder.embedding_norm)
        self._blocks = [_Block(block) for block in encoder.blocks]
        self._pooler = _Dense(encoder.pooler)
        self._classifier = None if classifier_dense is None else _Dense(classifier_dense)
        signature = [
            tf.TensorSpec([None, None], tf.int32, name=name)
            for name in ("token_ids", "segment_ids", "padding_mask")
        ]

        def encode(token_ids, segment_ids, padding_mask):
            return self._encode(token_ids, segment_ids, padding_mask)

        def classify(token_ids, segment_ids, padding_mask):
            return self._classify(token_ids, segment_ids, padding_mask)

        self.encode = graph_function(encode, input_signature=signature)
        if self._classifier is not None:
            self.classify = graph_function(classify, input_signature=signature)

    def _encode(self, token_ids, segment_ids, padding_mask):
        length = tf.shape(token_ids)[1]
        x = (
            tf.gather(self._tokens, token_ids)
            + tf.expand_dims(self._positions[:length], 0)
            + tf.gather(self._segments, segment_ids)
        )
        x = self._embedding_norm(x)
        mask = tf.expand_dims(padding_mask > 0, 1)  # (B, 1, S): padded keys hidden
        for block in self._blocks:
            x, _ = block.full(x, mask)
        return {"sequence_output": x, "pooled_output": self._pooler(x[:, 0])}

    def _classify(self, token_ids, segment_ids, padding_mask):
        pooled = self._encode(token_ids, segment_ids, padding_mask)["pooled_output"]
        logits = self._classifier(pooled)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits, axis=-1)}

    def functions(self):
        """The concrete functions to convert, signature name first."""
        functions = {"encode": self.encode.get_concrete_function()}
        if self._classifier is not None:
            functions["classify"] = self.classify.get_concrete_function()
        return functions


def convert(graph, weights):
    """The `.tflite` bytes of `graph`'s functions, builtin ops only; int8: dynamic-range.

    The functions are saved as named SavedModel signatures first (in a temporary directory),
    which is what the converter does itself with several concrete functions, except that it
    names a single one "serving_default".

    Args:
        graph: a `GPTGraph` or `BERTGraph`.
        weights: "float32" or "int8".
    """
    functions = graph.functions()
    with tempfile.TemporaryDirectory() as directory:
        tf.saved_model.save(graph, directory, signatures=functions)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            directory, signature_keys=list(functions)
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if weights == "int8":
            # Weight-only int8 with per-channel scales; activations quantized on the fly
            # (XNNPACK's dynamically quantized kernels), no representative data needed.
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        return converter.convert()
