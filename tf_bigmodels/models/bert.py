"""BERT: the bidirectional encoder, its pre-training model (MLM + NSP) and a classifier."""

import keras
import tensorflow as tf
from keras import ops

from tf_bigmodels import _checks
from tf_bigmodels.layers import MaskedLMHead, PositionEmbedding, TransformerLayer
from tf_bigmodels.layers.activations import get_activation, serialize_activation
from tf_bigmodels.layers.initializers import clone_initializer
from tf_bigmodels.models._ids import check_ids
from tf_bigmodels.models.lora import LoRAMixin

_ENCODER_INPUTS = ("token_ids", "segment_ids", "padding_mask")


def _check_keys(inputs, allowed, required, owner):
    if not isinstance(inputs, dict):
        raise ValueError(
            f"The input of {owner} must be a dict with keys {sorted(allowed)}, got "
            f"{type(inputs).__name__}."
        )
    unknown = set(inputs) - set(allowed)
    missing = set(required) - set(inputs)
    if unknown or missing:
        raise ValueError(
            f"The input of {owner} must be a dict with keys {sorted(allowed)} (of which "
            f"{sorted(required)} are required), got keys {sorted(inputs)}"
            + (f" (unknown: {sorted(unknown)})" if unknown else "")
            + (f" (missing: {sorted(missing)})" if missing else "")
            + "."
        )


