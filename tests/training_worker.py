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
from helpers import run_arrays  # noqa: E402  (this script's directory, tests/, is on the path)

from tf_bigmodels.training import RunConfig, train  # noqa: E402

result = train(RunConfig(**settings["config"]))
np.savez(sys.argv[2], **run_arrays(result))
print("WORKER_DONE", result.step)
