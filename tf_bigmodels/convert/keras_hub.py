"""Builds our GPT and BERT models from keras-hub models, with every weight copied by name.

keras-hub is the reference we prove parity against: same weights give outputs equal to 1e-5 in
float32, so a difference in our layers cannot hide. The converters read each setting
from the keras-hub layers themselves (activation, layer-norm epsilon, norm placement), check that
our models can represent it, and map weights explicitly:

    keras-hub                                          tf_bigmodels
    token_embedding/embeddings      [vocab, d]          token_embedding.embeddings
    position_embedding/embeddings   [max_len, d]        position_embedding.embeddings
    segment_embedding/embeddings    [segments, d]       segment_embedding.embeddings      (BERT)
    embeddings_layer_norm                               embedding_norm                    (BERT)
    transformer_layer_i/
      {query,key,value}/kernel  3 x [d, heads, hd]      block_i.attention.qkv.kernel [d, 3d]: q|k|v
      {query,key,value}/bias    3 x [heads, hd]         block_i.attention.qkv.bias [3d]
      attention_output/kernel   [heads, hd, d]          block_i.attention.output_dense.kernel [d, d]
      attention_output/bias     [d]                     block_i.attention.output_dense.bias
      self_attention_layer_norm                         block_i.attention_norm
      feedforward_intermediate_dense                    block_i.ffn_hidden
      feedforward_output_dense                          block_i.ffn_output
      feedforward_layer_norm                            block_i.ffn_norm
    layer_norm                                          final_norm                        (GPT-2)
    pooled_dense                                        pooler                            (BERT)
    mlm_head/intermediate_dense, intermediate_layer_norm, output_bias
                                                        mlm_head.transform, norm, output_bias

Reshaping `[d, heads, hd]` to `[d, heads * hd]` keeps heads in order, which is the order in
which `MultiHeadSelfAttention` splits its fused projection into heads.
"""

import os

import keras
import keras_hub
import numpy as np
from keras import ops

from tf_bigmodels.layers.activations import get_activation, serialize_activation
from tf_bigmodels.models import BERTEncoder, BERTPretrainer, GPTModel

# Points where two activations must agree for one to stand in for the other.
_PROBE = np.linspace(-8.0, 8.0, 161, dtype="float32")


def gpt_from_keras_hub(backbone):
    """Builds a `GPTModel` with the configuration and weights of a keras-hub GPT-2 backbone.

    The result has tied embeddings, pre-norm blocks and a final layer norm like GPT-2; its
    activation, layer-norm epsilon, dropout rate and dtype policy are read from `backbone`. Its
    logits equal `backbone(inputs) @ backbone.token_embedding.embeddings^T` (max abs difference
    about 1e-6 in float32) at every real position, with the same padding-mask convention
    (`padding_mask` 1 = real token). The two models share no variables: training one leaves the
    other unchanged.

    Args:
        backbone: `keras_hub.models.GPT2Backbone`. The model to convert (built, as every
            keras-hub backbone is after construction).

    Returns:
        A built `tf_bigmodels.models.GPTModel`.

    Raises:
        TypeError: if `backbone` is not a `keras_hub.models.GPT2Backbone`.
        ValueError: if its configuration has no equivalent in `GPTModel` (for example an
            activation we do not have, per-layer epsilons that differ, post-norm blocks, or a
            `key_dim * num_heads` different from `hidden_dim`).

    Example:

    >>> backbone = keras_hub.models.GPT2Backbone(
    ...     vocabulary_size=300, num_layers=2, num_heads=4, hidden_dim=64,
    ...     intermediate_dim=128, max_sequence_length=32)
    >>> model = gpt_from_keras_hub(backbone)
    >>> model(keras.ops.ones((1, 8), "int32")).shape
    TensorShape([1, 8, 300])
    """
    _check_type("backbone", backbone, keras_hub.models.GPT2Backbone)
    layers = backbone.transformer_layers
    activation = _common_activation(layers)
    epsilon = _common_epsilon(layers, [backbone.layer_norm])
    _require_norm_placement(layers, normalize_first=True)

    model = GPTModel(
        backbone.vocabulary_size,
        backbone.hidden_dim,
        backbone.num_heads,
        backbone.intermediate_dim,
        backbone.num_layers,
        backbone.dropout,
        max_length=backbone.max_sequence_length,
        tie_embeddings=True,
        norm_first=True,
        activation=activation,
        epsilon=epsilon,
        dtype=backbone.dtype_policy,
    )
    model.build((None, None))

    _copy(model.token_embedding.embeddings, backbone.token_embedding.embeddings)
    _copy(model.position_embedding.embeddings, backbone.position_embedding.position_embeddings)
    for block, layer in zip(model.blocks, layers):
        _copy_block(block, layer, layer._self_attention_layer)
    _copy_norm(model.final_norm, backbone.layer_norm)
    return model


