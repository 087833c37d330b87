"""What int8 costs: validation loss and greedy text of an int8 LiteRT export against float32."""

import numpy as np

from tf_bigmodels.litert.runner import LiteRTGenerator


def validation_loss(generator, token_ids, windows, *, batch_size=8):
    """Mean next-token cross-entropy of an export over `windows` evenly spaced windows.

    Each window is `max_length` tokens of `token_ids` (plus the next one as the last target),
    scored with the export's `logits` signature.

    Args:
        generator: a `LiteRTGenerator`.
        token_ids: 1-D int array, the validation text's ids (longer than `max_length`).
        windows: int >= 1. Number of windows.
        batch_size: int. Windows per call. Defaults to 8.

    Returns:
        float, nats per token.

    Example:

    >>> validation_loss(generator, ids, 8)  # doctest: +SKIP
    """
    token_ids = np.asarray(token_ids, np.int32)
    length = generator.max_length
    if token_ids.size <= length:
        raise ValueError(
            f"`token_ids` must be longer than max_length={length}, got {token_ids.size} ids."
        )
    starts = np.linspace(0, token_ids.size - length - 1, windows).astype(int)
    losses = []
    for first in range(0, windows, batch_size):
        chunk = starts[first : first + batch_size]
        x = np.stack([token_ids[s : s + length] for s in chunk])
        y = np.stack([token_ids[s + 1 : s + length + 1] for s in chunk])
        logits = generator.logits(x).astype(np.float64)
        top = logits.max(axis=-1, keepdims=True)
        log_z = np.log(np.exp(logits - top).sum(axis=-1)) + top[..., 0]
        picked = np.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
        losses.append(log_z - picked)
    return float(np.mean(np.concatenate(losses)))


def greedy_ids(generator, prompt_ids, new_tokens):
    """The greedy continuation of `prompt_ids`, `new_tokens` long, past the context if need be.

    Windows as `tf_bigmodels.export.stream_text` decodes them: one decode when the tokens fit
    in the context (the prompt keeps its last `max_length - new_tokens` ids); otherwise each
    window keeps the last `max_length // 2` ids of the text so far and decodes until the
    context is full. Stops after the end token.

    Args:
        generator: a `LiteRTGenerator`.
        prompt_ids: list of int, at least one id.
        new_tokens: int >= 0.

    Returns:
        list of int, the new ids (the end token last if one was decoded).

    Example:

    >>> len(greedy_ids(generator, [104, 105], 200))  # doctest: +SKIP
    200
    """
    max_length = generator.max_length
    slide = max(1, max_length // 2)
    keep = max_length - new_tokens if new_tokens < max_length else slide
    history, new = list(prompt_ids), []
    while len(new) < new_tokens:
        context = history[-keep:]
        count = min(new_tokens - len(new), max_length - len(context))
        window = list(generator.stream_ids(context, count, temperature=0.0))
        new += window
        if window and window[-1] == generator.end_id:
            break
        history += window
        keep = slide
    return new


def compare(float32_path, int8_path, text, *, prompt, new_tokens=200, windows=64):
    """Validation loss of both exports on `text` and where their greedy continuations part.

    Args:
        float32_path: str. The float32 `.tflite` export.
        int8_path: str. The int8 `.tflite` export of the same model.
        text: str. Validation text (tokenized with the export's tokenizer).
        prompt: str. The prompt of the greedy comparison.
        new_tokens: int. Greedy tokens to compare (beyond the context, in the windows of
            `greedy_ids`). Defaults to 200.
        windows: int. Validation windows. Defaults to 64.

    Returns:
        dict with `val_loss` per format, `relative_change` (int8 / float32 - 1),
        `first_difference` (index of the first differing greedy token, None if none), the
        compared token count and both greedy texts.

    Example:

    >>> compare("gpt.tflite", "gpt-int8.tflite", text, prompt="ROMEO:")  # doctest: +SKIP
    """
    generators = {"float32": LiteRTGenerator(float32_path), "int8": LiteRTGenerator(int8_path)}
    ids = generators["float32"].tokenizer.encode(text)
    losses = {w: validation_loss(g, ids, windows) for w, g in generators.items()}
    prompt_ids = generators["float32"].tokenizer.encode(prompt) or [generators["float32"].end_id]
    greedy = {w: greedy_ids(g, prompt_ids, new_tokens) for w, g in generators.items()}
    first = next(
        (i for i, (a, b) in enumerate(zip(greedy["float32"], greedy["int8"])) if a != b),
        None if len(greedy["float32"]) == len(greedy["int8"]) else min(map(len, greedy.values())),
    )
    return {
        "val_loss": losses,
        "relative_change": losses["int8"] / losses["float32"] - 1,
        "windows": windows,
        "new_tokens": new_tokens,
        "first_difference": first,
        "greedy_text": {w: generators[w].tokenizer.decode(tokens) for w, tokens in greedy.items()},
    }
