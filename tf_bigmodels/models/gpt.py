"""GPT: a decoder-only Transformer language model."""

import math

import keras
from keras import ops

from tf_bigmodels import _checks
from tf_bigmodels.layers import PositionEmbedding, TransformerLayer
from tf_bigmodels.layers.activations import get_activation, serialize_activation
from tf_bigmodels.layers.initializers import clone_initializer
from tf_bigmodels.models import generation
from tf_bigmodels.models._ids import check_ids
from tf_bigmodels.models.lora import LoRAMixin


@keras.saving.register_keras_serializable(package="tf_bigmodels")
class GPTModel(LoRAMixin, keras.Model):
    """A GPT-2 style language model returning next-token logits.

    token + learned position embedding -> dropout -> `num_layers` causal `TransformerLayer`s ->
    final layer norm (pre-norm models) -> logits through the transposed token embedding (tied, the
    GPT-2 default) or a separate output matrix. Training minimises
    L = -sum_i log P(y_i | x_<i), the sparse categorical cross-entropy of these logits against the
    inputs shifted by one; the causal mask is what makes P(y_i | .) depend only on x_<=i.
    `generate` decodes with a key/value cache (`init_cache`, `hidden_states(..., cache=...)`) in
    one XLA-compiled `tf.while_loop`; `attention_weights` returns every block's attention maps.
    To start from keras-hub's GPT-2 weights, use `tf_bigmodels.convert.gpt_from_keras_hub_preset`.

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
        token_ids: int tensor `(batch, seq)`, seq <= max_length, ids in `[0, vocab_size)`.
            Outside that range the embedding lookup would wrap a negative id around or read
            zeros, so an eager call checks the range and raises ValueError; inside
            `tf.function` (training, generation, export) the range is the caller's contract.
        padding_mask: optional `(batch, seq)` bool/0-1 tensor, 1 = real token.
        training: bool. Enables dropout.

    Example:

    >>> model = GPTModel(vocab_size=259, d_model=128, num_heads=4, dff=512, num_layers=4,
    ...                  rate=0.0, max_length=64)
    >>> model(keras.ops.ones((2, 64), "int32")).shape
    TensorShape([2, 64, 259])
    """

    def __init__(
        self,
        vocab_size,
        d_model,
        num_heads,
        dff,
        num_layers,
        rate=0.1,
        *,
        max_length=1024,
        tie_embeddings=True,
        norm_first=True,
        activation="gelu_approximate",
        epsilon=1e-5,
        initializer_range=0.02,
        **kwargs,
    ):
        super().__init__(**kwargs)
        (
            self.vocab_size,
            self.d_model,
            self.num_heads,
            self.dff,
            self.num_layers,
            self.rate,
            self.max_length,
        ) = _checks.model_sizes(vocab_size, d_model, num_heads, dff, num_layers, rate, max_length)
        self.tie_embeddings = _checks.boolean("tie_embeddings", tie_embeddings)
        self.norm_first = _checks.boolean("norm_first", norm_first)
        self.activation = serialize_activation(get_activation(activation))
        self.epsilon = _checks.positive_float("epsilon", epsilon)
        self.initializer_range = _checks.positive_float("initializer_range", initializer_range)

        weights = keras.initializers.RandomNormal(stddev=self.initializer_range)
        residual = keras.initializers.RandomNormal(
            stddev=self.initializer_range / math.sqrt(2 * self.num_layers)
        )
        policy = self.dtype_policy
        self.token_embedding = keras.layers.ReversibleEmbedding(
            self.vocab_size,
            self.d_model,
            tie_weights=self.tie_embeddings,
            embeddings_initializer=clone_initializer(weights),
            dtype=policy,
            name="token_embedding",
        )
        self.position_embedding = PositionEmbedding(
            self.max_length,
            initializer=clone_initializer(weights),
            dtype=policy,
            name="position_embedding",
        )
        self.embedding_dropout = keras.layers.Dropout(
            self.rate, dtype=policy, name="embedding_dropout"
        )
        self.blocks = [
            TransformerLayer(
                self.d_model,
                self.num_heads,
                self.dff,
                self.rate,
                causal=True,
                norm_first=self.norm_first,
                activation=self.activation,
                epsilon=self.epsilon,
                kernel_initializer=weights,
                output_kernel_initializer=residual,
                dtype=policy,
                name=f"block_{i}",
            )
            for i in range(self.num_layers)
        ]
        self.final_norm = (
            keras.layers.LayerNormalization(epsilon=self.epsilon, dtype=policy, name="final_norm")
            if self.norm_first
            else None
        )

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
        return self.logits_from_hidden_states(x)

    def hidden_states(
        self,
        token_ids,
        padding_mask=None,
        training=False,
        *,
        positions=None,
        cache=None,
        cache_index=0,
    ):
        """The final hidden states `(batch, seq, d_model)`, before the output projection.

        With `cache` (from `init_cache`) this is one step of incremental decoding: `token_ids`
        stand at cache slots `cache_index .. cache_index + seq - 1`, `padding_mask`
        `(batch, cache_length)` marks the cache slots that hold real tokens (False for left
        padding), and the result is `(hidden_states, updated_cache)`.

        Args:
            token_ids: int tensor `(batch, seq)`.
            padding_mask: optional bool/0-1 tensor, 1 = real token: `(batch, seq)` without a
                cache, `(batch, cache_length)` with one.
            training: bool. Enables dropout.
            positions: optional int tensor `(batch, seq)` of absolute positions (for left-padded
                rows); None means `0 .. seq - 1`.
            cache: optional tuple of `num_layers` tensors, as returned by `init_cache`.
            cache_index: int or scalar int tensor. Cache slot of the first token. Defaults to 0.

        Example:

        >>> model = GPTModel(100, 32, 2, 64, 1, max_length=16)
        >>> model.hidden_states(keras.ops.ones((1, 8), "int32")).shape
        TensorShape([1, 8, 32])
        """
        x, new_cache, _ = self._forward(
            token_ids, padding_mask, training, positions, cache, cache_index, False
        )
        return x if cache is None else (x, new_cache)

    def attention_weights(self, token_ids, padding_mask=None):
        """The attention weights of every block, computed by the model's own forward pass.

        Row `i` of a head's map is the distribution over the keys that query position `i`
        attends to: each row sums to 1, and the causal mask makes every entry above the
        diagonal exactly 0 (as do padded keys, if `padding_mask` is given). These are the very
        weights the forward pass multiplies the values by (before attention dropout, which is
        off here: the call runs with `training=False`).

        Args:
            token_ids: int tensor `(batch, seq)`, ids in `[0, vocab_size)`.
            padding_mask: optional `(batch, seq)` bool/0-1 tensor, 1 = real token.

        Returns:
            A tuple of `num_layers` float32 tensors `(batch, num_heads, seq, seq)`, indexed
            `[batch, head, query, key]`, block 0 first.

        Example:

        >>> model = GPTModel(100, 32, 2, 64, 2, max_length=16)
        >>> weights = model.attention_weights(keras.ops.array([[5, 6, 7]]))
        >>> len(weights), tuple(weights[1].shape), float(weights[1][0, 0, 0, 1])
        (2, (1, 2, 3, 3), 0.0)
        """
        token_ids = ops.convert_to_tensor(token_ids)
        if not self.built:  # as `__call__` would, so that a later call finds the model built
            self.build(tuple(token_ids.shape))
        _, _, weights = self._forward(token_ids, padding_mask, False, None, None, 0, True)
        return weights

    def _forward(
        self, token_ids, padding_mask, training, positions, cache, cache_index, collect_weights
    ):
        """The one forward path: `(hidden_states, new_cache or None, weights or None)`."""
        check_ids("token_ids", token_ids, self.vocab_size)
        x = self.token_embedding(token_ids)
        x = self.embedding_dropout(
            x + self.position_embedding(x, positions=positions), training=training
        )
        new_cache, weights = [], []
        for i, block in enumerate(self.blocks):
            extra = {} if cache is None else {"cache": cache[i], "cache_index": cache_index}
            outputs = block(
                x,
                padding_mask=padding_mask,
                training=training,
                return_attention_scores=collect_weights,
                **extra,
            )
            if not collect_weights and cache is None:
                outputs = (outputs,)
            x = outputs[0]
            if collect_weights:
                weights.append(outputs[1])
            if cache is not None:
                new_cache.append(outputs[-1])
        if self.final_norm is not None:
            x = self.final_norm(x)
        return (
            x,
            None if cache is None else tuple(new_cache),
            tuple(weights) if collect_weights else None,
        )

    def logits_from_hidden_states(self, hidden_states):
        """Float32 next-token logits `(..., vocab_size)` of hidden states `(..., d_model)`.

        Example:

        >>> model = GPTModel(100, 32, 2, 64, 1, max_length=16)
        >>> tokens = keras.ops.ones((1, 8), "int32")
        >>> model.logits_from_hidden_states(model.hidden_states(tokens)).shape
        TensorShape([1, 8, 100])
        """
        return ops.cast(self.token_embedding(hidden_states, reverse=True), "float32")

    def init_cache(self, batch_size, cache_length):
        """An empty key/value cache: `num_layers` zero tensors in the compute dtype.

        Each has shape `(batch_size, 2, num_heads, cache_length, d_model // num_heads)` (keys at
        index 0 and values at index 1 of axis 1), static for a whole decode loop.

        Args:
            batch_size: int or scalar int tensor.
            cache_length: int or scalar int tensor. Number of token slots.

        Example:

        >>> model = GPTModel(100, 32, 2, 64, 2, max_length=16)
        >>> [tuple(c.shape) for c in model.init_cache(3, 16)]
        [(3, 2, 2, 16, 16), (3, 2, 2, 16, 16)]
        """
        shape = (batch_size, 2, self.num_heads, cache_length, self.d_model // self.num_heads)
        return tuple(ops.zeros(shape, self.compute_dtype) for _ in self.blocks)

    def generate(
        self,
        token_ids,
        max_new_tokens,
        *,
        temperature=1.0,
        top_k=None,
        top_p=None,
        seed=None,
        end_id=None,
        pad_id=0,
        jit_compile=True,
    ):
        """Continues each prompt by up to `max_new_tokens` tokens with a key/value cache.

        The settings are those of `tf_bigmodels.models.generation.GenerationSettings`, which
        documents and checks them (greedy at `temperature=0`, top-k and top-p filters, seeds,
        `end_id`/`pad_id`); `max_new_tokens` is at most `max_length - 1`, and a prompt longer
        than `max_length - max_new_tokens` keeps its last `max_length - max_new_tokens` tokens.
        The module `tf_bigmodels.models.generation` describes padding, bucketing and retracing.

        Args:
            token_ids: prompts: int array/tensor `(batch, seq)`, a `tf.RaggedTensor`, or a list
                of lists of ids (rows may differ in length; each needs at least one id).
            max_new_tokens, temperature, top_k, top_p, seed, end_id, pad_id: the fields of
                `GenerationSettings`, with its defaults.
            jit_compile: bool. Compile the prompt pass and decode loop with XLA. Defaults to True.

        Returns:
            The prompts followed by the new tokens: an int32 `(batch, seq + max_new_tokens)`
            tensor for dense input, a `tf.RaggedTensor` (each row ending at its end token) for
            ragged or list input.

        Example:

        >>> model = GPTModel(258, 32, 2, 64, 1, rate=0.0, max_length=64)
        >>> model.generate([[104, 105], [72]], max_new_tokens=5, temperature=0.0).shape
        TensorShape([2, None])
        """
        settings = generation.GenerationSettings(
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            end_id=end_id,
            pad_id=pad_id,
        )
        return generation.generate(self, token_ids, settings, jit_compile=jit_compile)

    def get_config(self):
        config = super().get_config()
        config.update(
            vocab_size=self.vocab_size,
            d_model=self.d_model,
            num_heads=self.num_heads,
            dff=self.dff,
            num_layers=self.num_layers,
            rate=self.rate,
            max_length=self.max_length,
            tie_embeddings=self.tie_embeddings,
            norm_first=self.norm_first,
            activation=self.activation,
            epsilon=self.epsilon,
            initializer_range=self.initializer_range,
        )
        return config
