"""LiteRT export: a `.tflite` file, its tokenizer beside it, and a JSON file describing both."""

import json
import os
import tempfile

import tf_bigmodels
from tf_bigmodels import _checks
from tf_bigmodels.litert import _graph
from tf_bigmodels.models import BERTClassifier, BERTEncoder, BERTPretrainer, GPTModel
from tf_bigmodels.models.compression import weights_format
from tf_bigmodels.tokenizers import (
    ByteTokenizer,
    SentencePieceTokenizer,
    WordPieceTokenizer,
    check_tokenizer,
)

WEIGHTS = ("float32", "int8")
FORMAT = "tf_bigmodels.litert"
FORMAT_VERSION = 1


def description_path(path):
    """The JSON description beside a `.tflite` file: `model.tflite` -> `model.json`.

    Example:

    >>> description_path("out/gpt.tflite")
    'out/gpt.json'
    """
    return os.path.splitext(os.fspath(path))[0] + ".json"


def export_gpt_litert(model, tokenizer, path, *, weights="float32"):
    """Writes a `GPTModel` as a LiteRT file with `prefill`, `decode` and `logits` signatures.

    Beside `path` (`NAME.tflite`) go `NAME.json`, which describes the signatures, the key/value
    cache, the special ids, the weight format and the tokenizer, and the tokenizer in a form any
    runtime can read: the SentencePiece model file (`NAME.sentencepiece.model`) or, for the byte
    tokenizer, its rule in the JSON. Every file is written to a temporary name and renamed into
    place, the JSON last, so an interrupted export leaves no description of a partial file.

    Signatures (builtin ops only; batch and lengths are dynamic, `B` rows, `L` layers, `h` heads,
    `hd = d_model / h`):

    - `prefill(token_ids int32 [B, P], padding_mask int32 [B, P])`: left-padded prompts (mask 1
      on real tokens). Returns `logits` float32 `[B, vocab]` (the next token after each prompt)
      and `key_i`, `value_i` float32 `[B, h, P, hd]` for i < L: the cache of the prompt.
    - `decode(token_ids int32 [B, 1], positions int32 [B, 1], key_mask int32 [B, T], key_i,
      value_i float32 [B, h, T, hd])`: one token per row at absolute `positions` (counted from
      the row's first real token) against a cache of T slots, of which `key_mask` marks the
      written ones. Returns `logits` `[B, vocab]` and only the NEW rows `new_key_i`, `new_value_i`
      `[B, h, 1, hd]`; the caller writes them into its cache at the next slot and sets that
      slot of `key_mask`.
    - `logits(token_ids int32 [B, S])`: float32 logits `[B, S, vocab]` of whole sequences
      (scoring, validation loss).

    Weights: "float32", or "int8" (dynamic-range quantization: int8 weights with per-row scales,
    activations quantized on the fly; about a quarter of the bytes read per token). The tied
    token embedding is stored once either way.

    Args:
        model: a float32 `GPTModel` (not a `compress_weights` copy; pass `weights` instead).
        tokenizer: its `ByteTokenizer` or `SentencePieceTokenizer`.
        path: str or path-like ending in `.tflite`. Its directory is created if missing.
        weights: "float32" or "int8". Defaults to "float32".

    Returns:
        The path of the `.tflite` file (str).

    Example:

    >>> model = GPTModel(258, 32, 2, 64, 1, rate=0.0, max_length=32)
    >>> path = export_gpt_litert(model, ByteTokenizer(), "out/gpt.tflite")
    ... # doctest: +SKIP
    >>> sorted(os.listdir("out"))  # doctest: +SKIP
    ['gpt.json', 'gpt.tflite']
    """
    if not isinstance(model, GPTModel):
        raise TypeError(f"`model` must be a GPTModel, got {type(model).__name__}.")
    check_tokenizer(tokenizer)
    if not isinstance(tokenizer, (ByteTokenizer, SentencePieceTokenizer)):
        raise TypeError(
            f"`tokenizer` must be a ByteTokenizer or SentencePieceTokenizer (a tokenizer a "
            f"runtime without TensorFlow can rebuild), got {type(tokenizer).__name__}."
        )
    weights = _check_arguments(model, path, weights)
    graph = _graph.GPTGraph(model, weights)
    head_dim = model.d_model // model.num_heads
    description = {
        "model": "gpt",
        "vocab_size": model.vocab_size,
        "max_length": model.max_length,
        "d_model": model.d_model,
        "num_layers": model.num_layers,
        "num_heads": model.num_heads,
        "head_dim": head_dim,
        "signatures": {
            "prefill": {
                "inputs": {
                    "token_ids": "int32 [batch, prompt_length], prompts left-padded",
                    "padding_mask": "int32 [batch, prompt_length], 1 = real token",
                },
                "outputs": {
                    "logits": "float32 [batch, vocab_size], next token after each prompt",
                    "key_{i}, value_{i}": "float32 [batch, num_heads, prompt_length, head_dim]",
                },
            },
            "decode": {
                "inputs": {
                    "token_ids": "int32 [batch, 1]",
                    "positions": "int32 [batch, 1], position from the row's first real token",
                    "key_mask": "int32 [batch, cache_length], 1 = slot holds an earlier token",
                    "key_{i}, value_{i}": "float32 [batch, num_heads, cache_length, head_dim]",
                },
                "outputs": {
                    "logits": "float32 [batch, vocab_size]",
                    "new_key_{i}, new_value_{i}": "float32 [batch, num_heads, 1, head_dim]",
                },
            },
            "logits": {
                "inputs": {"token_ids": "int32 [batch, length], length <= max_length"},
                "outputs": {"logits": "float32 [batch, length, vocab_size]"},
            },
        },
        "cache": {
            "layout": "one key and one value input per layer i < num_layers: key_{i}, "
            "value_{i}, float32 [batch, num_heads, cache_length, head_dim]",
            "prefill": "copy prefill's key_{i}/value_{i} into slots 0 .. prompt_length - 1 and "
            "set key_mask to padding_mask there",
            "decode": "decode returns only the new rows; write new_key_{i}/new_value_{i} at the "
            "next free slot and set key_mask at that slot to 1 before the next step",
            "cache_length": f"any length up to max_length ({model.max_length})",
        },
        "special_ids": {"end_id": tokenizer.end_id, "pad_id": tokenizer.pad_id},
    }
    return _write(graph, weights, path, description, tokenizer)