@keras.saving.register_keras_serializable(package="tf_bigmodels")
class BERTEncoder(LoRAMixin, keras.Model):
    """The BERT encoder: token + segment + position embeddings and a post-norm bidirectional stack.

    Embeddings are summed, layer-normalised and dropped out; `num_layers` non-causal post-norm
    `TransformerLayer`s follow, with the padding mask keeping padded positions out of every real
    position; the pooler is `tanh(Dense(sequence_output[:, 0]))` on the `[CLS]` position.

    Args:
        vocab_size: int. Number of token ids.
        d_model: int. Hidden width.
        num_heads: int. Attention heads; must divide `d_model`.
        dff: int. Feed-forward width (4 * d_model in BERT).
        num_layers: int. Number of Transformer blocks.
        rate: float in [0, 1). Dropout rate. Defaults to 0.1.
        max_length: int. Longest sequence. Defaults to 512.
        type_vocab_size: int. Number of segment ids. Defaults to 2.
        activation: str or callable. FFN activation. Defaults to "gelu" (exact).
        epsilon: float. Layer-norm epsilon. Defaults to 1e-12 (BERT).
        initializer_range: float. Std of the truncated-normal initialiser. Defaults to 0.02.
        **kwargs: base model arguments (`name`, `dtype`).

    Call arguments:
        inputs: dict with "token_ids" `(batch, seq)` (required), "segment_ids" `(batch, seq)`
            (default all 0) and "padding_mask" `(batch, seq)` (1 = real token; default all real).
            Ids must be in `[0, vocab_size)` and segment ids in `[0, type_vocab_size)`: an
            embedding lookup would wrap a negative id around or read zeros, so an eager call
            checks the ranges and raises ValueError; inside `tf.function` (training, export)
            they are the caller's contract.
        training: bool. Enables dropout.

    Returns:
        dict with "sequence_output" `(batch, seq, d_model)` and "pooled_output" `(batch, d_model)`.

    Example:

    >>> encoder = BERTEncoder(vocab_size=8000, d_model=128, num_heads=2, dff=512, num_layers=2)
    >>> out = encoder({"token_ids": keras.ops.ones((2, 16), "int32"),
    ...                "segment_ids": keras.ops.zeros((2, 16), "int32"),
    ...                "padding_mask": keras.ops.ones((2, 16), "int32")})
    >>> out["pooled_output"].shape
    TensorShape([2, 128])
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
        max_length=512,
        type_vocab_size=2,
        activation="gelu",
        epsilon=1e-12,
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
        self.type_vocab_size = _checks.positive_int("type_vocab_size", type_vocab_size)
        self.activation = serialize_activation(get_activation(activation))
        self.epsilon = _checks.positive_float("epsilon", epsilon)
        self.initializer_range = _checks.positive_float("initializer_range", initializer_range)

        weights = keras.initializers.TruncatedNormal(stddev=self.initializer_range)
        policy = self.dtype_policy
        self.token_embedding = keras.layers.ReversibleEmbedding(
            self.vocab_size,
            self.d_model,
            embeddings_initializer=clone_initializer(weights),
            dtype=policy,
            name="token_embedding",
        )
        self.segment_embedding = keras.layers.Embedding(
            self.type_vocab_size,
            self.d_model,
            embeddings_initializer=clone_initializer(weights),
            dtype=policy,
            name="segment_embedding",
        )
        self.position_embedding = PositionEmbedding(
            self.max_length,
            initializer=clone_initializer(weights),
            dtype=policy,
            name="position_embedding",
        )
        self.embedding_norm = keras.layers.LayerNormalization(
            epsilon=self.epsilon, dtype=policy, name="embedding_norm"
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
                causal=False,
                norm_first=False,
                activation=self.activation,
                epsilon=self.epsilon,
                kernel_initializer=weights,
                dtype=policy,
                name=f"block_{i}",
            )
            for i in range(self.num_layers)
        ]
        self.pooler = keras.layers.Dense(
            self.d_model,
            activation="tanh",
            kernel_initializer=clone_initializer(weights),
            dtype=policy,
            name="pooler",
        )

    def build(self, input_shape):
        _check_keys(input_shape, _ENCODER_INPUTS, ("token_ids",), "BERTEncoder")
        token_shape = tuple(input_shape["token_ids"])
        hidden_shape = token_shape + (self.d_model,)
        self.token_embedding.build(token_shape)
        self.segment_embedding.build(token_shape)
        self.position_embedding.build(hidden_shape)
        self.embedding_norm.build(hidden_shape)
        for block in self.blocks:
            block.build(hidden_shape)
        self.pooler.build((token_shape[0], self.d_model))

    def call(self, inputs, training=False):
        x, _ = self._forward(inputs, training, False)
        return {"sequence_output": x, "pooled_output": self.pooler(x[:, 0, :])}

    def attention_weights(self, inputs):
        """The attention weights of every block, computed by the encoder's own forward pass.

        Row `i` of a head's map is the distribution over the keys that position `i` attends to:
        each row sums to 1 and padded keys get exactly 0. These are the very weights the forward
        pass multiplies the values by (before attention dropout, which is off here: the call
        runs with `training=False`).

        Args:
            inputs: the encoder's input dict (see the class docstring).

        Returns:
            A tuple of `num_layers` float32 tensors `(batch, num_heads, seq, seq)`, indexed
            `[batch, head, query, key]`, block 0 first.

        Example:

        >>> encoder = BERTEncoder(vocab_size=100, d_model=32, num_heads=2, dff=64, num_layers=2)
        >>> weights = encoder.attention_weights({"token_ids": keras.ops.array([[2, 7, 3, 0]]),
        ...                                      "padding_mask": keras.ops.array([[1, 1, 1, 0]])})
        >>> len(weights), tuple(weights[0].shape), float(weights[0][0, 1, 2, 3])
        (2, (1, 2, 4, 4), 0.0)
        """
        _check_keys(inputs, _ENCODER_INPUTS, ("token_ids",), "BERTEncoder")
        inputs = {key: ops.convert_to_tensor(value) for key, value in inputs.items()}
        if not self.built:  # as `__call__` would, so that a later call finds the model built
            self.build({key: tuple(value.shape) for key, value in inputs.items()})
        _, weights = self._forward(inputs, False, True)
        return weights

    def _forward(self, inputs, training, collect_weights):
        """The one forward path: `(sequence_output, per-block weights or None)`."""
        _check_keys(inputs, _ENCODER_INPUTS, ("token_ids",), "BERTEncoder")
        token_ids = inputs["token_ids"]
        segment_ids = inputs.get("segment_ids")
        check_ids("token_ids", token_ids, self.vocab_size)
        check_ids("segment_ids", segment_ids, self.type_vocab_size)
        if segment_ids is None:
            segment_ids = ops.zeros_like(token_ids)
        x = self.token_embedding(token_ids)
        x = x + self.position_embedding(x) + self.segment_embedding(segment_ids)
        x = self.embedding_dropout(self.embedding_norm(x), training=training)
        weights = []
        for block in self.blocks:
            x = block(
                x,
                padding_mask=inputs.get("padding_mask"),
                training=training,
                return_attention_scores=collect_weights,
            )
            if collect_weights:
                x, layer_weights = x
                weights.append(layer_weights)
        return x, tuple(weights) if collect_weights else None

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
            type_vocab_size=self.type_vocab_size,
            activation=self.activation,
            epsilon=self.epsilon,
            initializer_range=self.initializer_range,
        )
        return config


class _EncoderWrapper(LoRAMixin, keras.Model):
    """Shared config handling of models built around a `BERTEncoder`."""

    def get_config(self):
        config = super().get_config()
        config["encoder"] = keras.saving.serialize_keras_object(self.encoder)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config, encoder=keras.saving.deserialize_keras_object(config["encoder"]))
        return cls(**config)


def _replica_sum(value):
    """Sums `value` over the replicas of the current `tf.distribute` step (itself when alone)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


