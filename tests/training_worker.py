"""Runs one training job in its own process, for the distributed and kill/resume tests.

Usage: python training_worker.py JSON_SETTINGS OUTPUT_NPZ
JSON_SETTINGS: {"logical_cpus": 2 | null, "config": {RunConfig fields}}. Writes the final
weights and the per-epoch history to OUTPUT_NPZ.
"""

import json
import logging
import sys

import tensorflow as tf

logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
settings = json.loads(sys.argv[1])
if settings.get("logical_cpus"):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * settings["logical_cpus"]
    )

import numpy as np  # noqa: E402

from tf_bigmodels.training import RunConfig, train  # noqa: E402

result = train(RunConfig(**settings["config"]))
weights = {f"w{i}": np.asarray(w) for i, w in enumerate(result.model.get_weights())}
np.savez(sys.argv[2], **weights, **{f"history_{k}": np.array(v) for k, v in result.history.items()})
print("WORKER_DONE", result.step)
