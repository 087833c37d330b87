"""Training with `model.fit` under `tf.distribute`: strategy, optimizer, schedule, driver.

Example:

>>> from tf_bigmodels.training import RunConfig, train
>>> result = train(RunConfig(model="gpt", preset="gpt-test", steps=20, eval_every=10))
"""

from tf_bigmodels.training.accumulation import accumulate_gradients
from tf_bigmodels.training.callbacks import RunCheckpoint
from tf_bigmodels.training.optimizer import AdamW, build_optimizer, no_decay_variables
from tf_bigmodels.training.presets import BERT_PRESETS, GPT_PRESETS, get_preset
from tf_bigmodels.training.run import RunConfig, RunResult, TrainingDiverged, load_run_model, train
from tf_bigmodels.training.schedules import WarmupDecay
from tf_bigmodels.training.strategy import get_strategy, is_chief

__all__ = [
    "AdamW",
    "BERT_PRESETS",
    "accumulate_gradients",
    "GPT_PRESETS",
    "RunCheckpoint",
    "RunConfig",
    "RunResult",
    "TrainingDiverged",
    "WarmupDecay",
    "build_optimizer",
    "get_preset",
    "get_strategy",
    "is_chief",
    "load_run_model",
    "no_decay_variables",
    "train",
]