def bert_from_keras_hub(backbone):
    """Builds a `BERTEncoder` with the configuration and weights of a keras-hub BERT backbone.

    keras-hub's `BertBackbone` uses the tanh approximation of GELU in its encoder blocks (our
    `BERTEncoder` defaults to the exact form of the original BERT), so the activation is read
    from the keras-hub layers, as are the layer-norm epsilon (1e-12), dropout rate and dtype
    policy. Given the same `{"token_ids", "segment_ids", "padding_mask"}` dict, the result's
    "pooled_output" equals the backbone's, and so does "sequence_output" at real positions (at
    padded positions neither model's output means anything). The models share no variables.

    Args:
        backbone: `keras_hub.models.BertBackbone`. The model to convert.

    Returns:
        A built `tf_bigmodels.models.BERTEncoder`.

    Raises:
        TypeError: if `backbone` is not a `keras_hub.models.BertBackbone`.
        ValueError: if its configuration has no equivalent in `BERTEncoder` (an activation we
            do not have, differing epsilons, pre-norm blocks, a pooler on a token other than
            the first, `key_dim * num_heads` different from `hidden_dim`, ...).

    Example:

    >>> backbone = keras_hub.models.BertBackbone(
    ...     vocabulary_size=300, num_layers=2, num_heads=4, hidden_dim=64,
    ...     intermediate_dim=128, max_sequence_length=32)
    >>> encoder = bert_from_keras_hub(backbone)
    >>> encoder({"token_ids": keras.ops.ones((1, 8), "int32")})["pooled_output"].shape
    TensorShape([1, 64])
    """
    _check_type("backbone", backbone, keras_hub.models.BertBackbone)
    layers = backbone.transformer_layers
    activation = _common_activation(layers)
    epsilon = _common_epsilon(layers, [backbone.embeddings_layer_norm])
    _require_norm_placement(layers, normalize_first=False)
    if backbone.cls_token_index != 0:
        raise ValueError(
            f"BertBackbone pools the token at `cls_token_index`={backbone.cls_token_index}; "
            "BERTEncoder pools position 0 only."
        )
    _require_activation(
        backbone.pooled_dense.activation,
        keras.activations.tanh,
        f"{backbone.pooled_dense.name}.activation",
        "tanh",
    )

    encoder = BERTEncoder(
        backbone.vocabulary_size,
        backbone.hidden_dim,
        backbone.num_heads,
        backbone.intermediate_dim,
        backbone.num_layers,
        backbone.dropout,
        max_length=backbone.max_sequence_length,
        type_vocab_size=backbone.num_segments,
        activation=activation,
        epsilon=epsilon,
        dtype=backbone.dtype_policy,
    )
    encoder.build({"token_ids": (None, None)})

    _copy(encoder.token_embedding.embeddings, backbone.token_embedding.embeddings)
    _copy(encoder.segment_embedding.embeddings, backbone.segment_embedding.embeddings)
    _copy(encoder.position_embedding.embeddings, backbone.position_embedding.position_embeddings)
    _copy_norm(encoder.embedding_norm, backbone.embeddings_layer_norm)
    for block, layer in zip(encoder.blocks, layers):
        _copy_block(block, layer, layer._self_attention_layer)
    _copy_dense(encoder.pooler, backbone.pooled_dense)
    return encoder


