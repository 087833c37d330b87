"""Gradient accumulation that works under every `tf.distribute` strategy: micro-batches per step.

Keras's own `gradient_accumulation_steps` applies the optimizer inside a conditional, which
`MirroredStrategy` rejects (a cross-replica merge inside control flow). Here each `fit` step
instead splits its batch into `micro_batches` slices, runs forward and backward on each in turn
and adds their gradients, then applies the mean once: the same update as the whole batch
(exactly, for losses that average over examples), with the activation memory of one slice.
"""

import keras
import tensorflow as tf


def accumulate_gradients(model, micro_batches):
    """Makes each `fit` step of `model` process its batch in `micro_batches` slices.

    Call it after `compile`. The batch (per replica) must be divisible by `micro_batches`. Loss
    scaling (`mixed_float16`), metrics and `tf.distribute` work as in Keras's own `train_step`.
    The BERT pre-training loss averages its masked predictions per slice, so there the result
    equals the mean of the slices' losses rather than one average over the whole batch.

    Args:
        model: a compiled `keras.Model`.
        micro_batches: int >= 1. Slices per batch; 1 leaves the model unchanged.

    Example:

    >>> model.compile(optimizer=..., loss=...)
    >>> accumulate_gradients(model, 4)   # a batch of 64 runs as 4 slices of 16
    >>> model.fit(dataset)
    """
    if isinstance(micro_batches, bool) or not isinstance(micro_batches, int) or micro_batches < 1:
        raise ValueError(f"`micro_batches` must be a positive integer, got {micro_batches!r}.")
    if micro_batches == 1:
        return

    def train_step(data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        variables = model.trainable_variables
        total = [None] * len(variables)
        for part in range(micro_batches):
            xi, yi, wi = (_slice(value, part, micro_batches) for value in (x, y, sample_weight))
            with tf.GradientTape() as tape:
                y_pred = model(xi, training=True)
                loss = model.compute_loss(
                    x=xi, y=yi, y_pred=y_pred, sample_weight=wi, training=True
                )
                scaled = model.optimizer.scale_loss(loss)
            for index, gradient in enumerate(tape.gradient(scaled, variables)):
                if gradient is not None:
                    gradient = tf.convert_to_tensor(gradient)
                    total[index] = gradient if total[index] is None else total[index] + gradient
            examples = tf.shape(tf.nest.flatten(xi)[0])[0]
            for metric in model.metrics:
                if metric.name == "loss":
                    metric.update_state(loss * replicas, sample_weight=examples)
            model.compute_metrics(xi, yi, y_pred, wi)
        model.optimizer.apply_gradients(
            [
                (gradient / micro_batches, variable)
                for gradient, variable in zip(total, variables)
                if gradient is not None
            ]
        )
        return model.get_metrics_result()

    model.__dict__["train_step"] = train_step


def _slice(value, part, parts):
    """Slice `part` of `parts` along the batch axis of every tensor in `value` (None stays)."""

    def cut(tensor):
        size = tf.shape(tensor)[0] // parts
        return tensor[part * size : (part + 1) * size]

    return None if value is None else tf.nest.map_structure(cut, value)
