"""Run a LiteRT export with `ai_edge_litert`: GPT text generation (streamed), BERT encoding.

Decoding follows `GenerationSettings` as `GPTModel.generate` does: greedy at temperature 0 (the
same tokens as the Keras model), top-k then top-p filtering otherwise, a prompt truncated from
the left to `max_length - max_new_tokens` tokens, a row stopping after `end_id`. Sampling draws
from NumPy's generator, not TensorFlow's: the same seed and prompt always give the same tokens
here (streamed or not), but not the tokens `GPTModel.generate` draws with that seed.

The key/value cache lives in the `decode` signature's own input buffers: the prompt's cache is
copied in once, and each step writes only the new key/value rows there, so no step copies the
cache (see `_DecodeStep`).
"""

import json
import os
import secrets
import zlib

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from tf_bigmodels import _checks
from tf_bigmodels.litert.export import FORMAT, description_path
from tf_bigmodels.models.generation import GenerationSettings

_REPLACEMENT = "\ufffd"


def load_description(path):
    """The JSON description of a LiteRT export, given its `.tflite` or `.json` path.

    Args:
        path: str or path-like.

    Returns:
        `(description dict, path of the .tflite file)`.

    Example:

    >>> load_description("missing.tflite")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: `path` must be a .tflite file written by tf_bigmodels.litert with its .json ...
    """
    path = os.fspath(path)
    json_path = path if path.endswith(".json") else description_path(path)
    if not os.path.isfile(json_path):
        raise ValueError(
            f"`path` must be a .tflite file written by tf_bigmodels.litert with its .json "
            f"description beside it, got {path!r} ({json_path} does not exist)."
        )
    with open(json_path, encoding="utf-8") as f:
        description = json.load(f)
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise ValueError(f"{json_path} must be a {FORMAT} description; it is not.")
    return description, os.path.join(os.path.dirname(json_path), description["tflite"])


class _Tokenizer:
    """Text <-> ids from an export's description, without TensorFlow (bytes or SentencePiece)."""

    def __init__(self, description, directory):
        spec = description["tokenizer"]
        self.kind = spec["kind"]
        self.special = {description["special_ids"]["end_id"], description["special_ids"]["pad_id"]}
        self._processor = None
        if self.kind == "sentencepiece":
            import sentencepiece

            self._processor = sentencepiece.SentencePieceProcessor(
                model_file=os.path.join(directory, spec["file"])
            )
        elif self.kind != "byte":
            raise ValueError(f"A GPT export's tokenizer must be byte or sentencepiece, got {spec}.")

    def encode(self, text):
        if self._processor is not None:
            return list(self._processor.encode(text))
        return list(text.encode("utf-8"))

    def decode(self, ids):
        ids = [int(i) for i in ids if int(i) not in self.special]
        if self._processor is not None:
            return self._processor.decode(ids)
        return bytes(ids).decode("utf-8", errors="replace")