def bert_pretrainer_from_keras_hub(masked_lm):
    """Builds a `BERTPretrainer` from a keras-hub `BertMaskedLM`: encoder and MLM head copied.

    The encoder is `bert_from_keras_hub(masked_lm.backbone)`. The MLM head's transform, layer
    norm and output bias are copied from `masked_lm.masked_lm_head`; its output projection is
    tied to the token embedding in both libraries. keras-hub's head uses the *exact* GELU and a
    layer-norm epsilon of 1e-5, unlike its encoder blocks (tanh GELU, 1e-12), so the head is
    configured from the keras-hub layer's own attributes. Given the same input dict plus
    "mask_positions", "mlm_logits" equals `masked_lm(inputs)`.

    The NSP head has no keras-hub counterpart: it stays freshly initialised and must be trained
    (or ignored) before "nsp_logits" means anything.

    Args:
        masked_lm: `keras_hub.models.BertMaskedLM`. The model to convert.

    Returns:
        A built `tf_bigmodels.models.BERTPretrainer`.

    Raises:
        TypeError: if `masked_lm` is not a `keras_hub.models.BertMaskedLM`.
        ValueError: if its backbone cannot be converted (see `bert_from_keras_hub`) or its head
            has an output activation or an untied output projection.

    Example:

    >>> backbone = keras_hub.models.BertBackbone(
    ...     vocabulary_size=300, num_layers=2, num_heads=4, hidden_dim=64,
    ...     intermediate_dim=128, max_sequence_length=32)
    >>> pretrainer = bert_pretrainer_from_keras_hub(keras_hub.models.BertMaskedLM(backbone))
    >>> pretrainer({"token_ids": keras.ops.ones((1, 8), "int32"),
    ...             "mask_positions": keras.ops.array([[1, 4]])})["mlm_logits"].shape
    TensorShape([1, 2, 300])
    """
    _check_type("masked_lm", masked_lm, keras_hub.models.BertMaskedLM)
    head = masked_lm.masked_lm_head
    if head.activation is not None and head.activation is not keras.activations.linear:
        raise ValueError(
            f"The keras-hub MLM head applies an output activation ({head.activation!r}) to its "
            "logits; BERTPretrainer returns logits and has no such activation."
        )
    if head.token_embedding is not masked_lm.backbone.token_embedding:
        raise ValueError(
            "The keras-hub MLM head does not project through its backbone's token embedding; "
            "BERTPretrainer ties its MLM output projection to the token embedding."
        )

    encoder = bert_from_keras_hub(masked_lm.backbone)
    transform, norm = head._intermediate_dense, head._intermediate_layer_norm
    pretrainer = BERTPretrainer(
        encoder,
        mlm_activation=_activation_name(
            transform.activation, f"{head.name}/{transform.name}.activation"
        ),
        mlm_epsilon=float(norm.epsilon),
    )
    pretrainer.build({"token_ids": (None, None), "mask_positions": (None, None)})

    _copy_dense(pretrainer.mlm_head.transform, transform)
    _copy_norm(pretrainer.mlm_head.norm, norm)
    _copy(pretrainer.mlm_head.bias, head._bias)
    return pretrainer


def _check_type(argument, value, expected):
    if not isinstance(value, expected):
        raise TypeError(
            f"`{argument}` must be a `keras_hub.models.{expected.__name__}`, "
            f"got {type(value).__module__}.{type(value).__qualname__}."
        )


def _common_value(what, named_values):
    """The one value all `(name, value)` pairs share; ValueError listing them if they differ."""
    values = {value for _, value in named_values}
    if len(values) != 1:
        listing = ", ".join(f"{name}={value!r}" for name, value in named_values)
        raise ValueError(
            f"Our models use one {what} everywhere, but the keras-hub model has several: {listing}."
        )
    return values.pop()


def _activation_name(activation, where):
    """The name under which our `get_activation` resolves the same function as `activation`.

    The candidate comes from Keras serialization ("gelu", "keras_hub>gelu_approximate", ...);
    it is accepted only if both functions agree numerically on `_PROBE`.
    """
    serialized = keras.activations.serialize(activation)
    name = serialized.get("config") if isinstance(serialized, dict) else serialized
    if isinstance(name, str):
        name = name.rsplit(">", 1)[-1]
        try:
            ours = get_activation(name)
            _require_activation(activation, ours, where, name)
            return serialize_activation(ours)
        except ValueError:
            pass
    raise ValueError(
        f"The keras-hub model's {where} is {activation!r}, which has no equivalent in "
        "tf_bigmodels; allowed are 'gelu' (exact), 'gelu_approximate' (tanh) and the Keras "
        "built-in activations."
    )


def _require_activation(activation, expected, where, expected_name):
    """ValueError unless `activation` computes the same function as `expected`."""
    got = ops.convert_to_numpy(activation(ops.convert_to_tensor(_PROBE)))
    want = ops.convert_to_numpy(expected(ops.convert_to_tensor(_PROBE)))
    if got.shape != want.shape or not np.allclose(got, want, rtol=0, atol=1e-6):
        raise ValueError(
            f"The keras-hub model's {where} is {activation!r}, but our model computes "
            f"{expected_name!r} there."
        )


