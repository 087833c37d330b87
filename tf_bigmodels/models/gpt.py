"""GPT: a decoder-only Transformer language model."""

import math

import keras
from keras import ops

from tf_bigmodels import _checks
from tf_bigmodels.layers import PositionEmbedding, TransformerLayer
from tf_bigmodels.layers.activations import get_activation, serialize_activation
from tf_bigmodels.layers.initializers import clone_initializer
from tf_bigmodels.models import generation
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
    one XLA-compiled `tf.while_loop`.

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
        self.tie_embeddings = bool(tie_embeddings)
        self.norm_first = bool(norm_first)
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
        x = self.token_embedding(token_ids)
        x = self.embedding_dropout(
            x + self.position_embedding(x, positions=positions), training=training
        )
        new_cache = []
        for i, block in enumerate(self.blocks):
            if cache is None:
                x = block(x, padding_mask=padding_mask, training=training)
            else:
                x, layer_cache = block(
                    x,
                    padding_mask=padding_mask,
                    training=training,
                    cache=cache[i],
                    cache_index=cache_index,
                )
                new_cache.append(layer_cache)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x if cache is None else (x, tuple(new_cache))

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
        """Continues each prompt by `max_new_tokens` tokens with a key/value cache.

        Greedy when `temperature == 0` (or `top_k == 1`), otherwise samples from
        softmax(logits / temperature), restricted to the `top_k` most likely tokens and/or the
        smallest set whose probability reaches `top_p`. Runs
        `tf_bigmodels.models.generation.generate`; see there for the padding, truncation,
        bucketing and retracing rules.

        Args:
            token_ids: prompts: int array/tensor `(batch, seq)`, a `tf.RaggedTensor`, or a list
                of lists of ids (rows may differ in length; each needs at least one id).
            max_new_tokens: int in `[0, max_length - 1]`. Number of tokens to add.
            temperature: float >= 0. Defaults to 1.0.
            top_k: int >= 0 or None (0/None = no top-k filter). Defaults to None.
            top_p: float in (0, 1] or None (no nucleus filter). Defaults to None.
            seed: int or None. Same seed, same tokens; None draws a random seed.
            end_id: int or None. A row stops after generating this id; its later positions
                hold `pad_id`. Defaults to None (never stop early).
            pad_id: int. Fill value after `end_id`. Defaults to 0.
            jit_compile: bool. Compile the decode loop with XLA. Defaults to True.

        Returns:
            The prompts followed by the new tokens: an int32 `(batch, seq + max_new_tokens)`
            tensor for dense input, a `tf.RaggedTensor` (each row ending at its end token) for
            ragged or list input.

        Example:

        >>> model = GPTModel(258, 32, 2, 64, 1, rate=0.0, max_length=64)
        >>> model.generate([[104, 105], [72]], max_new_tokens=5, temperature=0.0).shape
        TensorShape([2, None])
        """
        return generation.generate(
            self,
            token_ids,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            end_id=end_id,
            pad_id=pad_id,
            jit_compile=jit_compile,
        )

    @classmethod
    def from_keras_hub(cls, preset_dir, *, dtype=None):
        """Builds a `GPTModel` from a keras-hub GPT-2 preset directory already on disk.

        Loads `keras_hub.models.GPT2Backbone.from_preset(preset_dir)` (offline: a directory
        path never touches the network) and converts it with
        `tf_bigmodels.convert.gpt_from_keras_hub`: same configuration, every weight copied, logits
        equal to the backbone's outputs times the transposed token embedding (to 1e-5). The
        converter is imported inside this method, not at module import, so that models do not
        depend on `convert` (DESIGN §10); calling it needs `keras_hub` installed. To obtain a
        preset directory with network access: `keras_hub.models.GPT2Backbone.from_preset(
        "gpt2_base_en").save_to_preset("gpt2_base_en")`, or download it from Kaggle Models. The
        GPT-2 BPE tokenizer is not part of this model; `ByteTokenizer` ids do not match it.

        Args:
            preset_dir: str or path-like. Directory written by `save_to_preset` (holding
                `config.json` and `model.weights.h5`) or an unpacked Kaggle download.
            dtype: str or None. Dtype policy to load with (e.g. "bfloat16"). Defaults to None
                (the preset's).

        Returns:
            A built `GPTModel`.

        Raises:
            ValueError: if `preset_dir` is not a directory or holds no GPT-2 backbone preset.

        Example:

        >>> model = GPTModel.from_keras_hub("presets/gpt2_base_en")  # doctest: +SKIP
        >>> model.generate([[464, 3290]], max_new_tokens=10)  # doctest: +SKIP
        """
        import keras_hub

        from tf_bigmodels.convert.keras_hub import backbone_from_preset, gpt_from_keras_hub

        return gpt_from_keras_hub(
            backbone_from_preset(keras_hub.models.GPT2Backbone, preset_dir, dtype)
        )

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
