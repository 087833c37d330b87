"""Text as it is generated, from an exported SavedModel, a `.keras` file or a `GPTModel`.

Streaming carries the decode state (the key/value cache, the next-token logits, the step) from
chunk to chunk: each chunk is one call of the XLA-compiled decode loop that continues where the
last one stopped, so streaming N tokens costs about one `generate` call of N tokens, and gives
the same tokens as that call.

Longer than the context: a text of N tokens is decoded in *windows*. When N <= max_length - 1
there is one window, exactly one `generate` call (the prompt keeps its last max_length - N
tokens). Otherwise the first window keeps the prompt's last max_length // 2 tokens and generates
until the context is full; then the context slides: its last max_length // 2 tokens are run
through the model again (the only recomputation) and decoding goes on, as window 1, 2, ... (the
window number is folded into the random keys). So every token beyond the first window is predicted
from at least max_length // 2 previous tokens, and the windows do not depend on `chunk_tokens`.

The text is cut only at complete characters: a character whose bytes are not all generated yet
waits for the next chunk, and one cut off at the very end (the token limit reached mid-character)
is dropped.
"""

import contextlib
import dataclasses
import json
import os
import re

import keras
import tensorflow as tf

from tf_bigmodels import _checks
from tf_bigmodels.models import GPTModel, generation
from tf_bigmodels.models.compression import WEIGHTS, compress_weights
from tf_bigmodels.models.generation import GenerationSettings
from tf_bigmodels.run_directory import RunDirectory, newest_version
from tf_bigmodels.tokenizers import ByteTokenizer, SentencePieceTokenizer, WordPieceTokenizer

_REPLACEMENT = "\ufffd"  # what a character not yet complete (or cut off) detokenizes to
# A character is at most 4 UTF-8 bytes, and no token of our tokenizers spells less than a byte.
_MAX_TOKENS_PER_CHAR = 4


def load_generator(source, tokenizer=None, *, weights=None):
    """Loads what `stream_text` generates from and returns it (a `GPTModel` or a loaded SavedModel).

    Args:
        source: a `GPTModel`; the path of a `.keras` file holding one; a SavedModel directory
            written by `export_gpt`; an `export_dir` with numeric version directories (the
            highest version is loaded); or a run directory written by `tf-bigmodels train` (its
            newest SavedModel, else its final model with the tokenizer it saved).
        tokenizer: unused for SavedModels (they carry their own); for a model, its tokenizer.
            Defaults to None (the run's saved tokenizer, else a `ByteTokenizer`).
        weights: None (as stored), "float32", "bfloat16" or "int8". For a model, a value other
            than "float32" decodes with a copy from `tf_bigmodels.models.compress_weights`; a
            SavedModel keeps the weights it was exported with, and any other value is refused.
            Defaults to None.

    Returns:
        `(generator, tokenizer)`; the tokenizer is None for a SavedModel.

    Example:

    >>> from tf_bigmodels.models import GPTModel
    >>> GPTModel(258, 16, 2, 32, 1, max_length=8).save("tiny.keras")
    >>> generator, tokenizer = load_generator("tiny.keras", weights="int8")
    >>> type(generator).__name__, type(tokenizer).__name__
    ('CompressedGPTModel', 'ByteTokenizer')
    """
    if weights is not None:
        _checks.one_of("weights", weights, WEIGHTS)
    if isinstance(source, GPTModel):
        return compress_weights(source, weights or "float32"), tokenizer or ByteTokenizer()
    path = os.fspath(source)
    run = RunDirectory(path)
    if run.exists():
        path = run.newest_export() or os.fspath(run.model)
        if not os.path.exists(path):
            raise ValueError(
                f"`source`={os.fspath(source)!r} is a run directory with no SavedModel or final "
                "model yet (`tf-bigmodels generate` also reads its newest checkpoint)."
            )
        if tokenizer is None and run.tokenizer.is_dir():
            tokenizer = load_saved_tokenizer(run.tokenizer)
    if path.endswith(".keras"):
        model = keras.saving.load_model(path)
        if not isinstance(model, GPTModel):
            raise ValueError(f"`source`={path!r} holds a {type(model).__name__}, not a GPTModel.")
        return compress_weights(model, weights or "float32"), tokenizer or ByteTokenizer()
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
        path = newest_version(path) or path
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
        raise ValueError(
            f"`source`={os.fspath(source)!r} is neither a GPTModel, a .keras file, a "
            f"SavedModel directory, an export directory with numeric versions nor a run "
            "directory."
        )
    loaded = tf.saved_model.load(path)
    if not hasattr(loaded, "decode_steps"):
        raise ValueError(
            f"`source`={path!r} is not a GPT SavedModel of this version of tf_bigmodels (it "
            "has no `decode_steps`); export the GPT again with `export_gpt` or `tf-bigmodels "
            "export`."
        )
    stored = json.loads(loaded.generation_config.numpy()).get("weights", "float32")
    if weights is not None and weights != stored:
        raise ValueError(
            f"`weights` must be None or {stored!r} for the SavedModel {path!r} (exported with "
            f"{stored} weights; export it again to change them), got {weights!r}."
        )
    return loaded, None


