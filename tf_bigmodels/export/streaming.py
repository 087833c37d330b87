"""Text as it is generated, from an exported SavedModel, a `.keras` file or a `GPTModel`."""

import os
import random

import keras
import tensorflow as tf

from tf_bigmodels.models import GPTModel
from tf_bigmodels.tokenizers import ByteTokenizer

_REPLACEMENT = "\ufffd"  # what the byte tokenizer shows for a character not yet complete


def load_generator(source, tokenizer=None):
    """Loads what `stream_text` generates from and returns it (a `GPTModel` or a loaded SavedModel).

    Args:
        source: a `GPTModel`; the path of a `.keras` file holding one; a SavedModel directory
            written by `export_gpt`; or an `export_dir` with numeric version directories (the
            highest version is loaded).
        tokenizer: unused for SavedModels (they carry their own); for a model, its tokenizer.
            Defaults to None (a `ByteTokenizer`).

    Returns:
        `(generator, tokenizer)`; the tokenizer is None for a SavedModel.

    Example:

    >>> generator, tokenizer = load_generator("exports/gpt")  # doctest: +SKIP
    """
    if isinstance(source, GPTModel):
        return source, tokenizer or ByteTokenizer()
    path = os.fspath(source)
    if path.endswith(".keras"):
        model = keras.saving.load_model(path)
        if not isinstance(model, GPTModel):
            raise ValueError(f"`source`={path!r} holds a {type(model).__name__}, not a GPTModel.")
        return model, tokenizer or ByteTokenizer()
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "saved_model.pb")):
        versions = [int(n) for n in os.listdir(path) if n.isdigit()]
        if versions:
            path = os.path.join(path, str(max(versions)))
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
        raise ValueError(
            f"`source`={os.fspath(source)!r} is neither a GPTModel, a .keras file, a "
            f"SavedModel directory nor an export directory with numeric versions."
        )
    return tf.saved_model.load(path), None


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
):
    """Yields the continuation of `prompt` piece by piece while it is generated.

    Generation runs in chunks of `chunk_tokens` tokens (each chunk one call of the cached,
    XLA-compiled decode loop on the prompt plus the text so far); each chunk's new text is yielded
    as soon as it is complete (a UTF-8 character split across chunks waits for its last byte).
    Generation stops at the tokenizer's end-of-text token. With `temperature=0` the joined pieces
    equal one `generate` call; when sampling, chunk i uses seed `seed + i`, so a seed still
    reproduces the same text (but not the text of a single call).

    Args:
        source: a `GPTModel`, a `.keras` file, a SavedModel directory from `export_gpt` or its
            `export_dir` (the highest version), as in `load_generator`; or the `(generator,
            tokenizer)` pair `load_generator` returned (to load once and stream many times).
        prompt: str. May be empty (generation then starts a new document).
        max_new_tokens: int >= 0. At most this many tokens in total.
        temperature: float >= 0 (0 = greedy). Defaults to 1.0.
        top_k: int >= 0 or None. Defaults to None.
        top_p: float in (0, 1] or None. Defaults to None.
        seed: int in [0, 2**31 - 1] or None (random). Defaults to None.
        chunk_tokens: int > 0. Tokens per decode call. Defaults to 16.
        tokenizer: the model's tokenizer when `source` is a model; ignored for SavedModels.

    Yields:
        str pieces whose concatenation is the generated text.

    Example:

    >>> for piece in stream_text("exports/gpt", "To be", 200, temperature=0.8):  # doctest: +SKIP
    ...     print(piece, end="", flush=True)
    """
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens <= 0:
        raise ValueError(f"`chunk_tokens` must be a positive int, got {chunk_tokens!r}.")
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or (max_new_tokens < 0)
    ):
        raise ValueError(f"`max_new_tokens` must be an int >= 0, got {max_new_tokens!r}.")
    generator, tokenizer = (
        source if isinstance(source, tuple) else load_generator(source, tokenizer)
    )
    step, detokenize = (
        _model_steps(generator, tokenizer, temperature, top_k, top_p)
        if isinstance(generator, GPTModel)
        else _saved_model_steps(generator, temperature, top_k, top_p)
    )
    seed = random.randrange(2**31) if seed is None else seed
    context = _prompt_ids(generator, tokenizer, prompt)
    generated, emitted, chunk = [], "", 0
    while len(generated) < max_new_tokens:
        count = min(chunk_tokens, max_new_tokens - len(generated))
        new = step(context + generated, count, (seed + chunk) % 2**31)
        generated += new
        finished = len(new) < count
        text = detokenize(generated)
        stable = text if finished else text.rstrip(_REPLACEMENT)
        if len(stable) > len(emitted) and stable.startswith(emitted):
            yield stable[len(emitted) :]
            emitted = stable
        if finished:
            break
        chunk += 1
    text = detokenize(generated)
    if len(text) > len(emitted):
        yield text[len(emitted) :]


def _prompt_ids(generator, tokenizer, prompt):
    if isinstance(generator, GPTModel):
        ids = tokenizer.tokenize([prompt]).to_list()[0]
        return ids or [tokenizer.end_id]  # as in the SavedModel: an empty prompt starts a document
    return generator.tokenize(tf.constant([prompt])).to_list()[0]


def _model_steps(model, tokenizer, temperature, top_k, top_p):
    def step(ids, count, seed):
        out = model.generate(
            [ids],
            count,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            end_id=tokenizer.end_id,
            pad_id=tokenizer.pad_id,
        )
        kept = min(len(ids), model.max_length - count)  # the prompt after left truncation
        return out.to_list()[0][kept:]

    def detokenize(ids):
        return tokenizer.detokenize(tf.constant(ids, tf.int32)).numpy().decode()

    return step, detokenize


def _saved_model_steps(loaded, temperature, top_k, top_p):
    settings = (
        tf.constant(temperature, tf.float32),
        tf.constant(top_k or 0, tf.int32),
        tf.constant(1.0 if top_p is None else top_p, tf.float32),
    )

    def step(ids, count, seed):
        new, lengths = loaded.generate_tokens(
            tf.ragged.constant([ids], tf.int32),
            tf.constant(count, tf.int32),
            *settings,
            tf.constant(seed, tf.int32),
        )
        return new.numpy()[0, : int(lengths[0])].tolist()

    def detokenize(ids):
        return (
            loaded.detokenize(tf.ragged.constant([ids], tf.int32, ragged_rank=1))
            .numpy()[0]
            .decode()
        )

    return step, detokenize
