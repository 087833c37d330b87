"""`Task`: what the training driver needs to know about one kind of model.

A task holds everything that differs between a GPT and a BERT run: its tokenizer (made, saved
in the run directory and loaded back), its input pipelines, the model and its loss, its optimizer
(settings from the preset), the inputs that build it, its samples and its export. The driver
(`tf_bigmodels.training.run`) calls these methods and never asks which kind it runs, as
keras-hub's task models own their preprocessing, loss and generation. The kinds are
`GPTTask` (`gpt_task.py`) and `BERTTask` (`bert_task.py`), registered in `tasks.TASKS`.
"""

import importlib
import logging
import math
import os
import random

import tensorflow as tf

from tf_bigmodels.data import (
    load_corpus,
)
from tf_bigmodels.data.corpus import CHINESE_REVIEWS, TANGSHI
from tf_bigmodels.models import BERTEncoder, BERTPretrainer
from tf_bigmodels.run_directory import RunDirectory
from tf_bigmodels.training import storage
from tf_bigmodels.training.config import TOKENIZERS
from tf_bigmodels.training.execution import jit_compile_for
from tf_bigmodels.training.optimizer import build_optimizer
from tf_bigmodels.training.presets import get_preset

logger = logging.getLogger("tf_bigmodels")

# Bundled corpora of short independent documents stored in an order that is not random (全唐诗
# ends with 词 and songs; the reviews come grouped by label). They are shuffled before the split,
# with this seed whatever the run's `seed`, so that every run validates on the same random tenth
# (the same poems `benchmarks/poetry.py` holds out).
SHUFFLED_CORPORA = (TANGSHI, CHINESE_REVIEWS)
CORPUS_SHUFFLE_SEED = 0