def load_saved_tokenizer(directory):
    """The learned tokenizer saved in `directory` (a SentencePiece or a WordPiece one).

    Args:
        directory: str or path-like. What `SentencePieceTokenizer.save` or
            `WordPieceTokenizer.save` wrote.

    Raises:
        ValueError: `directory` holds neither.

    Example:

    >>> WordPieceTokenizer.train(["to be or not to be"], 40, verbose=False).save("vocab")
    >>> type(load_saved_tokenizer("vocab")).__name__
    'WordPieceTokenizer'
    """
    errors = []
    for kind in (SentencePieceTokenizer, WordPieceTokenizer):
        try:
            return kind.load(directory)
        except (OSError, ValueError) as error:
            errors.append(f"{kind.__name__}: {' '.join(str(error).split())}")
    raise ValueError(
        f"`directory`={os.fspath(directory)!r} holds no saved tokenizer ({'; '.join(errors)})."
    )


def stream_text(
    source,
    prompt,
    max_new_tokens,
    *,
    temperature=1.0,
    top_k=None,
    top_p=None,
    seed=None,
    chunk_tokens=16,
    tokenizer=None,
    max_new_chars=None,
):
    """Yields the continuation of `prompt` piece by piece while it is generated.

    Each chunk of `chunk_tokens` tokens is one call of the cached, XLA-compiled decode loop that
    continues the previous one (see the module docstring for contexts longer than `max_length`);
    its text is yielded as soon as its characters are complete. Generation stops at the
    tokenizer's end-of-text token. For the same settings and seed, the joined pieces equal the
    text of one `generate` call whenever `max_new_tokens <= max_length - 1`, and they never
    depend on `chunk_tokens`. A character cut off at the end is dropped.

    Args:
        source: a `GPTModel`, a `.keras` file, a SavedModel directory from `export_gpt` or its
            `export_dir` (the highest version), as in `load_generator`; or the `(generator,
            tokenizer)` pair `load_generator` returned (to load once and stream many times).
        prompt: str. May be empty (generation then starts a new document).
        max_new_tokens: int >= 0, or None with `max_new_chars`. At most this many tokens (bytes
            with the byte tokenizer); any number, the context slides beyond `max_length`. None
            means 4 per character of `max_new_chars` (a UTF-8 character is at most 4 bytes).
        temperature, top_k, top_p, seed: as in `GenerationSettings` (seed None: random).
            Defaults to 1.0, None, None, None.
        chunk_tokens: int > 0. Tokens per decode call. Defaults to 16.
        tokenizer: the model's tokenizer when `source` is a model; ignored for SavedModels.
        max_new_chars: int >= 0 or None. Also stop after this many characters (newlines
            included). Defaults to None.

    Yields:
        str pieces whose concatenation is the generated text.

    Returns:
        When the pieces are exhausted (the generator's return value, `StopIteration.value`):
        `(new_tokens, ended)`, the number of tokens generated (the end-of-text token not
        counted) and whether the end-of-text token ended the text. Counted as decoded, not from
        the text: a cut-off character or an invalid byte still counts its tokens.

    Example:

    >>> model = GPTModel(258, 16, 2, 32, 1, max_length=16)  # untrained: random bytes
    >>> pieces = list(stream_text(model, "To be", 8, seed=1, chunk_tokens=4))
    >>> all(isinstance(piece, str) for piece in pieces)
    True
    """
    settings, max_new_chars = _settings(
        max_new_tokens, max_new_chars, temperature, top_k, top_p, seed
    )
    chunk_tokens = _checks.integer("chunk_tokens", chunk_tokens, low=1)
    decoder = _decoder(source, tokenizer)
    texts = _Texts(decoder, 1, max_new_chars)
    new_tokens, ended = 0, [False]
    for new_ids, ended in _token_chunks(decoder, prompt, settings, 1, chunk_tokens):
        new_tokens += len(new_ids[0])
        pieces = texts.add(new_ids, ended)
        if pieces[0]:
            yield pieces[0]
        if texts.complete():
            return new_tokens, ended[0]
    last = texts.finish()[0]
    if last:
        yield last
    return new_tokens, ended[0]


