"""AdamW as GPT and BERT are trained: decoupled weight decay on kernels only, clipped gradients."""

import keras
import tensorflow as tf

from tf_bigmodels.training.schedules import WarmupDecay


def _replicas_in_sync():
    context = tf.distribute.get_replica_context()
    return context.num_replicas_in_sync if context is not None else 1


@keras.saving.register_keras_serializable(package="tf_bigmodels")
class AdamW(keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` whose `global_clipnorm` measures the global batch's gradient.

    Keras clips each replica's gradient by its own norm before the gradients are summed across
    replicas, so under `tf.distribute` the clip depends on how the batch was split and training
    no longer matches one device. Here, with several replicas, global-norm clipping runs on the
    summed gradient instead; with one replica nothing changes.

    Example:

    >>> optimizer = AdamW(learning_rate=1e-3, weight_decay=0.1, global_clipnorm=1.0)
    """

    def _clip_gradients(self, grads):
        if self.global_clipnorm and _replicas_in_sync() > 1:
            return grads  # clipped in `_all_reduce_sum_gradients`, once summed
        return super()._clip_gradients(grads)

    def _all_reduce_sum_gradients(self, grads_and_vars):
        grads_and_vars = super()._all_reduce_sum_gradients(grads_and_vars)
        if not (self.global_clipnorm and _replicas_in_sync() > 1):
            return grads_and_vars
        grads, variables = zip(*grads_and_vars)
        clipped, _ = tf.clip_by_global_norm(list(grads), self.global_clipnorm)
        return list(zip(clipped, variables))


def no_decay_variables(model):
    """The trainable variables weight decay must skip: biases, layer norms and embeddings.

    Every variable of rank < 2 (biases, norm scales and offsets) and every embedding table (token,
    position, segment); what remains are the matrices of the Dense projections.

    Example:

    >>> import numpy as np
    >>> from tf_bigmodels.models import GPTModel
    >>> model = GPTModel(vocab_size=50, d_model=16, num_heads=2, dff=32, num_layers=1)
    >>> _ = model(np.zeros((1, 8), "int32"))
    >>> [v.path.split("/", 1)[1] for v in no_decay_variables(model)][:2]
    ['token_embedding/embeddings', 'position_embedding/embeddings']
    """
    return [
        v
        for v in model.trainable_variables
        if len(v.shape) < 2 or v.path.rsplit("/", 1)[-1] == "embeddings"
    ]


def build_optimizer(
    model,
    *,
    learning_rate,
    total_steps,
    warmup_steps,
    decay="cosine",
    min_ratio=0.1,
    weight_decay=0.1,
    beta_2=0.95,
    epsilon=1e-8,
    clipnorm=1.0,
):
    """`AdamW` with a `WarmupDecay` schedule, decay excluded from `no_decay_variables`, clipping.

    Build the model (call it once) before calling this, inside the strategy's scope.

    Args:
        model: a built Keras model.
        learning_rate: float. Peak learning rate.
        total_steps: int. Optimizer steps of the whole run.
        warmup_steps: int. Linear warm-up steps.
        decay: "cosine" (GPT) or "linear" (BERT). Defaults to "cosine".
        min_ratio: float. Final rate as a fraction of the peak. Defaults to 0.1.
        weight_decay: float. Decoupled weight decay of the kernels. Defaults to 0.1.
        beta_2: float. Adam's second-moment decay. Defaults to 0.95 (GPT-2); each preset of
            `tf_bigmodels.training.presets` names its own (0.99 for the small character-level
            GPTs, as nanoGPT; 0.999 for BERT).
        epsilon: float. Adam's epsilon. Defaults to 1e-8 (GPT-2); BERT used 1e-6.
        clipnorm: float or None. Global-norm gradient clipping. Defaults to 1.0.

    Example:

    >>> import numpy as np
    >>> from tf_bigmodels.models import GPTModel
    >>> model = GPTModel(vocab_size=50, d_model=16, num_heads=2, dff=32, num_layers=1)
    >>> _ = model(np.zeros((1, 8), "int32"))
    >>> optimizer = build_optimizer(model, learning_rate=1e-3, total_steps=2000, warmup_steps=100)
    >>> model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(True))
    """
    if not model.built:
        raise ValueError("`model` must be built (called once) before `build_optimizer`.")
    optimizer = AdamW(
        learning_rate=WarmupDecay(learning_rate, warmup_steps, total_steps, decay, min_ratio),
        weight_decay=weight_decay,
        beta_1=0.9,
        beta_2=beta_2,
        epsilon=epsilon,
        global_clipnorm=clipnorm,
    )
    optimizer.exclude_from_weight_decay(var_list=no_decay_variables(model))
    return optimizer
