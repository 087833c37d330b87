"""A LiteRT export (`.tflite`) served with the same APIs as a SavedModel.

`find_litert(path)` says whether a command-line PATH names a LiteRT export: a `.tflite` file
with its JSON description beside it, a directory holding exactly one such file, or a run
directory with `litert/model.tflite`. `serve` asks it only when PATH holds no SavedModel
versions (directly or in a run's `export/`), so a run directory with both serves its SavedModel;
to serve the LiteRT file of such a run, pass the file (`runs/gpt/litert/model.tflite`).

`LiteRTServedModel` answers what the server asks of a `ServedModel`, with `ai_edge_litert`:

- a GPT (kind "gpt"): the OpenAI completions API (plain, `n`, streaming, `seed`) through
  `stream`, and TF Serving's `:predict` with the SavedModel's `generate` signature (the same
  inputs `prompts, max_new_tokens, temperature, top_k, top_p, seed` and output `completions`,
  so one request body serves both formats) and `logits`. `serving_default` is refused (404):
  a LiteRT export fixes no decoding settings, so `generate` names them;
- a BERT classifier (kind "bert_classifier"): `serving_default` (`text` -> `probabilities`,
  `label`, `label_name`), as the SavedModel's;
- a BERT encoder (kind "bert_encoder"): `serving_default` (`text` -> `pooled_output`,
  `sequence_output`, `padding_mask`) and `encode_pair`. `fill_mask` is refused (404): the
  LiteRT export holds the encoder without its masked-language-model head.

What differs from the SavedModel: the same seed draws different tokens (LiteRT samples with
NumPy's generator, the SavedModel with TensorFlow's; greedy text is the same); the export has
one version (1); a classifier's `label_name` is the class index as text (a LiteRT export
records no class names).

The interpreter holds the key/value cache of the stream it decodes, so each concurrent stream
or call takes an interpreter of its own from a pool (one is made when all are busy; the
server's `max_concurrency` bounds how many). A GPT is served without TensorFlow's ops, but
`tf_bigmodels.litert` imports TensorFlow with the package; a BERT export needs TensorFlow Text
for its WordPiece tokenizer.
"""

import contextlib
import os
import threading

from tf_bigmodels.run_directory import RunDirectory
from tf_bigmodels.serving.request_values import (
    BERT_CLASSIFIER,
    GPT,
    RequestError,
    _integer_leaf,
    _Invalid,
    _map_leaves,
    _number_leaf,
    _string_leaf,
    describe,
    sampling_settings,
    signature_metadata,
)

BERT_ENCODER = "bert_encoder"
# JSON dtypes of TF Serving's metadata, and what a JSON leaf of each must be.
_STRING, _INT32, _FLOAT = "DT_STRING", "DT_INT32", "DT_FLOAT"
_LEAVES = {
    _STRING: ("strings", _string_leaf),
    _INT32: ("integers", _integer_leaf),
    _FLOAT: ("numbers", _number_leaf),
}


def find_litert(path):
    """The default name and `.tflite` file that PATH stands for, or None if it names none.

    Args:
        path: str. A `.tflite` file, a directory holding one, or a run directory.

    Returns:
        `(name, tflite_path)` or None. The name is the run directory's name for a run (or its
        `litert/model.tflite`), else the directory's name, else the file's name without
        `.tflite`.

    Example:

    >>> os.makedirs("runs/poet/litert")
    >>> for name in ("model.tflite", "model.json"):
    ...     open(os.path.join("runs/poet/litert", name), "w").close()
    >>> find_litert("runs/poet"), find_litert("runs/poet/litert/model.tflite")
    (('poet', 'runs/poet/litert/model.tflite'), ('poet', 'runs/poet/litert/model.tflite'))
    >>> find_litert("runs/poet/litert"), find_litert("runs/none")
    (('litert', 'runs/poet/litert/model.tflite'), None)
    """
    path = os.path.normpath(path)
    if os.path.isfile(path):
        if not _is_export(path):
            return None
        run = os.path.dirname(os.path.dirname(os.path.abspath(path)))
        if os.path.abspath(RunDirectory(run).litert) == os.path.abspath(path):
            return os.path.basename(run), path
        return os.path.splitext(os.path.basename(path))[0], path
    run_file = os.fspath(RunDirectory(path).litert)
    if _is_export(run_file):
        return os.path.basename(os.path.abspath(path)), run_file
    if not os.path.isdir(path):
        return None
    files = sorted(
        os.path.join(path, entry)
        for entry in os.listdir(path)
        if _is_export(os.path.join(path, entry))
    )
    if len(files) > 1:
        raise ValueError(
            f"`PATH` must name one LiteRT export, got the directory {path!r} holding "
            f"{len(files)} ({', '.join(os.path.basename(f) for f in files)}); pass the file."
        )
    return (os.path.basename(os.path.abspath(path)), files[0]) if files else None


