"""Choosing the `tf.distribute` strategy: one function, from a laptop CPU to a TPU pod."""

import functools
import json
import logging
import os

import tensorflow as tf

from tf_bigmodels import _checks
from tf_bigmodels.training.config import STRATEGIES

logger = logging.getLogger("tf_bigmodels")


def _tf_config_workers():
    """Number of workers (chief included) that `TF_CONFIG` names; 0 when it is unset."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        config = json.loads(raw)
        cluster = config["cluster"]
        task = config["task"]
        count = sum(len(cluster.get(role, [])) for role in ("chief", "worker"))
        if not isinstance(task["type"], str) or not isinstance(task["index"], int):
            raise TypeError("task type/index")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(
            "The environment variable TF_CONFIG must be JSON like "
            '{"cluster": {"worker": ["host1:port", "host2:port"]}, '
            f'"task": {{"type": "worker", "index": 0}}}}; got {raw!r} ({error}).'
        ) from error
    return count


def _tpu_present():
    return (
        bool(os.environ.get("TPU_NAME"))
        or os.path.exists("/dev/accel0")
        or os.path.exists("/dev/vfio/0")
    )


def get_strategy(name="auto", *, devices=None, tpu=None):
    """Returns the `tf.distribute.Strategy` to build and train under, and logs what it chose.

    "auto" picks, in order: a TPU (when `tpu` is given, `TPU_NAME` is set, or a TPU VM's devices
    exist), `MultiWorkerMirroredStrategy` (when `TF_CONFIG` names more than one worker),
    `MirroredStrategy` (more than one local GPU), else the default strategy (one device).

    Args:
        name: str. One of "auto", "default" (or "cpu"), "mirrored", "multi_worker", "tpu".
            Defaults to "auto".
        devices: list of device names for "mirrored" (e.g. ["/cpu:0", "/cpu:1"]); None uses every
            local GPU (or the CPU when there is none).
        tpu: TPU name or address for "tpu"; None lets `TPUClusterResolver` find it (TPU VM).

    Returns:
        A `tf.distribute.Strategy`. Build the model and `compile` inside `strategy.scope()`; the
        global batch is the per-replica batch times `strategy.num_replicas_in_sync`. A process
        gets one mirrored, multi-worker or TPU strategy per set of devices: asking again returns
        the same one, so that training twice in a process works.

    Example:

    >>> from tf_bigmodels.models import GPTModel
    >>> strategy = get_strategy("auto")
    >>> with strategy.scope():
    ...     model = GPTModel(vocab_size=259, d_model=128, num_heads=4, dff=512, num_layers=4)
    >>> mirrored = get_strategy("mirrored", devices=["/cpu:0"])
    >>> get_strategy("mirrored", devices=["/cpu:0"]) is mirrored
    True
    """
    _checks.one_of("strategy", name, STRATEGIES)
    workers = _tf_config_workers()
    if name == "auto":
        if tpu or _tpu_present():
            name = "tpu"
        elif workers > 1:
            name = "multi_worker"
        elif len(tf.config.list_physical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"

    if name == "multi_worker" and workers < 1:
        raise ValueError(
            "`strategy`='multi_worker' needs the environment variable TF_CONFIG to describe "
            "the cluster and this worker's task; it is not set."
        )
    if name in ("tpu", "multi_worker", "mirrored"):
        strategy = _created(name, tuple(devices or ()), tpu)
    else:
        strategy = tf.distribute.get_strategy()
    logger.info(
        "Strategy: %s with %d replica(s).", type(strategy).__name__, strategy.num_replicas_in_sync
    )
    return strategy


# Cached: a process makes each strategy (kind, devices, TPU) once. A second MirroredStrategy
# numbers its collective all-reduces from the same keys as the first, and TensorFlow's collective
# executor keeps those keys for the life of the process, so a second run's first step would fail
# ("Shape mismatch in the collective instance 100"). A process also sets up multi-worker
# collectives and a TPU system only once. Reusing the strategy, as a notebook that trains twice
# does, avoids all three.
@functools.cache
def _created(name, devices, tpu):
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.MirroredStrategy(devices=list(devices) or None)


def is_chief(strategy):
    """True on the worker that writes checkpoints, logs and exports (always True on one machine).

    Example:

    >>> is_chief(tf.distribute.get_strategy())
    True
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type in (None, "chief") or (
        task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()
    )