@keras.saving.register_keras_serializable(package="tf_bigmodels")
class BERTPretrainer(_EncoderWrapper):
    """BERT pre-training: masked-language-model and next-sentence-prediction heads on an encoder.

    The MLM head (Dense + activation + LayerNorm, projection tied to the encoder's token
    embedding, own bias) predicts the tokens at `mask_positions`; the NSP head is a 2-way Dense
    on the pooled `[CLS]` output. Both return float32 logits.

    Compiled without a `loss`, the model trains on the labels of
    `tf_bigmodels.data.bert_pretraining_dataset` ("mask_ids", "mask_weights",
    "next_sentence_labels") with loss = MLM cross-entropy averaged over real predictions only
    (slots with weight 0 count for nothing, and the average is taken over the *global* batch under
    `tf.distribute`) + NSP cross-entropy averaged over examples, and reports "mlm_accuracy" (over
    real predictions) and "nsp_accuracy".

    Args:
        encoder: a `BERTEncoder`.
        mlm_activation: str or callable. Activation of the MLM transform; None uses the
            encoder's. Defaults to None.
        mlm_epsilon: float. Layer-norm epsilon of the MLM head; None uses the encoder's.
            Defaults to None.
        **kwargs: base model arguments.

    Call arguments:
        inputs: the encoder's dict plus "mask_positions" `(batch, predictions)`, positions in
            `[0, seq)` (checked eagerly like the encoder's ids; the contract inside a graph).
        training: bool.

    Returns:
        dict with "mlm_logits" `(batch, predictions, vocab_size)` and "nsp_logits" `(batch, 2)`.

    Example:

    >>> encoder = BERTEncoder(vocab_size=100, d_model=32, num_heads=2, dff=64, num_layers=1)
    >>> pretrainer = BERTPretrainer(encoder)
    >>> pretrainer.compile(optimizer="adam")
    >>> # pretrainer.fit(bert_pretraining_dataset(...))
    """

    def __init__(self, encoder, *, mlm_activation=None, mlm_epsilon=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(encoder, BERTEncoder):
            raise TypeError(f"`encoder` must be a BERTEncoder, got {type(encoder).__name__}.")
        self.encoder = encoder
        self.mlm_activation = serialize_activation(
            get_activation(encoder.activation if mlm_activation is None else mlm_activation)
        )
        self.mlm_epsilon = _checks.positive_float(
            "mlm_epsilon", encoder.epsilon if mlm_epsilon is None else mlm_epsilon
        )
        self.mlm_head = MaskedLMHead(
            encoder.vocab_size,
            activation=self.mlm_activation,
            epsilon=self.mlm_epsilon,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=encoder.initializer_range),
            dtype=encoder.dtype_policy,
            name="mlm_head",
        )
        self.nsp_head = keras.layers.Dense(
            2,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=encoder.initializer_range),
            dtype=encoder.dtype_policy,
            name="nsp_head",
        )
        self.mlm_accuracy = keras.metrics.SparseCategoricalAccuracy(name="mlm_accuracy")
        self.nsp_accuracy = keras.metrics.SparseCategoricalAccuracy(name="nsp_accuracy")

    def build(self, input_shape):
        _check_keys(
            input_shape,
            _ENCODER_INPUTS + ("mask_positions",),
            ("token_ids", "mask_positions"),
            "BERTPretrainer",
        )
        if not self.encoder.built:
            self.encoder.build({k: v for k, v in input_shape.items() if k != "mask_positions"})
        token_shape = tuple(input_shape["token_ids"])
        self.mlm_head.build(
            token_shape + (self.encoder.d_model,),
            input_shape["mask_positions"],
            (self.encoder.vocab_size, self.encoder.d_model),
        )
        self.nsp_head.build((token_shape[0], self.encoder.d_model))

    def call(self, inputs, training=False):
        _check_keys(
            inputs,
            _ENCODER_INPUTS + ("mask_positions",),
            ("token_ids", "mask_positions"),
            "BERTPretrainer",
        )
        # A position outside the sequence would be wrapped around or read as zeros.
        check_ids("mask_positions", inputs["mask_positions"], ops.shape(inputs["token_ids"])[1])
        encoded = self.encoder(
            {k: v for k, v in inputs.items() if k != "mask_positions"}, training=training
        )
        mlm_logits = self.mlm_head(
            encoded["sequence_output"],
            inputs["mask_positions"],
            self.encoder.token_embedding.embeddings,
        )
        nsp_logits = ops.cast(self.nsp_head(encoded["pooled_output"]), "float32")
        return {"mlm_logits": mlm_logits, "nsp_logits": nsp_logits}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if self.loss is not None:
            return super().compute_loss(x, y, y_pred, sample_weight, training)
        _check_keys(
            y,
            ("mask_ids", "mask_weights", "next_sentence_labels"),
            ("mask_ids", "mask_weights", "next_sentence_labels"),
            "BERTPretrainer labels",
        )
        weights = ops.cast(y["mask_weights"], "float32")
        mlm = keras.losses.sparse_categorical_crossentropy(
            y["mask_ids"], y_pred["mlm_logits"], from_logits=True
        )  # (B, P)
        # Each replica adds its share of the global mean; Keras sums gradients over replicas.
        mlm_loss = ops.sum(mlm * weights) / ops.maximum(_replica_sum(ops.sum(weights)), 1.0)
        nsp = keras.losses.sparse_categorical_crossentropy(
            y["next_sentence_labels"], y_pred["nsp_logits"], from_logits=True
        )
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        nsp_loss = ops.mean(nsp) / replicas
        return mlm_loss + nsp_loss + ops.sum(self.losses)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if self.loss is None:
            self.mlm_accuracy.update_state(
                y["mask_ids"], y_pred["mlm_logits"], sample_weight=y["mask_weights"]
            )
            self.nsp_accuracy.update_state(y["next_sentence_labels"], y_pred["nsp_logits"])
        return super().compute_metrics(x, y, y_pred, sample_weight)

    def get_config(self):
        config = super().get_config()
        config.update(mlm_activation=self.mlm_activation, mlm_epsilon=self.mlm_epsilon)
        return config