class _DecodeStep:
    """The `decode` signature with its cache inputs used as the cache itself.

    `SignatureRunner.__call__` copies every input on every call, the whole cache included; the
    interpreter's public `tensor()` reaches only the first subgraph. So this class uses the
    interpreter wrapper's own calls (`ResizeInputTensor`, `AllocateTensors`, `tensor`, `Invoke`
    with a subgraph index), which `SignatureRunner` itself uses. Views of the input and output
    buffers are taken once after each allocation (`start`) and used until the next one: only an
    allocation moves the buffers, and a view per step costs more than a small model's step. If a
    later `ai_edge_litert` renames these calls, plain copies are the fallback (the same results,
    one cache copy per step).
    """

    def __init__(self, interpreter, num_layers):
        self._interpreter = interpreter
        self._runner = interpreter.get_signature_runner("decode")
        self._names = [f"{kind}_{i}" for i in range(num_layers) for kind in ("key", "value")]
        try:
            self._wrapper = interpreter._interpreter
            self._subgraph = self._runner._subgraph_index
            self._inputs = dict(self._runner._inputs)
            self._outputs = dict(self._runner._outputs)
        except AttributeError:
            self._wrapper = None
        self._arrays = None

    def start(self, prompt_cache, key_mask):
        """Sets the cache to `prompt_cache` (name -> `[B, h, P, hd]`) in `key_mask.shape[1]` slots."""
        batch, slots = key_mask.shape
        shapes = {"token_ids": (batch, 1), "positions": (batch, 1), "key_mask": (batch, slots)}
        for name in self._names:
            b, heads, _, head_dim = prompt_cache[name].shape
            shapes[name] = (b, heads, slots, head_dim)
        if self._wrapper is None:
            self._arrays = {name: np.zeros(shape, np.int32) for name, shape in shapes.items()}
            for name in self._names:
                self._arrays[name] = np.zeros(shapes[name], np.float32)
        else:
            for name, shape in shapes.items():
                self._wrapper.ResizeInputTensor(
                    self._inputs[name], np.array(shape, np.int32), False, self._subgraph
                )
            self._wrapper.AllocateTensors(self._subgraph)
            self._arrays = {name: self._buffer(index) for name, index in self._inputs.items()}
            self._output_views = {
                name: self._buffer(index) for name, index in self._outputs.items()
            }
        for name in self._names:
            view = self._arrays[name]
            length = prompt_cache[name].shape[2]
            view[:, :, :length] = prompt_cache[name]
            view[:, :, length:] = 0
        self._arrays["key_mask"][...] = key_mask

    def _buffer(self, index):
        return self._wrapper.tensor(self._interpreter, index, self._subgraph)

    def __call__(self, token_ids, positions, slot):
        """Runs one step; writes its key/value rows at `slot`; returns logits `[B, vocab]`."""
        arrays = self._arrays
        arrays["token_ids"][...] = token_ids
        arrays["positions"][...] = positions
        if self._wrapper is None:
            outputs = self._runner(**arrays)
        else:
            self._wrapper.Invoke(self._subgraph)
            outputs = self._output_views
        for name in self._names:
            arrays[name][:, :, slot] = outputs[f"new_{name}"][:, :, 0]
        arrays["key_mask"][:, slot] = 1
        return outputs["logits"].copy()


def sample_next_token(logits, temperature, top_k, top_p, rng):
    """One token id from float32 `logits` `[vocab]`, by the rule of `GPTModel.generate`.

    Greedy (argmax) at `temperature == 0`; otherwise softmax(logits / temperature) restricted
    first to the `top_k` highest (0: all) and then to the smallest prefix of the sorted tokens
    whose probability reaches `top_p` (always at least one token), drawn with `rng`.

    Args:
        logits: NumPy array `[vocab]`.
        temperature: float >= 0.
        top_k: int >= 0.
        top_p: float in (0, 1].
        rng: `numpy.random.Generator`.

    Example:

    >>> sample_next_token(np.array([0.0, 5.0, 1.0]), 0.0, 0, 1.0, np.random.default_rng(0))
    1
    >>> sample_next_token(np.array([0.0, 5.0, 1.0]), 1.0, 1, 1.0, np.random.default_rng(0))
    1
    """
    if temperature == 0:
        return int(np.argmax(logits))
    scaled = np.asarray(logits, np.float64) / temperature
    if top_k > 0 or top_p < 1.0:
        ordered = np.sort(scaled)[::-1]
        k = min(top_k, ordered.size) if top_k > 0 else ordered.size
        top = np.exp(ordered[:k] - ordered[0])
        probabilities = top / top.sum()
        mass_before = np.cumsum(probabilities) - probabilities
        kept = int(np.sum(mass_before < top_p))
        scaled = np.where(scaled >= ordered[kept - 1], scaled, -np.inf)
    weights = np.exp(scaled - scaled.max())
    cumulative = np.cumsum(weights)
    return int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))


