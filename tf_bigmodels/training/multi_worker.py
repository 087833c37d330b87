"""A narrow work-around that lets Keras 3 `Model.fit` run under `MultiWorkerMirroredStrategy`.

keras-team/keras issue 20585 (open; checked with Keras 3.15 and TensorFlow 2.21): `fit` under
`MultiWorkerMirroredStrategy` fails in two places of `keras/src/backend/tensorflow/trainer.py`:

1. `_maybe_symbolic_build` reduces the first distributed input batch with
   `strategy.reduce("MEAN", ...)`, which the collective strategy cannot do outside a replica
   function. We build from one local replica's batch instead (only its shapes and dtypes matter).
2. `reduce_per_replica` reduces the step's outputs with `strategy.reduce("MEAN", v, axis=0)`,
   which fails for 0-dimensional metric values. We return each metric as a 1-element vector, so
   the reduction over axis 0 is defined (it gives back the same scalar).

Both changes are made on the one model instance (no Keras global is touched), only under
`MultiWorkerMirroredStrategy` and only for the Keras versions known to be affected. Setting the
environment variable `TF_BIGMODELS_KERAS_20585_FIX=0` turns it off (the tests use that to check
that the fix is still needed).

How it goes away: `tests/test_training.py::test_multi_worker_fit_still_needs_the_keras_fix` runs
`fit` on two workers with the work-around off. When a Keras release makes that test fail (the
bug is fixed), set `AFFECTED_KERAS` to end at the last affected version; once the package
requires a fixed Keras, delete this module, its one call in `run.py` and those tests.
"""

import os

import keras
import tensorflow as tf

ISSUE = "https://github.com/keras-team/keras/issues/20585"
AFFECTED_KERAS = ((3, 0), (3, 15))  # first and last minor versions known to be affected


def keras_is_affected(version=None):
    """Whether this Keras version has the multi-worker `fit` bug of keras issue 20585.

    Example:

    >>> keras_is_affected("3.15.1")
    True
    """
    major, minor = (int(part) for part in (version or keras.version()).split(".")[:2])
    return AFFECTED_KERAS[0] <= (major, minor) <= AFFECTED_KERAS[1]


def prepare_for_multi_worker(model, strategy):
    """Applies the work-around to `model` when `strategy` needs it; returns whether it did.

    Call it after `compile`, before `fit`.

    Args:
        model: a compiled `keras.Model`.
        strategy: the `tf.distribute.Strategy` the model was built under.

    Example:

    >>> strategy = tf.distribute.get_strategy()  # one process: nothing to work around
    >>> with strategy.scope():
    ...     model = keras.Sequential([keras.layers.Dense(1)])
    ...     model.compile(optimizer="sgd", loss="mse")
    >>> prepare_for_multi_worker(model, strategy)
    False
    """
    if (
        not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        or not keras_is_affected()
        or os.environ.get("TF_BIGMODELS_KERAS_20585_FIX", "1") == "0"
    ):
        return False

    symbolic_build = model._maybe_symbolic_build

    def build_from_one_replica(iterator=None, data_batch=None):
        if iterator is not None and data_batch is None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(_first_local_replica(strategy), next(batches))
                break
        return symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = build_from_one_replica
    for name in ("train_step", "test_step"):
        model.__dict__[name] = _vector_outputs(getattr(model, name))
    return True


def _first_local_replica(strategy):
    def pick(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    return pick


def _vector_outputs(step):
    def step_with_vector_outputs(data):
        return tf.nest.map_structure(lambda value: tf.reshape(value, [1]), step(data))

    return step_with_vector_outputs
