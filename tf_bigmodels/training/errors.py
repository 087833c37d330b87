"""The errors that end a training run, importable without TensorFlow (the command line tells
them apart from its own mistakes before it loads TensorFlow)."""

from tf_bigmodels.training.storage import DirectoryInUse

__all__ = ["DirectoryInUse", "TrainingDiverged"]


class TrainingDiverged(RuntimeError):
    """Raised when the training loss became NaN, infinite or implausibly large.

    Nothing is saved after the step where it happened; the message names the last good
    checkpoint.

    Example:

    >>> raise TrainingDiverged("training diverged at step 3")
    Traceback (most recent call last):
    tf_bigmodels.training.errors.TrainingDiverged: training diverged at step 3
    """