def _is_export(path):
    # The description rule of `tf_bigmodels.litert.description_path`, restated here because
    # paths are checked before TensorFlow (which that package imports) loads.
    return path.endswith(".tflite") and os.path.isfile(path[: -len(".tflite")] + ".json")


def load_litert(name, path):
    """Loads a LiteRT export as a `LiteRTServedModel`.

    Args:
        name: str. The name clients use.
        path: str. The `.tflite` file.

    Returns:
        `LiteRTServedModel`.

    Example:

    >>> from tf_bigmodels.litert import export_gpt_litert
    >>> from tf_bigmodels.models import GPTModel
    >>> from tf_bigmodels.tokenizers import ByteTokenizer
    >>> path = export_gpt_litert(GPTModel(258, 16, 2, 32, 1, max_length=16), ByteTokenizer(),
    ...                          "out/gpt.tflite")
    >>> model = load_litert("gpt", path)
    >>> model.kind, model.version, model.max_tokens, sorted(model.signatures)
    ('gpt', 1, 15, ['generate', 'logits'])
    >>> settings = {"max_new_tokens": 4, "temperature": 0, "top_k": 0, "top_p": 1, "seed": 1}
    >>> text = model.predict("generate", {"prompts": ["hi"], **settings})["completions"][0]
    >>> text == "".join(model.stream("hi", 4, temperature=0, top_p=1, top_k=0, seed=1))
    True
    >>> model.predict("serving_default", {"prompts": ["hi"]})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tf_bigmodels.serving.request_values.RequestError: `signature_name` must be one of ['generate', ...
    """
    return LiteRTServedModel(name, path)


