"""Runs training jobs in a process of their own, for the distributed tests.

Usage: python training_worker.py JSON_SETTINGS
JSON_SETTINGS: {"logical_cpus": 2 | null, "jobs": [{"config": {RunConfig fields}, "output":
NPZ}, ...]}. The jobs run in turn. A job that ends writes its final weights and per-epoch history
to its NPZ (whole once it exists) and prints `WORKER_DONE <step>`. A job that raises prints its
traceback on stderr and writes the message to NPZ + ".error". The status is 1 if any job raised.
One process runs several jobs so that they share TensorFlow's start-up.
"""

import json
import logging
import os
import sys
import traceback

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

failed = False
for job in settings["jobs"]:
    try:
        result = train(RunConfig(**job["config"]))
    except Exception as error:
        traceback.print_exc()
        with open(job["output"] + ".error", "w") as f:
            f.write(str(error))
        failed = True
        continue
    partial = job["output"] + ".partial.npz"
    np.savez(partial, **run_arrays(result))
    os.replace(partial, job["output"])
    print("WORKER_DONE", result.step, flush=True)
sys.exit(1 if failed else 0)
