"""The tasks, one per model kind (`RunConfig.model`), and how to find the one a run or a model
needs.

A new kind of run (a classifier, say) is a `Task` subclass registered in `TASKS`; starting from
trained weights or adding adapters to a model belongs in `Task.build_model`, which every run
uses.
"""

from tf_bigmodels.training.bert_task import BERTTask
from tf_bigmodels.training.gpt_task import GPTTask, lm_training_texts, sample_prompts
from tf_bigmodels.training.task import Task, fixed_batches, tokenizer_class

__all__ = [
    "BERTTask",
    "GPTTask",
    "TASKS",
    "Task",
    "fixed_batches",
    "lm_training_texts",
    "sample_prompts",
    "task_class_for",
    "task_for",
    "tokenizer_class",
]

# The task of each model kind (`RunConfig.model`).
TASKS = {"gpt": GPTTask, "bert": BERTTask}


def task_for(config):
    """The `Task` that runs `config` (a resolved `RunConfig`).

    Example:

    >>> from tf_bigmodels.training import RunConfig
    >>> type(task_for(RunConfig(model="bert").resolved())).__name__
    'BERTTask'
    """
    return TASKS[config.model](config)


def task_class_for(model):
    """The `Task` subclass whose `model_types` `model` is one of.

    Raises:
        ValueError: no task trains such a model.

    Example:

    >>> from tf_bigmodels.models import GPTModel
    >>> task_class_for(GPTModel(258, 16, 2, 32, 1, max_length=8)).__name__
    'GPTTask'
    """
    for task in TASKS.values():
        if isinstance(model, task.model_types):
            return task
    *names, last = [t.__name__ for task in TASKS.values() for t in task.model_types]
    raise ValueError(
        f"the model is a {type(model).__name__}; this takes a {', '.join(names)} or {last}."
    )