class LiteRTGenerator:
    """Text generation from a GPT LiteRT export (`export_gpt_litert`), with `ai_edge_litert`.

    The cache lives in the interpreter, so one generator decodes one stream at a time: finish
    (or drop) a `stream_ids`/`stream_text` generator before starting another on the same object.

    Args:
        path: str or path-like. The `.tflite` file (or its `.json` description).
        num_threads: int or None. Interpreter threads; None lets LiteRT choose. Defaults to None.

    Attributes:
        description: dict. The export's JSON description.
        vocab_size, max_length, end_id, pad_id: int. From the description.

    Example:

    >>> from tf_bigmodels.litert import export_gpt_litert
    >>> from tf_bigmodels.models import GPTModel
    >>> from tf_bigmodels.tokenizers import ByteTokenizer
    >>> path = export_gpt_litert(GPTModel(258, 32, 2, 64, 1, max_length=32), ByteTokenizer(),
    ...                          "out/gpt.tflite")
    >>> generator = LiteRTGenerator(path)
    >>> len(generator.generate([[104, 105]], max_new_tokens=5, temperature=0.0)[0])
    7
    >>> generator.logits([[104, 105]]).shape
    (1, 2, 258)
    >>> text = "".join(generator.stream_text("hi", 8, temperature=0.8, top_k=40, seed=1))
    >>> text == generator.generate_text("hi", 8, temperature=0.8, top_k=40, seed=1)
    True
    """

    def __init__(self, path, *, num_threads=None):
        self.description, tflite = load_description(path)
        if self.description["model"] != "gpt":
            raise ValueError(
                f"`path` must be a GPT export to generate text, got a "
                f"{self.description['model']!r} export ({os.fspath(path)})."
            )
        num_threads = _checks.integer("num_threads", num_threads, low=1, none_ok=True)
        self.interpreter = Interpreter(model_path=tflite, num_threads=num_threads)
        self.vocab_size = self.description["vocab_size"]
        self.max_length = self.description["max_length"]
        self.end_id = self.description["special_ids"]["end_id"]
        self.pad_id = self.description["special_ids"]["pad_id"]
        self.tokenizer = _Tokenizer(self.description, os.path.dirname(tflite))
        self._prefill = self.interpreter.get_signature_runner("prefill")
        self._logits = self.interpreter.get_signature_runner("logits")
        self._decode = _DecodeStep(self.interpreter, self.description["num_layers"])

    def logits(self, token_ids):
        """Float32 logits `[batch, length, vocab]` of int `token_ids` `[batch, length]`.

        Example:

        >>> generator.logits([[1, 2, 3]]).shape  # doctest: +SKIP
        (1, 3, 258)
        """
        token_ids = np.asarray(token_ids, np.int32)
        return self._logits(token_ids=token_ids)["logits"]

    def _settings(self, max_new_tokens, settings):
        settings.setdefault("end_id", self.end_id)
        settings.setdefault("pad_id", self.pad_id)
        return GenerationSettings(max_new_tokens, **settings).check_model(self)

    def stream_ids(self, prompt_ids, max_new_tokens, *, copy=0, **settings):
        """Yields the new token ids of one prompt as they are decoded (at most `max_new_tokens`).

        Args:
            prompt_ids: list of int, at least one id in `[0, vocab_size)`.
            max_new_tokens: int in [0, max_length - 1].
            copy: int. How many earlier rows of a batch hold this same prompt (copies draw
                independently). Defaults to 0.
            **settings: `temperature`, `top_k`, `top_p`, `seed`, `end_id`, `pad_id` of
                `GenerationSettings` (end and pad ids default to the tokenizer's).

        Example:

        >>> list(generator.stream_ids([104], 3, temperature=0.0)) == (
        ...     generator.generate([[104]], 3, temperature=0.0)[0][1:])
        ... # doctest: +SKIP
        True
        """
        settings = self._settings(max_new_tokens, settings)
        prompt = self._checked_prompt(prompt_ids)[-(self.max_length - settings.max_new_tokens) :]
        if settings.max_new_tokens == 0:
            return
        seed = secrets.randbits(31) if settings.seed is None else settings.seed
        fingerprint = zlib.crc32(np.asarray(prompt, np.int32).tobytes())
        rng = np.random.default_rng([seed, fingerprint, copy])
        ids = np.asarray([prompt], np.int32)
        outputs = self._prefill(token_ids=ids, padding_mask=np.ones_like(ids))
        slots = len(prompt) + settings.max_new_tokens - 1  # the last token needs no slot
        key_mask = np.zeros((1, slots), np.int32)
        key_mask[:, : len(prompt)] = 1
        self._decode.start(outputs, key_mask)
        logits = outputs["logits"][0]
        top_k, top_p = settings.top_k or 0, 1.0 if settings.top_p is None else settings.top_p
        for step in range(settings.max_new_tokens):
            token = sample_next_token(logits, settings.temperature, top_k, top_p, rng)
            yield token
            if token == settings.end_id or step == settings.max_new_tokens - 1:
                return
            position = len(prompt) + step
            logits = self._decode([[token]], [[position]], position)[0]

    def generate(self, token_ids, max_new_tokens, **settings):
        """Each prompt followed by its new tokens (a row ends at its end token), like
        `GPTModel.generate` on a list of prompts.

        Args:
            token_ids: list of lists of int (prompts; each needs at least one id).
            max_new_tokens: int in [0, max_length - 1].
            **settings: as in `stream_ids`.

        Returns:
            A list of lists of int: each (truncated) prompt and its new tokens.

        Example:

        >>> rows = generator.generate([[104, 105], [72]], 4, temperature=0.8, seed=1)
        ... # doctest: +SKIP
        """
        rows = []
        for index, prompt in enumerate(token_ids):
            prompt = list(prompt)
            copy = sum(1 for earlier in token_ids[:index] if list(earlier) == prompt)
            new = list(self.stream_ids(prompt, max_new_tokens, copy=copy, **settings))
            rows.append(prompt[-(self.max_length - max_new_tokens) :] + new)
        return rows

    def stream_text(self, prompt, max_new_tokens, **settings):
        """Yields the continuation of `prompt` in pieces of text as tokens are decoded.

        A character whose bytes are not complete yet is held back until they are (and dropped
        if the token limit cuts it off); the end-of-text token ends the stream. An empty
        prompt starts a new document (the end-of-text token).

        Args:
            prompt: str.
            max_new_tokens: int in [0, max_length - 1].
            **settings: as in `stream_ids`.

        Returns:
            When the pieces are exhausted (the generator's return value): `(new_tokens,
            ended)`, the tokens generated (the end-of-text token not counted) and whether the
            end-of-text token ended the text, as `tf_bigmodels.export.stream_text` returns them.

        Example:

        >>> pieces = list(generator.stream_text("To be", 20, temperature=0.0))
        ... # doctest: +SKIP
        """
        ids = self.tokenizer.encode(prompt) or [self.end_id]
        end_id = settings.get("end_id", self.end_id)
        new, emitted = [], ""
        for token in self.stream_ids(ids, max_new_tokens, **settings):
            if token == end_id:  # the last one stream_ids yields; not part of the text
                return len(new), True
            new.append(token)
            text = self.tokenizer.decode(new).rstrip(_REPLACEMENT)
            if len(text) > len(emitted) and text.startswith(emitted):
                yield text[len(emitted) :]
                emitted = text
        return len(new), False

    def generate_text(self, prompt, max_new_tokens, **settings):
        """The continuation of `prompt` as one string (`stream_text` joined).

        Example:

        >>> text = generator.generate_text("To be", 20, temperature=0.0)
        ... # doctest: +SKIP
        """
        return "".join(self.stream_text(prompt, max_new_tokens, **settings))

    def _checked_prompt(self, prompt_ids):
        prompt = [int(i) for i in prompt_ids]
        if not prompt or min(prompt) < 0 or max(prompt) >= self.vocab_size:
            raise ValueError(
                f"`token_ids` must hold at least one id, each in [0, {self.vocab_size}), got "
                f"{prompt[:20]}{'...' if len(prompt) > 20 else ''}."
            )
        return prompt