class Task:
    """One kind of training run: the base class of `GPTTask` and `BERTTask`.

    Args:
        config: a resolved `RunConfig` (see `RunConfig.resolved`).

    Example:

    >>> from tf_bigmodels.training import RunConfig, task_for
    >>> task = task_for(RunConfig(model="gpt", preset="gpt-test").resolved())
    >>> task.build_model(vocab_size=258).max_length
    32
    """

    # Whether the logs show exp(loss) as "perplexity" (for a language model's per-token loss).
    log_perplexity = False
    # Whether `tf-bigmodels generate` can continue text with the trained model.
    generates_text = False
    # The model kind (`RunConfig.model`), and the model classes the task trains and exports.
    kind = "Task"
    model_types = ()
    # What `export` takes besides `version` and `jit_compile`.
    export_options = ()
    # The export a run writes at its end samples as the run's printed samples.
    sampling = {}
    # How the attention plot names the model.
    attention_title = ""

    def __init__(self, config):
        self.config = config
        self.preset = get_preset(config.model, config.preset)

    # ---- corpus ----------------------------------------------------------------------------
    def texts(self):
        """The run's documents: `load_corpus(config.corpus)`, in the order the split sees them.

        The bundled corpora of `SHUFFLED_CORPORA` ("tangshi", "chinese_reviews") are shuffled
        with `CORPUS_SHUFFLE_SEED`, so the validation split (the end of the list) is a random
        slice of poems or reviews and not the end of the file; other corpora keep their order.

        Example:

        >>> from tf_bigmodels.training import RunConfig, task_for
        >>> poems = task_for(RunConfig(corpus="tangshi").resolved()).texts()
        >>> len(poems), poems[-1] == load_corpus("tangshi")[-1]
        (56053, False)
        """
        config = self.config
        texts = load_corpus(
            config.corpus, encoding=config.corpus_encoding, errors=config.corpus_errors
        )
        if isinstance(config.corpus, str) and config.corpus in SHUFFLED_CORPORA:
            texts = list(texts)
            random.Random(CORPUS_SHUFFLE_SEED).shuffle(texts)
        return texts

    def training_texts(self, texts):
        """The part of `texts` the model trains on (a learned vocabulary is learned from it).

        Example:

        >>> from tf_bigmodels.training import RunConfig, task_for
        >>> task = task_for(RunConfig(model="bert", preset="bert-test").resolved())
        >>> task.training_texts(["a", "b", "c", "d", "e"])  # the last two validate
        ['a', 'b', 'c']
        """
        raise NotImplementedError

    # ---- tokenizer --------------------------------------------------------------------------
    def tokenizer(self, texts, run_dir, *, save=True, source=None):
        """The run's tokenizer: loaded from `run_dir` if it holds one, else made (and saved).

        A learned vocabulary is learned from `training_texts(texts)` only, so no validation
        text shapes it, and written into `run_dir/tokenizer/` all at once (a temporary
        directory renamed into place), so an interrupted save leaves nothing half-written.

        Args:
            texts: list of str. The run's documents (`texts()`).
            run_dir: str or path-like. The run directory.
            save: bool. Write a newly learned tokenizer into `run_dir` (the chief does).
            source: the tokenizer of the model the run starts from (`init_from`), kept (and
                saved) instead of a new one; None makes one.

        Example:

        >>> from tf_bigmodels.training import RunConfig, task_for
        >>> task = task_for(RunConfig(preset="gpt-test").resolved())
        >>> task.tokenizer(["To be, or not to be"], "runs/gpt").vocab_size
        258
        """
        entry = TOKENIZERS[self.config.tokenizer]
        directory = RunDirectory(run_dir).tokenizer
        if entry.learned and directory.exists():
            return self.load_tokenizer(run_dir)
        if source is not None:
            tokenizer = source  # copied into the new run
        elif not entry.learned:
            return tokenizer_class(entry)()
        else:
            training = self.training_texts(texts)
            logger.info(
                "Learning a %s vocabulary of about %d tokens from the %d training documents...",
                self.config.tokenizer,
                self.config.vocab_size,
                len(training),
            )
            tokenizer = tokenizer_class(entry).train(
                training, self.config.vocab_size, **dict(entry.train_options)
            )
        if entry.learned and save:
            self._save_tokenizer(tokenizer, directory)
        return tokenizer

    def _save_tokenizer(self, tokenizer, directory):
        try:
            with storage.atomic_path(directory) as temporary:
                tokenizer.save(temporary)
        except OSError as error:
            raise OSError(
                f"cannot write the tokenizer into {directory}: "
                f"{error.strerror or ' '.join(str(error).split())}"
            ) from None

    def load_tokenizer(self, run_dir):
        """The tokenizer a run recorded (its `config.tokenizer`), read from `run_dir`.

        Example:

        >>> from tf_bigmodels.training import RunConfig, task_for
        >>> task = task_for(RunConfig(preset="gpt-test").resolved())
        >>> task.load_tokenizer("runs/gpt").vocab_size  # the byte tokenizer: nothing to read
        258
        """
        entry = TOKENIZERS[self.config.tokenizer]
        if not entry.learned:
            return tokenizer_class(entry)()
        directory = RunDirectory(run_dir).tokenizer
        try:
            return tokenizer_class(entry).load(directory)
        except (OSError, ValueError) as error:
            raise ValueError(
                f"cannot read the run's {self.config.tokenizer} tokenizer in {directory}: "
                f"{' '.join(str(error).split())}"
            ) from None

    # ---- data ------------------------------------------------------------------------------
    def datasets(self, texts, tokenizer):
        """`(train, validation)` datasets: train repeats forever, validation is fixed.

        Example:

        >>> from tf_bigmodels.training import RunConfig, task_for
        >>> task = task_for(RunConfig(preset="gpt-test").resolved())
        >>> texts = ["To be, or not to be, that is the question.\\n" * 100]
        >>> train_data, val_data = task.datasets(texts, task.tokenizer(texts, "runs/gpt"))
        >>> x, y = next(iter(val_data))
        >>> tuple(x.shape), tuple(y.shape)
        ((8, 32), (8, 32))
        """
        raise NotImplementedError

    def validation_counts(self, texts, tokenizer):
        """`(tokens, characters)` of the validation text, to log bits per character; None when
        the task's loss is not a language model's per-token loss.

        Example:

        >>> from tf_bigmodels.training import RunConfig, task_for
        >>> task = task_for(RunConfig(preset="gpt-test").resolved())
        >>> texts = ["To be, or not to be.\\n" * 10]  # the last tenth validates: one line
        >>> task.validation_counts(texts, task.tokenizer(texts, "runs/gpt"))
        (22, 22)
        """
        return None

    # ---- model -----------------------------------------------------------------------------
    def build_model(self, vocab_size, source=None):
        """The model to train, built (its variables exist). Call it inside the strategy's scope.

        Every run's model comes from here: `new_model`, then the weights of `source` (the model
        `init_from` names: every weight is copied, so it must have the same shape: width, heads,
        feed-forward size, layers, context and vocabulary), then LoRA adapters if
        `config.lora_rank` is set (`model.enable_lora`).

        Args:
            vocab_size: int. The tokenizer's vocabulary size.
            source: a trained model to start from, or None (random weights).

        Raises:
            ValueError: `source` is not a model this run can start from, or its shape
                differs, naming the first weight that does not fit.

        Example:

        >>> from tf_bigmodels.training import RunConfig, task_for
        >>> task = task_for(RunConfig(preset="gpt-test").resolved())
        >>> source = task.new_model(258)
        >>> model = task.build_model(258, source=source)
        >>> all((a == b).all() for a, b in zip(model.get_weights(), source.get_weights()))
        True
        >>> task.build_model(258, source=task.new_model(100))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: `init_from`=None cannot fill this model: its weight ... has shape (100, 32) ...
        """
        model = self.new_model(vocab_size)
        if source is not None:
            _copy_weights(source, model, self.config.init_from)
            if isinstance(source, BERTEncoder):
                # A keras-hub encoder, as converted (its GELU is keras-hub's tanh form), with
                # new pre-training heads.
                model = BERTPretrainer(source)
                model(self.dummy_inputs())
        if self.config.lora_rank is not None:
            model.enable_lora(self.config.lora_rank)
        return model

    def new_model(self, vocab_size):
        """The model of the run's settings, built, with new (random) weights.

        Example:

        >>> from tf_bigmodels.training import RunConfig, task_for
        >>> task = task_for(RunConfig(preset="gpt-test").resolved())
        >>> task.new_model(vocab_size=258).count_params() > 0
        True
        """
        raise NotImplementedError

    def keras_hub_model(self, preset_dir):
        """The model of a keras-hub preset directory, converted by `tf_bigmodels.convert` (a
        BERT preset gives the encoder only, and the pre-training heads start new).

        Raises:
            ValueError: the task cannot start from a keras-hub preset.

        Example:

        >>> from tf_bigmodels.training import RunConfig, task_for
        >>> task = task_for(RunConfig(preset="gpt-test").resolved())
        >>> task.keras_hub_model("presets/gpt2")
        Traceback (most recent call last):
        ValueError: `init_from`=None is not a model this run can start from.
        """
        raise ValueError(
            f"`init_from`={self.config.init_from!r} is not a model this run can start from."
        )

    def keras_hub_tokenizer(self, preset_dir):
        """The tokenizer of a keras-hub preset directory, as one of this package's.

        Example:

        >>> from tf_bigmodels.training import RunConfig, task_for
        >>> task = task_for(RunConfig(preset="gpt-test").resolved())
        >>> task.keras_hub_tokenizer("presets/gpt2")
        Traceback (most recent call last):
        ValueError: `init_from`=None: a keras-hub gpt preset's tokenizer is not one tf_bigmodels has (GPT-2's byte-level BPE), so a run cannot keep it; start from a run directory or a .keras file instead.
        """
        raise ValueError(
            f"`init_from`={self.config.init_from!r}: a keras-hub {self.config.model} preset's "
            "tokenizer is not one tf_bigmodels has (GPT-2's byte-level BPE), so a run cannot "
            "keep it; start from a run directory or a .keras file instead."
        )

    def dummy_inputs(self):
        """A batch of one example of the model's input structure (to build the model).

        Example:

        >>> from tf_bigmodels.training import RunConfig, task_for
        >>> task = task_for(RunConfig(preset="gpt-test").resolved())
        >>> task.dummy_inputs().shape
        (1, 32)
        """
        raise NotImplementedError

    def loss(self):
        """The loss `compile` takes; None when the model computes its own.

        Example:

        >>> from tf_bigmodels.training import RunConfig, task_for
        >>> task = task_for(RunConfig(preset="gpt-test").resolved())
        >>> type(task.loss()).__name__
        'SparseCategoricalCrossentropy'
        """
        return None

    def optimizer(self, model):
        """AdamW with warm-up and decay; its decay (and where it ends), `beta_2` and `epsilon` come
        from the preset.

        Example:

        >>> from tf_bigmodels.training import RunConfig, task_for
        >>> task = task_for(RunConfig(preset="gpt-test").resolved())
        >>> type(task.optimizer(task.new_model(258))).__name__
        'AdamW'
        """
        config = self.config
        decay_steps = round(self.preset.decay_end * config.steps)
        return build_optimizer(
            model,
            learning_rate=config.learning_rate,
            total_steps=max(decay_steps, config.warmup_steps + 1),
            warmup_steps=config.warmup_steps,
            decay=self.preset.decay,
            weight_decay=config.weight_decay,
            clipnorm=config.clipnorm,
            beta_2=self.preset.beta_2,
            epsilon=self.preset.epsilon,
        )

    def compiled_model(self, vocab_size, source=None):
        """`build_model(vocab_size, source)`, compiled with its loss and `optimizer`, the
        optimizer built.

        The optimizer's variables exist at once, so a checkpoint restores into them. Call it
        inside the strategy's scope.

        Example:

        >>> from tf_bigmodels.training import RunConfig, task_for
        >>> task = task_for(RunConfig(preset="gpt-test").resolved())
        >>> int(task.compiled_model(vocab_size=258).optimizer.iterations)
        0
        """
        model = self.build_model(vocab_size, source)
        model.compile(
            optimizer=self.optimizer(model),
            loss=self.loss(),
            jit_compile=self.jit_compile(),
            steps_per_execution=self.config.steps_per_execution,
        )
        model.optimizer.build(model.trainable_variables)
        return model

    def jit_compile(self):
        """Whether the train step runs through XLA: the setting, or `jit_compile_for`'s choice.

        Example:

        >>> from tf_bigmodels.training import RunConfig, task_for
        >>> task_for(RunConfig(preset="gpt-nano").resolved()).jit_compile()
        True
        >>> task_for(RunConfig(preset="gpt-test").resolved()).jit_compile()  # the preset's
        False
        """
        return jit_compile_for(
            self.config.precision, self.config.jit_compile, d_model=self.config.d_model
        )

    def diverged_above(self, vocab_size):
        """A training loss above this has diverged: three times the loss of a uniform guess.

        A model at initialisation scores about `log(vocab_size)`; a finite loss far above it
        means the weights blew up (a learning rate too large), as surely as a NaN does.

        Example:

        >>> from tf_bigmodels.training import RunConfig, task_for
        >>> task = task_for(RunConfig(preset="gpt-test").resolved())
        >>> round(task.diverged_above(258), 2)
        16.66
        """
        return 3.0 * math.log(vocab_size)

    # ---- outputs ---------------------------------------------------------------------------
    def samples(self, model, tokenizer, texts):
        """Texts generated at the end of a run, printed for the user; none by default.

        Example:

        >>> from tf_bigmodels.training import RunConfig, task_for
        >>> task = task_for(RunConfig(model="bert", preset="bert-test").resolved())
        >>> task.samples(None, None, ["text"])
        []
        """
        return []

    def prompt(self, texts):
        """A prompt to try the trained model with, or None if the task does not generate text.

        Example:

        >>> Task.prompt(None, ["text"]) is None
        True
        """
        return None

    @classmethod
    def export(cls, model, tokenizer, directory, **options):
        """Writes the model's SavedModel under `directory/<version>/`; returns its path.

        Args:
            model: a model of `model_types`.
            tokenizer: its tokenizer.
            directory: str or path-like. The export directory.
            **options: `version`, `jit_compile` and the task's `export_options`.

        Raises:
            ValueError: an option this kind of model does not take.

        Example:

        >>> Task.export(None, None, "exports", weights="int8")
        Traceback (most recent call last):
        ValueError: `weights` does not apply to the export of a Task model (it takes: version, jit_compile), got 'int8'.
        """
        for name, value in options.items():
            if name not in ("version", "jit_compile", *cls.export_options):
                takes = ", ".join(("version", "jit_compile", *cls.export_options))
                raise ValueError(
                    f"`{name}` does not apply to the export of a {cls.kind} model (it takes: "
                    f"{takes}), got {value!r}."
                )
        return cls._export(model, tokenizer, os.fspath(directory), **options)

    @classmethod
    def attention_inputs(cls, model, tokenizer, text):
        """`(inputs, ids)`: `text` as the input of `tf_bigmodels.plot.attention_maps` (at most 64
        tokens), and its token ids.

        Example:

        >>> Task.attention_inputs(None, None, "text")
        Traceback (most recent call last):
        NotImplementedError
        """
        raise NotImplementedError