def _common_activation(layers):
    """The one feed-forward activation of keras-hub Transformer layers, as our activation name.

    Read from the Dense layer that applies it (the Transformer layer's own `activation`
    attribute is only used when it builds that Dense).
    """
    named = []
    for layer in layers:
        dense = layer._feedforward_intermediate_dense
        where = f"{layer.name}/{dense.name}.activation"
        named.append((where, _activation_name(dense.activation, where)))
    return _common_value("feed-forward activation", named)


def _common_epsilon(layers, other_norms):
    """The one epsilon of every layer norm in keras-hub Transformer layers and `other_norms`."""
    norms = [
        (f"{layer.name}/{norm.name}", norm)
        for layer in layers
        for norm in (layer._self_attention_layer_norm, layer._feedforward_layer_norm)
    ]
    norms += [(norm.name, norm) for norm in other_norms]
    return _common_value(
        "layer-norm epsilon", [(f"{name}.epsilon", float(norm.epsilon)) for name, norm in norms]
    )


def _require_norm_placement(layers, *, normalize_first):
    for layer in layers:
        if bool(layer.normalize_first) != normalize_first:
            raise ValueError(
                f"keras-hub layer '{layer.name}' has `normalize_first`={layer.normalize_first}; "
                f"this converter builds {'pre' if normalize_first else 'post'}-norm blocks and "
                f"needs `normalize_first`={normalize_first}."
            )


def _copy(target, source, value=None):
    """Assigns `value` (default: `source`'s value) to `target`; ValueError on a shape mismatch."""
    value = ops.convert_to_numpy(source) if value is None else value
    if tuple(target.shape) != tuple(value.shape):
        raise ValueError(
            f"Cannot copy keras-hub weight '{source.path}' of shape {tuple(value.shape)} into "
            f"'{target.path}' of shape {tuple(target.shape)}."
        )
    target.assign(value)


def _copy_dense(target, source):
    if source.bias is None:
        raise ValueError(f"keras-hub layer '{source.name}' has no bias; ours always has one.")
    _copy(target.kernel, source.kernel)
    _copy(target.bias, source.bias)


def _copy_norm(target, source):
    if source.rms_scaling or not (source.center and source.scale):
        raise ValueError(
            f"keras-hub layer norm '{source.name}' has center={source.center}, "
            f"scale={source.scale}, rms_scaling={source.rms_scaling}; ours is a standard layer "
            "norm (center=True, scale=True, rms_scaling=False)."
        )
    if float(source.epsilon) != float(target.epsilon):
        raise ValueError(
            f"keras-hub layer norm '{source.name}' has epsilon={source.epsilon}, but "
            f"'{target.name}' has epsilon={target.epsilon}."
        )
    _copy(target.gamma, source.gamma)
    _copy(target.beta, source.beta)


def _copy_block(block, layer, attention):
    """Copies one keras-hub TransformerEncoder/Decoder into one of our `TransformerLayer`s."""
    d_model = block.d_model
    if (
        attention.num_heads != block.num_heads
        or attention.key_dim * attention.num_heads != d_model
        or (attention.value_dim or attention.key_dim) != attention.key_dim
        or not attention.use_bias
    ):
        raise ValueError(
            f"keras-hub attention '{attention.name}' has num_heads={attention.num_heads}, "
            f"key_dim={attention.key_dim}, value_dim={attention.value_dim}, "
            f"use_bias={attention.use_bias}; ours needs num_heads={block.num_heads}, "
            f"key_dim = value_dim = {d_model} // {block.num_heads} and biases."
        )
    projections = (attention.query_dense, attention.key_dense, attention.value_dense)
    kernels = [ops.convert_to_numpy(p.kernel).reshape(d_model, d_model) for p in projections]
    biases = [ops.convert_to_numpy(p.bias).reshape(d_model) for p in projections]
    qkv = block.attention.qkv
    _copy(qkv.kernel, projections[0].kernel, np.concatenate(kernels, axis=-1))  # (d, 3d)
    _copy(qkv.bias, projections[0].bias, np.concatenate(biases, axis=-1))  # (3d,)
    output = attention.output_dense
    _copy(
        block.attention.output_dense.kernel,
        output.kernel,
        ops.convert_to_numpy(output.kernel).reshape(d_model, d_model),
    )  # (heads, hd, d) -> (d, d)
    _copy(block.attention.output_dense.bias, output.bias)
    _copy_norm(block.attention_norm, layer._self_attention_layer_norm)
    _copy_dense(block.ffn_hidden, layer._feedforward_intermediate_dense)
    _copy_dense(block.ffn_output, layer._feedforward_output_dense)
    _copy_norm(block.ffn_norm, layer._feedforward_layer_norm)