class LiteRTServedModel:
    """One LiteRT export and what the server asks of it (the methods of `ServedModel`).

    Args:
        name: str. The model's name in URLs.
        path: str. The `.tflite` file (its JSON description and tokenizer beside it).

    Example (`load_litert` makes one and runs its methods):

    >>> LiteRTServedModel.kinds
    ('gpt', 'bert_classifier', 'bert_encoder')
    """

    kinds = (GPT, BERT_CLASSIFIER, BERT_ENCODER)

    def __init__(self, name, path):
        from tf_bigmodels.litert import LiteRTEncoder, LiteRTGenerator, load_description

        self.name, self.version, self.path = name, 1, path
        self.config, _ = load_description(path)
        self.config = {**self.config, "format": "litert"}
        model = self.config["model"]
        if model == "gpt":
            self.kind, runner = GPT, LiteRTGenerator
            self.max_tokens = self.config["max_length"] - 1  # the prompt keeps one token
        else:
            self.kind = BERT_CLASSIFIER if model == BERT_CLASSIFIER else BERT_ENCODER
            runner, self.max_tokens = LiteRTEncoder, 0
        self._free, self._lock = [runner(path)], threading.Lock()
        self._runner = runner
        self._first = self._free[0]  # its tokenizer serves every thread (it keeps no state)
        self._specs = self._signature_specs()
        self.signatures = dict.fromkeys(self._specs)
        if self.kind != GPT:
            from tf_bigmodels.tokenizers import WordPieceTokenizer

            tokenizer = self.config["tokenizer"]
            vocabulary = os.path.join(os.path.dirname(path), tokenizer["file"])
            self._wordpiece = WordPieceTokenizer(vocabulary, lowercase=tokenizer["lowercase"])

    def _signature_specs(self):
        """Signature name -> (inputs, outputs), each name -> (dtype, shape; None: any rank)."""
        if self.kind == GPT:
            scalar = (_INT32, None)
            generate_inputs = {"prompts": (_STRING, None), "max_new_tokens": scalar}
            generate_inputs.update(temperature=(_FLOAT, None), top_k=scalar)
            generate_inputs.update(top_p=(_FLOAT, None), seed=scalar)
            vocab = self.config["vocab_size"]
            return {
                "generate": (generate_inputs, {"completions": (_STRING, [-1])}),
                "logits": ({"token_ids": (_INT32, None)}, {"logits": (_FLOAT, [-1, -1, vocab])}),
            }
        text = {"text": (_STRING, [-1])}
        if self.kind == BERT_CLASSIFIER:
            classes = self.config["num_classes"]
            outputs = {"probabilities": (_FLOAT, [-1, classes]), "label": (_INT32, [-1])}
            return {"serving_default": (text, {**outputs, "label_name": (_STRING, [-1])})}
        d_model = self.config["d_model"]
        outputs = {
            "pooled_output": (_FLOAT, [-1, d_model]),
            "sequence_output": (_FLOAT, [-1, -1, d_model]),
            "padding_mask": (_INT32, [-1, -1]),
        }
        return {
            "serving_default": (text, outputs),
            "encode_pair": ({**text, "text_pair": (_STRING, [-1])}, outputs),
        }

    @contextlib.contextmanager
    def _interpreter(self):
        """A runner no other thread uses until this block ends (a new one if all are busy)."""
        with self._lock:
            runner = self._free.pop() if self._free else None
        runner = runner or self._runner(self.path)
        try:
            yield runner
        finally:
            with self._lock:
                self._free.append(runner)

    def describe(self):
        """What the OpenAI model list and the page show about this model (a JSON-ready dict)."""
        return describe(self, class_names=None, format="litert", weights=self.config["weights"])

    def warm_up(self, **batching):
        """Runs every signature once (each interpreter allocates its tensors on first use).

        The server's batching settings (`batching`, as `ServedModel.warm_up` takes them) do not
        apply: an interpreter decodes one request at a time."""
        if self.kind == GPT:
            "".join(self.stream("warm up", 2, temperature=1.0, top_p=1.0, top_k=0, seed=0))
            settings = {"max_new_tokens": 1, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
            self.predict("generate", {"prompts": ["warm up"], "seed": 0, **settings})
            self.predict("logits", {"token_ids": [[0]]})
        else:
            self.predict("serving_default", {"text": ["warm up"]})

    def metadata(self):
        """TF Serving's `GET /v1/models/{name}/metadata` answer, in the SavedModel's form."""
        return signature_metadata(self.name, self.version, self._specs)

    def input_names(self, signature_name):
        """The input names of a signature; RequestError 404 if there is no such signature."""
        return sorted(self._signature(signature_name)[0])

    def _signature(self, signature_name):
        if signature_name not in self._specs:
            why = {
                "serving_default": " (a LiteRT export fixes no decoding settings: call "
                "`generate` with them)",
                "fill_mask": " (the LiteRT export holds the encoder without its "
                "masked-language-model head; serve the SavedModel for `fill_mask`)",
            }
            reason = why.get(signature_name, "") if self.kind != BERT_CLASSIFIER else ""
            raise RequestError(
                f"`signature_name` must be one of {sorted(self._specs)} for model "
                f"{self.name!r}, got {signature_name!r}{reason}.",
                status=404,
                param="signature_name",
            )
        return self._specs[signature_name]

    def predict(self, signature_name, inputs):
        """Runs a signature on JSON values; returns its outputs as JSON values.

        Args:
            signature_name: str.
            inputs: dict of input name to a JSON value (as for a SavedModel).

        Returns:
            dict of output name to nested lists.

        Raises:
            RequestError: 404 for an unknown signature; 400 for a missing, unknown, ill-typed
                or out-of-range input.
        """
        specs = self._signature(signature_name)[0]
        missing = sorted(set(specs) - set(inputs))
        unknown = sorted(set(inputs) - set(specs))
        if missing or unknown:
            raise RequestError(
                f"signature {signature_name!r} takes the inputs {sorted(specs)}; "
                + "; ".join(
                    f"{what} {names}"
                    for what, names in (("missing", missing), ("unknown", unknown))
                    if names
                )
                + "."
            )
        arrays = {name: _array(name, inputs[name], specs[name][0]) for name in specs}
        if signature_name == "generate":
            return self._generate(**arrays)
        if signature_name == "logits":
            return self._logits(_rank(arrays["token_ids"], 2, "token_ids"))
        texts = [_rank(arrays[name], 1, name) for name in ("text", "text_pair") if name in arrays]
        return self._bert(signature_name, texts)

    def _generate(self, prompts, max_new_tokens, temperature, top_k, top_p, seed):
        from tf_bigmodels.export import GenerationSettings

        prompts = [p.decode("utf-8", "replace") for p in _rank(prompts, 1, "prompts")]
        scalars = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k)
        scalars.update(top_p=top_p, seed=seed)
        scalars = {name: _rank(value, 0, name).item() for name, value in scalars.items()}
        if scalars["seed"] < 0:  # the SavedModel's rule: a fresh random seed per call
            scalars["seed"] = None
        try:
            settings = GenerationSettings(**scalars).check_model(self._first)
        except ValueError as error:
            raise RequestError(str(error)) from None
        options = {"temperature": settings.temperature, "top_k": settings.top_k}
        options.update(top_p=settings.top_p, seed=settings.seed)
        completions = []
        with self._interpreter() as generator:
            for index, prompt in enumerate(prompts):
                copy = prompts[:index].count(prompt)  # copies of a prompt draw independently
                text = generator.generate_text(
                    prompt, settings.max_new_tokens, copy=copy, **options
                )
                completions.append(text)
        return {"completions": completions}

    def _logits(self, token_ids):
        vocab, max_length = self.config["vocab_size"], self.config["max_length"]
        if token_ids.shape[1] > max_length:
            raise RequestError(
                f"`token_ids` may hold at most max_length={max_length} positions, got "
                f"{token_ids.shape[1]}."
            )
        if token_ids.size and (token_ids.min() < 0 or token_ids.max() >= vocab):
            raise RequestError(f"`token_ids` must be in [0, {vocab}).")
        if 0 in token_ids.shape:
            return {"logits": [[] for _ in range(token_ids.shape[0])]}
        with self._interpreter() as generator:
            return {"logits": generator.logits(token_ids).tolist()}

    def _bert(self, signature_name, texts):
        """Text -> `[CLS] text [SEP] (text_pair [SEP])`, trimmed round-robin and padded as the
        SavedModel's serving functions do, then the encoder or the classifier."""
        import numpy as np

        if len({len(t) for t in texts}) > 1:
            raise RequestError("`text` and `text_pair` must have the same batch size.")
        if not len(texts[0]):
            return {name: [] for name in self._specs[signature_name][1]}
        segments = [
            self._wordpiece.tokenize([t.decode("utf-8", "replace") for t in column]).to_list()
            for column in texts
        ]
        ids = self.config["special_ids"]
        budget = self.config["max_length"] - 1 - len(segments)  # [CLS] and one [SEP] each
        rows = []
        for row in zip(*segments):
            kept = _round_robin([len(s) for s in row], budget)
            tokens, segment_ids = [ids["cls_id"]], [0]
            for index, (segment, length) in enumerate(zip(row, kept)):
                tokens += segment[:length] + [ids["sep_id"]]
                segment_ids += [index] * (length + 1)
            rows.append((tokens, segment_ids))
        width = max(len(tokens) for tokens, _ in rows)
        token_ids = np.full((len(rows), width), ids["pad_id"], np.int32)
        segment_ids = np.zeros((len(rows), width), np.int32)
        padding_mask = np.zeros((len(rows), width), np.int32)
        for i, (tokens, segment) in enumerate(rows):
            token_ids[i, : len(tokens)], segment_ids[i, : len(tokens)] = tokens, segment
            padding_mask[i, : len(tokens)] = 1
        with self._interpreter() as encoder:
            if self.kind == BERT_CLASSIFIER:
                probabilities = encoder.classify(token_ids, segment_ids, padding_mask)[
                    "probabilities"
                ]
                labels = probabilities.argmax(axis=-1)
                return {
                    "probabilities": probabilities.tolist(),
                    "label": labels.tolist(),
                    "label_name": [str(label) for label in labels],
                }
            outputs = encoder.encode(token_ids, segment_ids, padding_mask)
        return {
            "pooled_output": outputs["pooled_output"].tolist(),
            "sequence_output": outputs["sequence_output"].tolist(),
            "padding_mask": padding_mask.tolist(),
        }

    def count_tokens(self, text):
        """The number of tokens of `text` (GPT only); an empty text counts its start token."""
        return max(len(self._first.tokenizer.encode(text)), 1)

    def stream(self, prompt, max_tokens, *, temperature, top_p, top_k, seed, chunk_tokens=16):
        """Yields the continuation of `prompt` in pieces as it is generated (GPT only).

        Each piece is the text of one more decoded token (held back while a character's bytes
        are incomplete), so a consumer that stops asking stops the generation within a token.
        The same `seed` repeats the same text, and equals `LiteRTGenerator.generate_text`.

        Args:
            prompt: str.
            max_tokens: int in [0, `self.max_tokens`].
            temperature: float >= 0 (0 is greedy).
            top_p: float in (0, 1] (1 is off).
            top_k: int >= 0 (0 is off).
            seed: int in [0, 2**31 - 1] or None (random).
            chunk_tokens: int. Accepted for the SavedModel's call; a LiteRT step is one token,
                so it does not change the pieces. Defaults to 16.

        Yields:
            str pieces.

        Returns:
            `(new_tokens, ended)` once the pieces are exhausted, as `LiteRTGenerator.stream_text`.
        """
        with self._interpreter() as generator:
            settings = sampling_settings(temperature, top_p, top_k, seed)
            return (yield from generator.stream_text(prompt, max_tokens, **settings))