@keras.saving.register_keras_serializable(package="tf_bigmodels")
class BERTClassifier(_EncoderWrapper):
    """A sequence classifier: dropout and a Dense layer on a `BERTEncoder`'s pooled output.

    Args:
        encoder: a `BERTEncoder` (usually pre-trained).
        num_classes: int. Number of classes.
        rate: float in [0, 1). Dropout before the output layer. Defaults to 0.1.
        **kwargs: base model arguments.

    Call arguments:
        inputs: the encoder's input dict.
        training: bool.

    Returns:
        float32 logits `(batch, num_classes)`.

    Example:

    >>> encoder = BERTEncoder(vocab_size=100, d_model=32, num_heads=2, dff=64, num_layers=1)
    >>> classifier = BERTClassifier(encoder, num_classes=3)
    >>> classifier.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    """

    def __init__(self, encoder, num_classes, rate=0.1, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(encoder, BERTEncoder):
            raise TypeError(f"`encoder` must be a BERTEncoder, got {type(encoder).__name__}.")
        self.encoder = encoder
        self.num_classes = _checks.positive_int("num_classes", num_classes)
        self.rate = _checks.unit_interval("rate", rate)
        self.dropout = keras.layers.Dropout(self.rate, dtype=encoder.dtype_policy, name="dropout")
        self.output_dense = keras.layers.Dense(
            self.num_classes,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=encoder.initializer_range),
            dtype=encoder.dtype_policy,
            name="logits",
        )

    def build(self, input_shape):
        if not self.encoder.built:
            self.encoder.build(input_shape)
        self.output_dense.build((None, self.encoder.d_model))

    def call(self, inputs, training=False):
        pooled = self.encoder(inputs, training=training)["pooled_output"]
        return ops.cast(self.output_dense(self.dropout(pooled, training=training)), "float32")

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, rate=self.rate)
        return config