def generate_texts(
    source,
    prompt,
    max_new_tokens,
    *,
    num_samples=1,
    temperature=1.0,
    top_k=None,
    top_p=None,
    seed=None,
    tokenizer=None,
    max_new_chars=None,
):
    """`num_samples` continuations of `prompt`, decoded together as the rows of one batch.

    The same decoding as `stream_text` (windows, end token, trimming of a cut-off character),
    without the pieces: sample 1 is the text `stream_text` gives for the same arguments, and the
    samples differ from each other because each copy of the prompt folds its number into the
    random key.

    Args:
        source, prompt, max_new_tokens, temperature, top_k, top_p, seed, tokenizer,
            max_new_chars: as in `stream_text`.
        num_samples: int >= 1. Defaults to 1.

    Returns:
        A list of `num_samples` strings.

    Example:

    >>> model = GPTModel(258, 16, 2, 32, 1, max_length=16)
    >>> texts = generate_texts(model, "To be", 8, num_samples=3, seed=1)
    >>> len(texts), all(isinstance(text, str) for text in texts)
    (3, True)
    """
    settings, max_new_chars = _settings(
        max_new_tokens, max_new_chars, temperature, top_k, top_p, seed
    )
    num_samples = _checks.integer("num_samples", num_samples, low=1)
    decoder = _decoder(source, tokenizer)
    texts = _Texts(decoder, num_samples, max_new_chars)
    # One window at a time: a chunk per window is the fewest decode calls.
    for new_ids, ended in _token_chunks(decoder, prompt, settings, num_samples, decoder.max_length):
        texts.add(new_ids, ended)
        if texts.complete():
            break
    texts.finish()
    return texts.emitted


def _settings(max_new_tokens, max_new_chars, temperature, top_k, top_p, seed):
    """The checked `GenerationSettings` and `max_new_chars`; tokens default to 4 per character."""
    max_new_chars = _checks.integer("max_new_chars", max_new_chars, low=0, none_ok=True)
    if max_new_tokens is None and max_new_chars is not None:
        max_new_tokens = _MAX_TOKENS_PER_CHAR * max_new_chars
    settings = GenerationSettings(
        max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed
    )
    return settings, max_new_chars


class _Texts:
    """The text of each row so far: what was emitted, and what waits for a complete character."""

    def __init__(self, decoder, rows, max_new_chars):
        self._decoder, self._max_chars = decoder, max_new_chars
        self._ids = [[] for _ in range(rows)]
        self._emitted = ["" for _ in range(rows)]
        self._ended = [False] * rows

    def add(self, new_ids, ended):
        """Adds each row's new ids; returns each row's new complete text."""
        pieces = []
        for row, (ids, end) in enumerate(zip(new_ids, ended)):
            self._ids[row] += ids
            self._ended[row] = self._ended[row] or end
            text = self._decoder.detokenize(self._ids[row]).rstrip(_REPLACEMENT)
            pieces.append(self._emit(row, text))
        return pieces

    def finish(self):
        """Each row's last piece: the rest of its text, a character cut off at the end dropped."""
        return [
            self._emit(row, self._decoder.detokenize(ids).rstrip(_REPLACEMENT))
            for row, ids in enumerate(self._ids)
        ]

    @property
    def emitted(self):
        """Each row's text so far."""
        return list(self._emitted)

    def complete(self):
        """Whether every row ended or reached `max_new_chars`."""
        return all(
            ended or (self._max_chars is not None and len(text) >= self._max_chars)
            for ended, text in zip(self._ended, self._emitted)
        )

    def _emit(self, row, text):
        if self._max_chars is not None:  # cut, and never end on an invalid byte's U+FFFD
            text = text[: self._max_chars].rstrip(_REPLACEMENT)
        emitted = self._emitted[row]
        if len(text) <= len(emitted) or not text.startswith(emitted):
            return ""
        self._emitted[row] = text
        return text[len(emitted) :]