def fixed_batches(dataset, steps):
    """The first `steps` batches (or all, if fewer), held in memory: every validation sees the
    same examples and masks, however often and on however many replicas it runs.

    Example:

    >>> batches = fixed_batches(tf.data.Dataset.range(10).batch(2), 3)
    >>> [int(b[0]) for b in batches]
    [0, 2, 4]
    """
    batches = list(dataset.take(steps))
    stacked = tf.nest.map_structure(lambda *parts: tf.stack(parts), *batches)
    return tf.data.Dataset.from_tensor_slices(stacked)


def _copy_weights(source, target, name):
    """Sets every weight of `target` from `source`; one line naming the first that differs."""
    if isinstance(source, BERTEncoder) and isinstance(target, BERTPretrainer):
        target = target.encoder  # a keras-hub BERT: the encoder; the heads start new
    if type(source) is not type(target):
        raise ValueError(
            f"`init_from`={name!r} holds a {type(source).__name__}; this run trains a "
            f"{type(target).__name__}."
        )
    theirs, ours = source.weights, target.weights
    if len(theirs) != len(ours):
        raise ValueError(
            f"`init_from`={name!r} cannot fill this model: it has {len(theirs)} weights, this "
            f"model {len(ours)} (the number of layers must be the source's)."
        )
    for other, variable in zip(theirs, ours):
        if tuple(other.shape) != tuple(variable.shape):
            raise ValueError(
                f"`init_from`={name!r} cannot fill this model: its weight {variable.path} "
                f"has shape {tuple(other.shape)} in the source, {tuple(variable.shape)} here "
                "(the width, heads, feed-forward size, layers, seq_len and vocabulary must be "
                "the source's)."
            )
    target.set_weights(source.get_weights())


def model_arguments(config):
    return {
        field: getattr(config, field)
        for field in ("d_model", "num_heads", "dff", "num_layers", "rate")
        if getattr(config, field) is not None
    }


def tokenizer_class(entry):
    return getattr(importlib.import_module("tf_bigmodels.tokenizers"), entry.class_name)
