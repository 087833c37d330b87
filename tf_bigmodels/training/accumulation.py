"""Gradient accumulation that works under every `tf.distribute` strategy: micro-batches per step.

Keras's own `gradient_accumulation_steps` applies the optimizer inside a conditional, which
`MirroredStrategy` rejects (a cross-replica merge inside control flow). Here each `fit` step
instead splits its batch into `micro_batches` slices, runs forward and backward on each in turn
and adds their gradients, then applies the mean once: the same update as the whole batch
(exactly, for losses that average over examples), with the activation memory of one slice.
"""

import keras
import tensorflow as tf

from tf_bigmodels import _checks


class AccumulatingTrainer(keras.Model):
    """Trains a compiled model with each `fit` step's batch run as `micro_batches` slices.

    The trainer holds the model; `fit` and `evaluate` are called on the trainer, while the model
    keeps its own loss, metrics and optimizer (compile the model first, then the trainer with the
    model's optimizer). Saving, checkpoints and export use the model itself, which stays a plain
    `GPTModel` or `BERTPretrainer`. Loss scaling (`mixed_float16`), metrics and `tf.distribute`
    work as in Keras's own `train_step`. The BERT pre-training loss averages its masked
    predictions per slice, so there the result is the mean of the slices' losses rather than one
    average over the whole batch.

    Args:
        model: a compiled `keras.Model` whose optimizer is built.
        micro_batches: int >= 2. Slices per batch; the batch of each replica must be divisible
            by it.

    Example:

    >>> import numpy as np
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> trainer = AccumulatingTrainer(model, micro_batches=2)
    >>> trainer.compile(optimizer=model.optimizer)
    >>> history = trainer.fit(np.ones((8, 3)), np.ones((8, 1)), batch_size=4, verbose=0)
    >>> int(model.optimizer.iterations.numpy())  # one update per batch of 4, run as 2 x 2
    2
    """

    def __init__(self, model, micro_batches, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self.micro_batches = _checks.integer("micro_batches", micro_batches, low=2)

    def call(self, inputs, training=False):
        return self.model(inputs, training=training)

    @property
    def metrics(self):
        return self.model.metrics

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        model, parts = self.model, self.micro_batches
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        variables = model.trainable_variables
        total = [None] * len(variables)
        for part in range(parts):
            xi, yi, wi = (_slice(value, part, parts) for value in (x, y, sample_weight))
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
                (gradient / parts, variable)
                for gradient, variable in zip(total, variables)
                if gradient is not None
            ]
        )
        return model.get_metrics_result()

    def test_step(self, data):
        return self.model.test_step(data)


def _slice(value, part, parts):
    """Slice `part` of `parts` along the batch axis of every tensor in `value` (None stays)."""

    def cut(tensor):
        size = tf.shape(tensor)[0] // parts
        return tensor[part * size : (part + 1) * size]

    return None if value is None else tf.nest.map_structure(cut, value)