class LiteRTEncoder:
    """A BERT LiteRT export (`export_bert_litert`): `encode`, and `classify` for a classifier.

    Args:
        path: str or path-like. The `.tflite` file (or its `.json` description).
        num_threads: int or None. Interpreter threads. Defaults to None.

    Example:

    >>> from tf_bigmodels.litert import export_bert_litert
    >>> from tf_bigmodels.models import BERTEncoder
    >>> from tf_bigmodels.tokenizers import WordPieceTokenizer
    >>> from tf_bigmodels.models import BERTClassifier
    >>> encoder = BERTEncoder(vocab_size=6, d_model=32, num_heads=2, dff=64, num_layers=1)
    >>> tokenizer = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hi"])
    >>> path = export_bert_litert(BERTClassifier(encoder, 3), tokenizer, "out/bert.tflite")
    >>> bert = LiteRTEncoder(path)
    >>> bert.encode([[2, 5, 3, 0]])["sequence_output"].shape
    (1, 4, 32)
    >>> bert.classify([[2, 5, 3]])["probabilities"].shape
    (1, 3)
    """

    def __init__(self, path, *, num_threads=None):
        self.description, tflite = load_description(path)
        if not self.description["model"].startswith("bert"):
            raise ValueError(
                f"`path` must be a BERT export, got a {self.description['model']!r} export."
            )
        num_threads = _checks.integer("num_threads", num_threads, low=1, none_ok=True)
        self.interpreter = Interpreter(model_path=tflite, num_threads=num_threads)

    def _inputs(self, token_ids, segment_ids, padding_mask):
        token_ids = np.asarray(token_ids, np.int32)
        pad_id = self.description["special_ids"]["pad_id"]
        return {
            "token_ids": token_ids,
            "segment_ids": np.zeros_like(token_ids)
            if segment_ids is None
            else np.asarray(segment_ids, np.int32),
            "padding_mask": (token_ids != pad_id).astype(np.int32)
            if padding_mask is None
            else np.asarray(padding_mask, np.int32),
        }

    def encode(self, token_ids, segment_ids=None, padding_mask=None):
        """`{"sequence_output", "pooled_output"}` of int `[batch, length]` inputs.

        Args:
            token_ids: int array `[batch, length]`.
            segment_ids: int array or None (all 0). Defaults to None.
            padding_mask: int array or None (1 wherever `token_ids` is not `[PAD]`).

        Example:

        >>> bert.encode([[2, 5, 3, 0]])["sequence_output"].shape
        ... # doctest: +SKIP
        """
        runner = self.interpreter.get_signature_runner("encode")
        return runner(**self._inputs(token_ids, segment_ids, padding_mask))

    def classify(self, token_ids, segment_ids=None, padding_mask=None):
        """`{"logits", "probabilities"}` `[batch, num_classes]` (a classifier export only).

        Args:
            token_ids, segment_ids, padding_mask: as in `encode`.

        Example:

        >>> bert.classify([[2, 5, 3]])["probabilities"].shape
        ... # doctest: +SKIP
        """
        if "classify" not in self.description["signatures"]:
            raise ValueError(
                f"`classify` needs a BERTClassifier export; this export has no `classify` "
                f"signature (model {self.description['model']!r})."
            )
        runner = self.interpreter.get_signature_runner("classify")
        return runner(**self._inputs(token_ids, segment_ids, padding_mask))