def _token_chunks(decoder, prompt, settings, rows, chunk_tokens):
    """Yields `(new ids of each row, whether each row ended)` chunk by chunk, window by window."""
    max_length = decoder.max_length
    history = [list(decoder.tokenize(prompt))] * rows
    remaining, window = settings.max_new_tokens, 0
    # The first window is one `generate` call when that can hold every token.
    slide = max(1, max_length // 2)  # the tokens a sliding context keeps
    keep = max_length - remaining if remaining < max_length else slide
    ended = [False] * rows
    while remaining > 0 and not all(ended):
        contexts = [ids[-keep:] for ids in history]
        count = min(remaining, max_length - max(map(len, contexts)))
        if count < 1:
            raise ValueError(f"`max_new_tokens` must be 0 for a model of max_length={max_length}.")
        window_settings = dataclasses.replace(
            settings, max_new_tokens=count, end_id=decoder.end_id, pad_id=decoder.pad_id
        ).as_tensors()
        with _in_graph_checks():
            state = decoder.start(contexts, window_settings, window)
        done = 0
        while done < count and not all(ended):
            stop = min(done + chunk_tokens, count)
            with _in_graph_checks():
                state = decoder.steps(state, stop, window_settings)
            tokens, lengths = state["tokens"].numpy(), state["new_lengths"].numpy()
            new_ids = []
            for row in range(rows):
                ids = [] if ended[row] else tokens[row, done : lengths[row]].tolist()
                if ids and ids[-1] == decoder.end_id:
                    ids, ended[row] = ids[:-1], True
                new_ids.append(ids)
                history[row] = history[row] + ids
            done = int(state["step"])
            yield new_ids, list(ended)
            if done < stop:  # the loop stopped early: every row ended
                break
        remaining -= count
        keep, window = slide, window + 1


@contextlib.contextmanager
def _in_graph_checks():
    """Turns a failed in-graph check of the decode functions (a SavedModel checks its inputs in
    its graph) into a ValueError that says what was wrong, as the checks in Python do."""
    try:
        yield
    except tf.errors.InvalidArgumentError as error:
        raise ValueError(_graph_error(error)) from None


def _graph_error(error):
    """The part of an in-graph check's error that says what was wrong (it names the input)."""
    named = re.search(r"`[^`]+`[^\]\n]*", error.message)
    return named.group(0).strip() if named else " ".join(error.message.split())


def _decoder(source, tokenizer):
    generator, tokenizer = (
        source if isinstance(source, tuple) else load_generator(source, tokenizer)
    )
    if isinstance(generator, GPTModel):
        return _ModelDecoder(generator, tokenizer)
    return _SavedModelDecoder(generator)


class _ModelDecoder:
    """Decoding with an in-memory `GPTModel` and its tokenizer."""

    def __init__(self, model, tokenizer):
        self.max_length = model.max_length
        self.end_id, self.pad_id = tokenizer.end_id, tokenizer.pad_id  # end_id None: never ends
        self._tokenizer = tokenizer
        self._start = generation.start_function(model)
        self._steps = generation.steps_function(model)
        self.batch_steps = generation.batch_steps_function(model)

    def tokenize(self, prompt):
        ids = self._tokenizer.tokenize([prompt]).to_list()[0]
        return ids or [self.end_id]  # as in the SavedModel: an empty prompt starts a document

    def detokenize(self, ids):
        return self._tokenizer.detokenize(tf.constant(ids, tf.int32)).numpy().decode()

    def start(self, contexts, settings, window):
        prompts = tf.ragged.constant(contexts, tf.int32, ragged_rank=1)
        return self._start(prompts, settings, tf.constant(window))[1]

    def steps(self, state, stop, settings):
        return self._steps(state, tf.constant(stop), settings)


class _SavedModelDecoder(_ModelDecoder):
    """Decoding with the functions of a SavedModel written by `export_gpt`."""

    def __init__(self, loaded):
        config = json.loads(loaded.generation_config.numpy())
        self.max_length = config["max_length"]
        self.end_id, self.pad_id = config["end_id"], config["pad_id"]
        self._loaded = loaded
        self._start, self._steps = loaded.decode_start, loaded.decode_steps
        # Exports older than batched decoding lack it: they decode one request at a time.
        self.batch_steps = getattr(loaded, "decode_batch_steps", None)

    def tokenize(self, prompt):
        return self._loaded.tokenize(tf.constant([prompt])).to_list()[0]

    def detokenize(self, ids):
        ragged = tf.ragged.constant([ids], tf.int32, ragged_rank=1)
        return self._loaded.detokenize(ragged).numpy()[0].decode()
