"""The exported models a server holds: where they are, how they load, how a request runs them.

`find_export(spec)` turns a command-line `[NAME=]PATH` into a name and an export directory
without loading TensorFlow, so a wrong path is reported before the server starts. `load_model`
loads the newest version with `tf.saved_model.load` (plus `tensorflow_text`, whose ops the BERT
exports use) and wraps it in a `ServedModel`: TF Serving's view (status, signature metadata,
predict on JSON values) and, for a GPT, the text generation behind the OpenAI completions API.
Only `tf_bigmodels.export` is used, never training code, so a server runs where only an export
exists.
"""

import json
import os
import re
import threading

from tf_bigmodels.run_directory import (
    RunDirectory,
    export_versions,
    newest_version,
    version_path,
)
from tf_bigmodels.serving.request_values import (
    BERT_CLASSIFIER,
    BERT_PRETRAINER,
    GPT,
    OTHER,
    RequestError,
    _integer_leaf,
    _Invalid,
    _json_value,
    _map_leaves,
    _number_leaf,
    _string_leaf,
    describe,
    sampling_settings,
    signature_metadata,
)

# TensorFlow's error text around the message a client can act on: the node that raised it and
# the op, which describe our graph, not the request.
_ERROR_NOISE = re.compile(
    r"Graph execution error:|Detected at node .*? defined at \(most recent call last\):"
    r"|<stack traces unavailable>|\[\[\{\{node [^}]*\}\}\]\]|\[Op:[^\]]*\]"
)


def find_export(spec):
    """The name and export directory that `[NAME=]PATH` on the command line stands for.

    PATH is an export directory (numbered version directories, TF Serving's layout) or a run
    directory whose `export/` holds versions. The name is NAME, else PATH's last component
    (`exports/gpt` serves as `gpt`, `runs/poet` as `poet`). A PATH without SavedModel versions
    may name a LiteRT export instead (`litert_model.find_litert`: a `.tflite` file, its
    directory, or a run's `litert/model.tflite`); the second value is then the `.tflite` file.

    Args:
        spec: str. `PATH` or `NAME=PATH`.

    Returns:
        `(name, export_dir)`, both str.

    Example:

    >>> os.makedirs("runs/poet/export/1")
    >>> find_export("runs/poet"), find_export("tang=runs/poet/export")
    (('poet', 'runs/poet/export'), ('tang', 'runs/poet/export'))
    """
    from tf_bigmodels.serving.litert_model import find_litert

    name, separator, path = spec.partition("=")
    if not separator:
        name, path = "", spec
    path = os.path.normpath(path)
    saved = [d for d in (path, os.fspath(RunDirectory(path).export_dir)) if export_versions(d)]
    litert = None if saved else find_litert(path)  # a SavedModel comes first
    name = name or (litert[0] if litert else os.path.basename(os.path.abspath(path)))
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(
            f"`NAME` must be letters, digits, '.', '_' or '-' (it appears in URLs), got {name!r} "
            f"(from {spec!r}; write NAME=PATH to choose one)."
        )
    if saved or litert:
        return name, saved[0] if saved else litert[1]
    raise ValueError(
        f"`PATH` must be an export directory (numbered version directories such as {path}/1), "
        f"a run directory with an export/ of that kind or a litert/model.tflite, or a LiteRT "
        f".tflite file (its .json beside it), got {path!r}."
    )


def load_model(name, export_dir, version=None):
    """Loads a version in `export_dir` (the newest by default) and returns it as a `ServedModel`.

    Args:
        name: str. The name clients use.
        export_dir: str. A directory of numbered versions, or a `.tflite` file (then a
            `LiteRTServedModel`, with the same methods, is returned).
        version: int or None. The version to load; None for the newest (a `.tflite` file has
            one version, 1). Defaults to None.

    Returns:
        `ServedModel` (or `LiteRTServedModel`).

    Example:

    >>> from tf_bigmodels.export import export_bert
    >>> from tf_bigmodels.models import BERTClassifier, BERTEncoder
    >>> from tf_bigmodels.tokenizers import WordPieceTokenizer
    >>> tokenizer = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad"])
    >>> encoder = BERTEncoder(tokenizer.vocab_size, 8, 1, 16, 1, max_length=8)
    >>> path = export_bert(BERTClassifier(encoder, 2), tokenizer, "exports/sentiment",
    ...                    class_names=["neg", "pos"], jit_compile=False)
    >>> model = load_model("sentiment", "exports/sentiment")
    >>> model.kind, model.version, sorted(model.signatures)
    ('bert_classifier', 1, ['serving_default'])
    >>> sorted(model.predict("serving_default", {"text": ["good", "bad"]}))
    ['label', 'label_name', 'probabilities']
    >>> model.predict("serving_default", {"text": "good"})
    Traceback (most recent call last):
    ...
    tf_bigmodels.serving.request_values.RequestError: Shape of tensor text [] is not compatible with expected shape [?].
    """
    if export_dir.endswith(".tflite"):
        from tf_bigmodels.serving.litert_model import load_litert

        return load_litert(name, export_dir)
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the ops of the WordPiece tokenizer)

    path = newest_version(export_dir) if version is None else version_path(export_dir, version)
    return ServedModel(name, int(os.path.basename(path)), path, tf.saved_model.load(path))