def export_bert_litert(model, tokenizer, path, *, weights="float32"):
    """Writes a BERT encoder (or classifier) as a LiteRT file with `encode` (and `classify`).

    Signatures (builtin ops only; batch and length dynamic, length <= `max_length`):

    - `encode(token_ids, segment_ids, padding_mask: int32 [B, S])` -> `sequence_output`
      float32 `[B, S, d_model]`, `pooled_output` `[B, d_model]`.
    - `classify` (a `BERTClassifier` only), same inputs -> `logits` and `probabilities` float32
      `[B, num_classes]`.

    Beside `path` go `NAME.json` (signatures, special ids, weights, tokenizer settings) and the
    WordPiece vocabulary `NAME.vocab.txt`, one token per line (token i has id i).

    Args:
        model: a `BERTEncoder`, `BERTPretrainer` (its encoder is exported) or `BERTClassifier`.
        tokenizer: its `WordPieceTokenizer`.
        path: str or path-like ending in `.tflite`.
        weights: "float32" or "int8". Defaults to "float32".

    Returns:
        The path of the `.tflite` file (str).

    Example:

    >>> encoder = BERTEncoder(vocab_size=6, d_model=32, num_heads=2, dff=64, num_layers=1)
    >>> tokenizer = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hi"])
    >>> path = export_bert_litert(BERTClassifier(encoder, 3), tokenizer, "out/bert.tflite")
    ... # doctest: +SKIP
    >>> sorted(os.listdir("out"))  # doctest: +SKIP
    ['bert.json', 'bert.tflite', 'bert.vocab.txt']
    """
    if not isinstance(model, (BERTEncoder, BERTPretrainer, BERTClassifier)):
        raise TypeError(
            f"`model` must be a BERTEncoder, BERTPretrainer or BERTClassifier, got "
            f"{type(model).__name__}."
        )
    check_tokenizer(tokenizer, WordPieceTokenizer)
    encoder = model if isinstance(model, BERTEncoder) else model.encoder
    if not model.built:
        shape = {"token_ids": (None, None), "segment_ids": (None, None)}
        model.build({**shape, "padding_mask": (None, None)})
    weights = _check_arguments(encoder, path, weights)
    classifier = model.output_dense if isinstance(model, BERTClassifier) else None
    graph = _graph.BERTGraph(encoder, classifier)
    inputs = {
        name: "int32 [batch, length], length <= max_length"
        for name in ("token_ids", "segment_ids", "padding_mask")
    }
    signatures = {
        "encode": {
            "inputs": inputs,
            "outputs": {
                "sequence_output": "float32 [batch, length, d_model]",
                "pooled_output": "float32 [batch, d_model]",
            },
        }
    }
    if classifier is not None:
        signatures["classify"] = {
            "inputs": inputs,
            "outputs": {
                "logits": "float32 [batch, num_classes]",
                "probabilities": "float32 [batch, num_classes]",
            },
        }
    description = {
        "model": "bert_classifier" if classifier is not None else "bert_encoder",
        "vocab_size": encoder.vocab_size,
        "max_length": encoder.max_length,
        "d_model": encoder.d_model,
        "num_layers": encoder.num_layers,
        "num_heads": encoder.num_heads,
        "signatures": signatures,
        "special_ids": {
            "pad_id": tokenizer.pad_id,
            "unk_id": tokenizer.unk_id,
            "cls_id": tokenizer.cls_id,
            "sep_id": tokenizer.sep_id,
            "mask_id": tokenizer.mask_id,
        },
    }
    if classifier is not None:
        description["num_classes"] = model.num_classes
    return _write(graph, weights, path, description, tokenizer)


