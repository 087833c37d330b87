"""LoRA: low-rank adapters on a built model's projections, everything else frozen.

LoRA (Hu et al., 2021) fine-tunes a weight matrix W (d_in x d_out) by learning a low-rank update
instead of W itself: the layer computes x (W + A B) with A (d_in x r) and B (r x d_out), r much
smaller than d_in and d_out. B starts at zero, so an adapted model starts out computing exactly
what the base model computed. Keras's `Dense` and `EinsumDense` carry this themselves
(`layer.enable_lora(rank)`): the adapters are float32 variables, the kernel is frozen. This
module only chooses the layers and freezes the rest, once for every model of the package.

Saving merges. Keras writes a LoRA layer's kernel as W + A B (`Dense.save_own_variables`), so a
`.keras` file or a weights file of an adapted model holds the merged matrices and no adapters:
`keras.saving.load_model` gives a plain model (no `custom_objects` needed) whose outputs equal the
adapted model's and which runs as fast as the base model. To go on training with LoRA after a
reload, call `enable_lora` again: new adapters start at B = 0 on top of the merged weights (the
saved optimizer state, which covered the adapters only, is then not restored; Keras warns). A
SavedModel export traces the adapted layers as they run (kernel plus A B), with the same outputs.

Example:

>>> from tf_bigmodels.models import GPTModel
>>> model = GPTModel(100, 32, 2, 64, 2, max_length=16)
>>> model.build((None, 16))
>>> model.enable_lora(4)
>>> sum(int(w.shape.num_elements()) for w in model.trainable_weights)  # 2 blocks x 6 d r
1536
"""

from tf_bigmodels import _checks


class LoRAMixin:
    """Adds `enable_lora(rank)` to a model: adapters on its projections, everything else frozen.

    A model that wraps a `BERTEncoder` (it has an `encoder` attribute: `BERTPretrainer`,
    `BERTClassifier`) adapts and freezes its encoder only, and its own task heads stay trainable,
    as in keras-hub: a classifier's output layer is new and must learn in any case. A model without
    one (`GPTModel`, `BERTEncoder`) adapts and freezes itself.

    Example:

    >>> from tf_bigmodels.models import BERTClassifier, BERTEncoder
    >>> encoder = BERTEncoder(vocab_size=100, d_model=32, num_heads=2, dff=64, num_layers=1)
    >>> classifier = BERTClassifier(encoder, num_classes=2)
    >>> classifier.build({"token_ids": (None, 8)})
    >>> classifier.enable_lora(2)
    >>> sorted(w.name for w in classifier.trainable_weights)  # the head and 2 adapters
    ['bias', 'kernel', 'lora_kernel_a', 'lora_kernel_a', 'lora_kernel_b', 'lora_kernel_b']
    """

    def enable_lora(self, rank, *, target="attention"):
        """Puts rank-`rank` LoRA adapters on the projections and freezes every other weight.

        `target="attention"` adapts both projections of every self-attention layer: the fused
        query/key/value projection (d_model -> 3 d_model) and the output projection
        (d_model -> d_model), 6 * d_model * rank trainable numbers per block. `target="all"`
        also adapts the two feed-forward layers, 2 * (d_model + dff) * rank more per block.
        Embeddings, layer norms, biases and the BERT pooler are frozen. The update A B is not
        scaled (Keras's `lora_alpha` is left equal to the rank); the learning rate sets its size.

        Call it on a built model (after a first call or `build`) and before `compile`, so the
        optimizer sees the adapters. A model already compiled (trained, or loaded from the
        `.keras` file of a compiled model) is left uncompiled: its optimizer and its traced
        training step hold the weights trained so far, which are now frozen, and not the
        adapters, so `fit` would go on training the frozen weights. Compile it again; `fit`
        before that raises Keras's "You must call `compile()`" error. It can be called once.
        Setting `model.trainable = True` afterwards unfreezes every weight again (full
        fine-tuning, adapters included).

        Args:
            rank: int >= 1. Rank r of each update A B.
            target: "attention" or "all" (attention and feed-forward layers).
                Defaults to "attention".

        Raises:
            ValueError: for a bad `rank` or `target`, an unbuilt model, or a second call.

        Example:

        >>> from tf_bigmodels.models import GPTModel
        >>> model = GPTModel(100, 32, 2, 64, 1, max_length=16)
        >>> model.build((None, 16))
        >>> model.enable_lora(2, target="all")
        >>> len(model.trainable_weights)  # A and B of qkv, output, ffn_hidden and ffn_output
        8
        """
        rank = _checks.positive_int("rank", rank)
        target = _checks.one_of("target", target, ("attention", "all"))
        adapted = getattr(self, "encoder", self)
        if not adapted.built:
            raise ValueError(
                f"`enable_lora` needs a built {type(self).__name__}: call it on a batch or "
                "`build` it first."
            )
        layers = _lora_layers(adapted, target)
        if any(layer.lora_enabled for layer in layers):
            raise ValueError(f"LoRA is already enabled on this {type(self).__name__}.")
        for weight in adapted.weights:
            weight.trainable = False
        for layer in layers:
            layer.enable_lora(rank)
        for model in (self, adapted):
            _forget_compiled_functions(model)


def _forget_compiled_functions(model):
    """Drops `model`'s traced functions (they run the layers without adapters) and, if it is
    compiled, its compilation (its optimizer covers the weights that are now frozen)."""
    model.train_function = model.test_function = model.predict_function = None
    if model.compiled:
        model.compiled = False


def _lora_layers(model, target):
    """The `Dense` layers of `model`'s Transformer blocks that `target` names, in model order."""
    layers = []
    for block in model.blocks:
        layers += [block.attention.qkv, block.attention.output_dense]
        if target == "all":
            layers += [block.ffn_hidden, block.ffn_output]
    return layers