def gpt_from_keras_hub_preset(preset_dir, *, dtype=None):
    """Builds a `GPTModel` from a keras-hub GPT-2 preset directory already on disk.

    Loads `keras_hub.models.GPT2Backbone.from_preset(preset_dir)` (offline: a directory path
    never touches the network) and converts it with `gpt_from_keras_hub`: same configuration,
    every weight copied, logits equal to the backbone's outputs times the transposed token
    embedding (to 1e-5). To obtain a preset directory with network access:
    `keras_hub.models.GPT2Backbone.from_preset("gpt2_base_en").save_to_preset("gpt2_base_en")`,
    or download it from Kaggle Models. The GPT-2 BPE tokenizer is not part of this model;
    `ByteTokenizer` ids do not match it.

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

    A tiny GPT-2 saved as a preset here stands in for `gpt2_base_en`:

    >>> keras_hub.models.GPT2Backbone(
    ...     vocabulary_size=300, num_layers=1, num_heads=2, hidden_dim=32,
    ...     intermediate_dim=64, max_sequence_length=16).save_to_preset("presets/tiny_gpt2")
    >>> model = gpt_from_keras_hub_preset("presets/tiny_gpt2")
    >>> model.vocab_size, model.max_length
    (300, 16)
    >>> model.generate(np.array([[64, 29]]), 4, temperature=0.0, jit_compile=False).shape
    TensorShape([1, 6])
    """
    return gpt_from_keras_hub(
        _backbone_from_preset(keras_hub.models.GPT2Backbone, preset_dir, dtype)
    )


def bert_from_keras_hub_preset(preset_dir, *, dtype=None):
    """Builds a `BERTEncoder` from a keras-hub BERT preset directory already on disk.

    Loads `keras_hub.models.BertBackbone.from_preset(preset_dir)` (offline: a directory path
    never touches the network) and converts it with `bert_from_keras_hub`: same configuration
    (including keras-hub's tanh GELU), every weight copied, equal "sequence_output" at real
    positions and "pooled_output" (to 1e-5). To obtain a preset directory with network access:
    `keras_hub.models.BertBackbone.from_preset("bert_base_en_uncased").save_to_preset(
    "bert_base_en_uncased")`, or download it from Kaggle Models. Its `vocabulary.txt` loads with
    `WordPieceTokenizer(path)`.

    Args:
        preset_dir: str or path-like. Directory written by `save_to_preset` (holding
            `config.json` and `model.weights.h5`) or an unpacked Kaggle download.
        dtype: str or None. Dtype policy to load with (e.g. "bfloat16"). Defaults to None
            (the preset's).

    Returns:
        A built `BERTEncoder`; wrap it in `BERTClassifier(encoder, num_classes)` to fine-tune.

    Raises:
        ValueError: if `preset_dir` is not a directory or holds no BERT backbone preset.

    Example:

    A tiny BERT saved as a preset here stands in for `bert_tiny_en_uncased`:

    >>> keras_hub.models.BertBackbone(
    ...     vocabulary_size=100, num_layers=1, num_heads=2, hidden_dim=32,
    ...     intermediate_dim=64, max_sequence_length=16).save_to_preset("presets/tiny_bert")
    >>> encoder = bert_from_keras_hub_preset("presets/tiny_bert")
    >>> encoder.vocab_size, encoder.d_model
    (100, 32)
    """
    return bert_from_keras_hub(
        _backbone_from_preset(keras_hub.models.BertBackbone, preset_dir, dtype)
    )


def _backbone_from_preset(backbone_class, preset_dir, dtype):
    """`backbone_class.from_preset(preset_dir)` for a local directory; errors name `preset_dir`."""
    if not isinstance(preset_dir, (str, os.PathLike)) or not os.path.isdir(preset_dir):
        raise ValueError(
            f"`preset_dir` must be a keras-hub preset directory already on disk (make one with "
            f"`{backbone_class.__name__}.from_preset(name).save_to_preset(directory)` where "
            f"there is network access), got {preset_dir!r}, which is not a directory."
        )
    try:
        return backbone_class.from_preset(os.fspath(preset_dir), dtype=dtype)
    except ValueError as error:
        raise ValueError(f"`preset_dir`={os.fspath(preset_dir)!r}: {error}") from None