def _array(name, value, dtype):
    """A JSON value as a NumPy array of `dtype`; RequestError naming the input otherwise."""
    import numpy as np

    kind, check = _LEAVES[dtype]
    numpy_dtype = {_STRING: object, _INT32: np.int64, _FLOAT: np.float64}[dtype]
    try:
        array = np.array(_map_leaves(value, check), dtype=numpy_dtype)
        if dtype == _STRING and not all(isinstance(leaf, bytes) for leaf in array.flat):
            raise ValueError("ragged")
    except (TypeError, ValueError) as error:
        detail = f" ({error})" if isinstance(error, _Invalid) else ""
        raise RequestError(
            f"input `{name}` must be {kind}, or nested lists of them of one shape (not ragged), "
            f"for a {dtype[3:].lower()} tensor{detail}."
        ) from None
    if dtype == _INT32:
        if array.size and (array.min() < -(2**31) or array.max() >= 2**31):
            raise RequestError(f"input `{name}` holds a value outside the range of int32.")
        array = array.astype(np.int32)
    return array


def _rank(array, rank, name):
    if array.ndim != rank:
        shape = f"shape {list(array.shape)}" if array.ndim else "a scalar"
        wanted = {0: "a scalar", 1: "a list (1-D)", 2: "a matrix (2-D)"}[rank]
        raise RequestError(f"input `{name}` must be {wanted}, got {shape}.")
    return array


def _round_robin(lengths, budget):
    """How many tokens of each segment fit in `budget`: one of each in turn, as
    `tensorflow_text.RoundRobinTrimmer` keeps them.

    Example:

    >>> _round_robin([5, 1], 4), _round_robin([2, 2], 10)
    ([3, 1], [2, 2])
    """
    kept = [0] * len(lengths)
    while budget > 0 and any(k < n for k, n in zip(kept, lengths)):
        for i, n in enumerate(lengths):
            if budget > 0 and kept[i] < n:
                kept[i] += 1
                budget -= 1
    return kept