def export_litert(model, tokenizer, path, *, weights="float32"):
    """`export_gpt_litert` for a `GPTModel`, `export_bert_litert` for the BERT models.

    The one entry point for the command line (`tf-bigmodels export SOURCE --format litert`).

    Args:
        model: a `GPTModel`, `BERTEncoder`, `BERTPretrainer` or `BERTClassifier`.
        tokenizer: the model's tokenizer.
        path: str or path-like ending in `.tflite`.
        weights: "float32" or "int8". Defaults to "float32".

    Returns:
        The path of the `.tflite` file (str).

    Example:

    >>> model = GPTModel(258, 32, 2, 64, 1, rate=0.0, max_length=32)
    >>> export_litert(model, ByteTokenizer(), "out/gpt.bin")
    Traceback (most recent call last):
    ...
    ValueError: `path` must end in '.tflite', got 'out/gpt.bin'.
    """
    if isinstance(model, GPTModel):
        return export_gpt_litert(model, tokenizer, path, weights=weights)
    return export_bert_litert(model, tokenizer, path, weights=weights)


def _check_arguments(model, path, weights):
    weights = _checks.one_of("weights", weights, WEIGHTS)
    if not os.fspath(path).endswith(".tflite"):
        raise ValueError(f"`path` must end in '.tflite', got {os.fspath(path)!r}.")
    if isinstance(model, GPTModel):
        if weights_format(model) != "float32":
            raise ValueError(
                f"`model` must hold float32 weights (pass the trained model and `weights`), "
                f"got a {weights_format(model)} copy from compress_weights."
            )
        if not model.built:
            model.build((None, None))
    return weights


def _tokenizer_files(tokenizer, stem):
    """`(description, {file name: bytes})` of a tokenizer, for a runtime without TensorFlow."""
    if isinstance(tokenizer, ByteTokenizer):
        return {
            "kind": "byte",
            "rule": "token i < 256 is the byte i of the UTF-8 text; end_id and pad_id are "
            "special and spell nothing; invalid UTF-8 decodes to U+FFFD",
            "vocab_size": tokenizer.vocab_size,
        }, {}
    if isinstance(tokenizer, SentencePieceTokenizer):
        name = f"{stem}.sentencepiece.model"
        return {
            "kind": "sentencepiece",
            "file": name,
            "rule": "a standard SentencePiece model; decoding drops end_id and pad_id",
        }, {name: tokenizer.model_proto}
    name = f"{stem}.vocab.txt"
    vocabulary = "\n".join(tokenizer.vocabulary) + "\n"
    return {
        "kind": "wordpiece",
        "file": name,
        "lowercase": tokenizer.lowercase,
        "rule": "BERT WordPiece: lower-case and strip accents if lowercase, split on whitespace "
        "and punctuation (each CJK character a word), longest-match wordpieces with '##' "
        "continuations, [UNK] for a word that cannot be split; [CLS] text [SEP]",
    }, {name: vocabulary.encode("utf-8")}


def _write(graph, weights, path, description, tokenizer):
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    stem = os.path.splitext(os.path.basename(path))[0]
    content = _graph.convert(graph, weights)
    tokenizer_description, files = _tokenizer_files(tokenizer, stem)
    description = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tflite": os.path.basename(path),
        "weights": weights,
        **description,
        "tokenizer": tokenizer_description,
        "tf_bigmodels_version": tf_bigmodels.__version__,
    }
    files[os.path.basename(path)] = content
    files[os.path.basename(description_path(path))] = json.dumps(
        description, indent=2, ensure_ascii=False
    ).encode("utf-8")
    os.makedirs(directory, exist_ok=True)
    for name, data in files.items():  # the description last (dicts keep insertion order)
        _write_atomically(os.path.join(directory, name), data)
    return path


def _write_atomically(path, data):
    handle, temporary = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", dir=os.path.dirname(path)
    )
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(temporary, 0o666 & ~mask)  # mkstemp makes it 0600
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
