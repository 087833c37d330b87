"""Training with `model.fit` under `tf.distribute`: tasks, strategy, optimizer, schedule, driver.

The names below load on first use, so that `RunConfig` (and the command line's checks) can be
used without importing TensorFlow.

Example:

>>> from tf_bigmodels.training import RunConfig, train
>>> RunConfig(model="gpt", preset="gpt-test").resolved().steps
20
"""

import importlib

# Public name -> the module of this package that defines it.
_EXPORTS = {
    "AccumulatingTrainer": "accumulation",
    "AdamW": "optimizer",
    "BERTTask": "tasks",
    "BERT_PRESETS": "presets",
    "DirectoryInUse": "storage",
    "GPTTask": "tasks",
    "GPT_PRESETS": "presets",
    "RunCheckpoint": "callbacks",
    "RunConfig": "config",
    "RunResult": "run",
    "TASKS": "tasks",
    "TOKENIZERS": "config",
    "Task": "tasks",
    "TrainingDiverged": "errors",
    "WarmupDecay": "schedules",
    "build_optimizer": "optimizer",
    "export_source": "loading",
    "get_preset": "presets",
    "get_strategy": "strategy",
    "is_chief": "strategy",
    "load_run_model": "loading",
    "load_run_tokenizer": "loading",
    "no_decay_variables": "optimizer",
    "run_config": "records",
    "run_generator": "loading",
    "task_class_for": "tasks",
    "task_for": "tasks",
    "train": "run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