class ServedModel:
    """One loaded SavedModel version and what the server asks of it.

    The kind comes from the export: a GPT carries `generation_config`, a BERT `export_config`
    (with `class_names` for a classifier); any other SavedModel is served through TF Serving's
    routes only (kind "saved_model"). Requests may run in several threads at once: every
    method only calls the SavedModel's functions, which TensorFlow runs concurrently.

    Args:
        name: str. The model's name in URLs.
        version: int. The version directory's number.
        path: str. The version directory.
        loaded: what `tf.saved_model.load(path)` returned.

    Example (`load_model` makes one; its example runs the methods):

    >>> ServedModel.kinds
    ('gpt', 'bert_pretrainer', 'bert_classifier', 'saved_model')
    """

    kinds = (GPT, BERT_PRETRAINER, BERT_CLASSIFIER, OTHER)

    def __init__(self, name, version, path, loaded):
        self.name, self.version, self.path = name, version, path
        self._loaded = loaded
        self._batcher = None
        # Exports written before batched decoding lack its function: one request at a time.
        self.batchable = hasattr(loaded, "decode_batch_steps")
        self.signatures = dict(loaded.signatures)
        if hasattr(loaded, "generation_config"):
            self.config = json.loads(loaded.generation_config.numpy())
            self.kind = GPT
            # One decode call holds the prompt's last token and max_length - 1 new ones.
            self.max_tokens = self.config["max_length"] - 1
        elif hasattr(loaded, "export_config"):
            self.config = json.loads(loaded.export_config.numpy())
            self.kind = BERT_CLASSIFIER if "class_names" in self.config else BERT_PRETRAINER
            self.max_tokens = 0
        else:  # not ours: served as it is, as TF Serving would
            self.config, self.kind, self.max_tokens = {}, OTHER, 0

    def describe(self):
        """What the OpenAI model list and the page show about this model (a JSON-ready dict)."""
        return describe(self, class_names=self.config.get("class_names"))

    def warm_up(self, **batching):
        """Runs every path a request takes once, so that the first request builds and compiles
        nothing.

        Replays the export's warm-up file (TF Serving's `assets.extra/tf_serving_warmup_requests`,
        one request for each signature; any SavedModel may carry one); a GPT then decodes a
        first chunk at each decode shape of `tf_bigmodels.export.warmup.decode_shapes` (what a
        completion runs: the prompt pass and the decode loop at the shapes of common prompts
        and `max_tokens`), in the batched loop when the export has one (completions then use
        only it), else in the one-request loop.

        Args:
            **batching: `max_batch_size` and `chunk_tokens`, the settings the server decodes
                with (`ServerSettings`), as `ContinuousBatcher` takes them (its defaults when
                left out). The batched loop is compiled for each batch size and chunk width it
                runs at, so the warm-up runs those and no others.
        """
        from tf_bigmodels.export.warmup import decode_shapes, read_warmup_requests

        for signature_name, inputs in read_warmup_requests(self.path):
            self._signature(signature_name)(**inputs)
        if self.kind == GPT:
            shapes = [
                (self._prompt_of(prompt_tokens), max_tokens)
                for prompt_tokens, max_tokens in decode_shapes(self.max_tokens + 1)
            ]
            if self.batchable:  # completions decode in the batched loop only
                self._warm_up_batching(shapes, batching)
                return
            # The first piece has run the prompt pass and a decode chunk at this shape:
            # compiled; the other chunks would only compute.
            settings = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "seed": 0}
            for prompt, max_tokens in shapes:
                pieces = self.stream(prompt, max_tokens, **settings)
                next(pieces, None)
                pieces.close()

    def _warm_up_batching(self, shapes, batching):
        """One row per shape through a batcher like the server's, stopped after its first
        chunk; then the first shape (a short prompt, OpenAI's default 16 tokens) at every other
        batch size that batcher decodes at (`ContinuousBatcher.batch_sizes`). Other batch sizes
        at other cache lengths compile once, on first use: all pairs would take minutes of
        compiling for a long context."""
        from tf_bigmodels.export import ContinuousBatcher, GenerationSettings

        batcher = ContinuousBatcher((self._loaded, None), batch_wait=0, **batching)
        rows = [(shape, 1) for shape in shapes]
        rows += [(shapes[0], size) for size in batcher.batch_sizes if size > 1]
        try:
            for (prompt, max_tokens), size in rows:
                first = threading.Event()
                settings = GenerationSettings(max_tokens, seed=0)
                ticket = batcher.submit(
                    [(prompt, settings)] * size, lambda *_, first=first: first.set()
                )
                first.wait()
                ticket.cancel()
        finally:
            batcher.close()

    def _prompt_of(self, tokens):
        """A prompt of `tokens` tokens or a few less (one word at least): words, then letters
        while the count still grows."""
        prompt, count = "warm", self.count_tokens("warm")
        for piece in (" warm", "m"):
            while count < tokens:
                longer = self.count_tokens(prompt + piece)
                if not count < longer <= tokens:
                    break
                prompt, count = prompt + piece, longer
        return prompt

    def metadata(self):
        """TF Serving's `GET /v1/models/{name}/metadata` answer: every signature's inputs and
        outputs with their dtypes and shapes."""
        from tensorflow.core.framework import types_pb2

        def spec_of(spec):
            dtype = types_pb2.DataType.Name(spec.dtype.as_datatype_enum)
            dims = None if spec.shape.rank is None else [-1 if d is None else d for d in spec.shape]
            return dtype, dims, spec.name or ""

        signatures = {
            signature: tuple(
                {k: spec_of(v) for k, v in specs.items()}
                for specs in (function.structured_input_signature[1], function.structured_outputs)
            )
            for signature, function in self.signatures.items()
        }
        return signature_metadata(self.name, self.version, signatures)

    def input_names(self, signature_name):
        """The input names of a signature; RequestError 404 if there is no such signature."""
        return sorted(self._signature(signature_name).structured_input_signature[1])

    def predict(self, signature_name, inputs):
        """Runs a signature on JSON values; returns its outputs as JSON values.

        Args:
            signature_name: str.
            inputs: dict of input name to a JSON value (nested lists of the input's type;
                strings may be `{"b64": ...}`, TF Serving's form for bytes).

        Returns:
            dict of output name to nested lists.

        Raises:
            RequestError: 404 for an unknown signature; 400 for a missing, unknown or
                ill-typed input, or one the graph's own checks reject (their message).
        """
        import tensorflow as tf

        function = self._signature(signature_name)
        specs = function.structured_input_signature[1]
        missing = sorted(set(specs) - set(inputs))
        unknown = sorted(set(inputs) - set(specs))
        if missing or unknown:
            raise RequestError(
                f"signature {signature_name!r} takes the inputs {sorted(specs)}; "
                + (f"missing {missing}" if missing else "")
                + ("; " if missing and unknown else "")
                + (f"unknown {unknown}" if unknown else "")
                + "."
            )
        tensors = {name: _tensor(name, inputs[name], specs[name].dtype) for name in specs}
        try:
            outputs = function(**tensors)
        except tf.errors.InvalidArgumentError as error:
            raise RequestError(_clean_message(error.message)) from None
        return {name: _json_value(value.numpy()) for name, value in outputs.items()}

    def _signature(self, signature_name):
        if signature_name not in self.signatures:
            raise RequestError(
                f"`signature_name` must be one of {sorted(self.signatures)} for model "
                f"{self.name!r}, got {signature_name!r}.",
                status=404,
                param="signature_name",
            )
        return self.signatures[signature_name]

    def count_tokens(self, text):
        """The number of tokens of `text` (GPT only); an empty text counts its start token."""
        import tensorflow as tf

        return int(self._loaded.tokenize(tf.constant([text])).row_lengths()[0])

    def start_batching(self, *, max_batch_size, max_queue, batch_wait, chunk_tokens, on_chunk):
        """Starts this GPT's `ContinuousBatcher` once; whether its completions are batched.

        False for a model that is not a GPT and for an export written before batched decoding
        (no `decode_batch_steps`): those decode one request at a time (`stream`). The arguments
        are `ContinuousBatcher`'s; a second call returns at once.
        """
        if self._batcher is None and self.kind == GPT and self.batchable:
            from tf_bigmodels.export import ContinuousBatcher

            self._batcher = ContinuousBatcher(
                (self._loaded, None),
                max_batch_size=max_batch_size,
                max_queue=max_queue,
                batch_wait=batch_wait,
                chunk_tokens=chunk_tokens,
                on_chunk=on_chunk,
            )
        return self._batcher is not None

    def submit(self, rows, max_tokens, *, temperature, top_p, top_k, on_update):
        """Queues completions in the batcher (`start_batching` first); returns their `Ticket`.

        Args:
            rows: list of `(prompt, seed)`: str, and int in [0, 2**31 - 1] or None (random).
            max_tokens, temperature, top_p, top_k: as in `stream`, the same for every row.
            on_update: callable `(index, piece, finished, error)`, called from the batcher's
                thread (see `ContinuousBatcher.submit`).

        Raises:
            RequestError: 503 when the batch and its queue are full.
        """
        from tf_bigmodels.export import BatcherFull, GenerationSettings

        requests = [
            (
                prompt,
                GenerationSettings(
                    max_tokens, **sampling_settings(temperature, top_p, top_k, seed)
                ),
            )
            for prompt, seed in rows
        ]
        try:
            return self._batcher.submit(requests, on_update)
        except BatcherFull as error:
            raise RequestError(
                f"the server is busy (the model's batch and its queue are full: {error}); "
                "retry later",
                status=503,
            ) from None

    def stop_batching(self):
        """Stops the batcher's thread (rows still in it get an error); for a model taken out of
        service."""
        if self._batcher is not None:
            self._batcher.close()

    def stream(self, prompt, max_tokens, *, temperature, top_p, top_k, seed, chunk_tokens=16):
        """Yields the continuation of `prompt` in pieces as it is generated (GPT only).

        Each piece is one call of the export's cached decode loop (`chunk_tokens` tokens), so
        a consumer that stops asking stops the generation within one chunk. The same `seed`
        repeats the same text.

        Args:
            prompt: str.
            max_tokens: int in [0, `self.max_tokens`].
            temperature: float >= 0 (0 is greedy).
            top_p: float in (0, 1] (1 is off).
            top_k: int >= 0 (0 is off).
            seed: int in [0, 2**31 - 1] or None (random).
            chunk_tokens: int >= 1. Tokens per decode call. Defaults to 16.

        Yields:
            str pieces.

        Returns:
            `(new_tokens, ended)` once the pieces are exhausted, as `stream_text` returns them.
        """
        from tf_bigmodels.export import stream_text

        settings = sampling_settings(temperature, top_p, top_k, seed)
        return stream_text(
            (self._loaded, None), prompt, max_tokens, chunk_tokens=chunk_tokens, **settings
        )


