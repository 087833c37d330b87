"""Learning-rate schedule: linear warm-up, then cosine (GPT) or linear (BERT) decay."""

import math

import keras
from keras import ops

from tf_bigmodels import _checks

DECAYS = ("cosine", "linear")


@keras.saving.register_keras_serializable(package="tf_bigmodels")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak_learning_rate`, then cosine or linear decay to the floor.

    lr(step) = peak * step / warmup_steps                                  for step < warmup_steps
             = floor + (peak - floor) * shape((step - warmup) / (total - warmup)) afterwards,
    with shape(p) = (1 + cos(pi p)) / 2 ("cosine", GPT) or 1 - p ("linear", BERT), and
    floor = peak * `min_ratio`; the rate stays at the floor after `total_steps`.

    Args:
        peak_learning_rate: float > 0. Rate at the end of warm-up.
        warmup_steps: int >= 0. Length of the warm-up.
        total_steps: int > warmup_steps. Step at which the decay reaches the floor.
        decay: "cosine" or "linear". Defaults to "cosine".
        min_ratio: float in [0, 1]. Floor as a fraction of the peak. Defaults to 0.1.

    Example:

    >>> schedule = WarmupDecay(1e-3, warmup_steps=100, total_steps=2000)
    >>> optimizer = keras.optimizers.AdamW(learning_rate=schedule)
    """

    def __init__(
        self, peak_learning_rate, warmup_steps, total_steps, decay="cosine", min_ratio=0.1
    ):
        self.peak_learning_rate = _checks.positive_float("peak_learning_rate", peak_learning_rate)
        self.warmup_steps = _checks.integer("warmup_steps", warmup_steps, low=0)
        self.total_steps = _checks.integer("total_steps", total_steps, low=self.warmup_steps + 1)
        self.decay = _checks.one_of("decay", decay, DECAYS)
        self.min_ratio = _checks.unit_interval("min_ratio", min_ratio, closed_right=True)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        peak = self.peak_learning_rate
        floor = peak * self.min_ratio
        warmup = peak * step / max(self.warmup_steps, 1)
        progress = ops.clip(
            (step - self.warmup_steps) / (self.total_steps - self.warmup_steps), 0.0, 1.0
        )
        if self.decay == "cosine":
            shape = 0.5 * (1.0 + ops.cos(math.pi * progress))
        else:
            shape = 1.0 - progress
        decayed = floor + (peak - floor) * shape
        return ops.where(step < self.warmup_steps, warmup, decayed)

    def get_config(self):
        return dict(
            peak_learning_rate=self.peak_learning_rate,
            warmup_steps=self.warmup_steps,
            total_steps=self.total_steps,
            decay=self.decay,
            min_ratio=self.min_ratio,
        )