def _clean_message(message):
    """TensorFlow's error message without the graph node and op names around it."""
    return " ".join(_ERROR_NOISE.sub(" ", message).split())


def _tensor(name, value, dtype):
    """A JSON value as a tensor of `dtype`; RequestError naming the input if it does not fit."""
    import numpy as np
    import tensorflow as tf

    if dtype == tf.string:
        kind, check = "strings", _string_leaf
    elif dtype.is_integer:
        kind, check = "integers", _integer_leaf
    elif dtype.is_floating:
        kind, check = "numbers", _number_leaf
    else:
        raise RequestError(f"input `{name}` has the type {dtype.name}, which JSON cannot carry.")
    try:
        converted = _map_leaves(value, check)
        array = np.array(converted, dtype=object if dtype == tf.string else dtype.as_numpy_dtype)
        # Ragged strings make an object array of lists, which NumPy accepts and TensorFlow
        # refuses (a ValueError, as NumPy's for ragged numbers).
        tensor = tf.constant(array, dtype)
    except OverflowError:
        raise RequestError(
            f"input `{name}` holds a value outside the range of {dtype.name}."
        ) from None
    except (TypeError, ValueError) as error:
        detail = f" ({error})" if isinstance(error, _Invalid) else ""
        raise RequestError(
            f"input `{name}` must be {kind}, or nested lists of them of one shape (not ragged), "
            f"for a {dtype.name} tensor{detail}."
        ) from None
    return tensor
