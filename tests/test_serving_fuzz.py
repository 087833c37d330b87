"""Hostile requests against every exported signature, sent to a serving process of their own.

A tiny GPT, BERT pre-trainer and BERT classifier are exported; a fresh interpreter that imports
only `tensorflow` and `tensorflow_text` loads each SavedModel and calls every signature with
mismatched batches, empty batches, inputs of the wrong rank and out-of-range values. The process
must survive every call: a request may fail, but only with an `InvalidArgumentError` that names
the input, and an empty batch must give an empty result. When a call kills the process, the
runner records it and starts a new process for the remaining calls, so one crash does not hide
the others.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

# The serving process: calls each case, printing START before and RESULT after it, so that the
# case that killed the process is the one with a START and no RESULT.
_WORKER = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the tokenizer ops)
    def tensor(dtype, value):  # {"zeros": shape} stands for an empty array of that shape
        if isinstance(value, dict):
            return tf.zeros(value["zeros"], dtype)
        return tf.constant(value, dtype)

    loaded = {}
    for index, path, signature, inputs in json.loads(sys.stdin.read()):
        print("START", index, flush=True)
        if path not in loaded:
            loaded[path] = tf.saved_model.load(path)
        function = loaded[path].signatures[signature]
        try:
            outputs = function(**{k: tensor(dtype, v) for k, (dtype, v) in inputs.items()})
            result = {"ok": True, "shapes": {k: v.shape.as_list() for k, v in outputs.items()}}
        except tf.errors.InvalidArgumentError as error:
            result = {"ok": False, "type": "InvalidArgumentError", "message": error.message}
        except Exception as error:
            result = {"ok": False, "type": type(error).__name__, "message": str(error)}
        print("RESULT", json.dumps([index, result]), flush=True)
    assert not any(name.startswith("tf_bigmodels") for name in sys.modules)
""")

VOCAB, MAX_LENGTH = 258, 24  # the GPT's byte vocabulary and position table
_STRINGS = ["a cat", "你好"]


def _s(value):
    return ("string", value)


def _i(value):
    return ("int32", value)


def _f(value):
    return ("float32", value)


def _generate_inputs(**changes):
    inputs = {
        "prompts": _s(_STRINGS),
        "max_new_tokens": _i(3),
        "temperature": _f(1.0),
        "top_k": _i(0),
        "top_p": _f(1.0),
        "seed": _i(1),
    }
    return {**inputs, **changes}


# (id, export, signature, inputs, expected): expected is ("error", names that the message must
# contain) or ("empty", the output whose first dimension must be 0).
CASES = (
    [
        # BERT pre-trainer
        (
            "pre-default-empty",
            "pretrainer",
            "serving_default",
            {"text": _s([])},
            ("empty", "pooled_output"),
        ),
        (
            "pre-default-scalar",
            "pretrainer",
            "serving_default",
            {"text": _s("a cat")},
            ("error", ["text"]),
        ),
        (
            "pre-default-rank2",
            "pretrainer",
            "serving_default",
            {"text": _s([_STRINGS])},
            ("error", ["text"]),
        ),
        (
            "pre-pair-mismatch-2-1",
            "pretrainer",
            "encode_pair",
            {"text": _s(_STRINGS), "text_pair": _s(["the mat"])},
            ("error", ["text", "text_pair", "batch size"]),
        ),
        (
            "pre-pair-mismatch-1-3",
            "pretrainer",
            "encode_pair",
            {"text": _s(["x"]), "text_pair": _s(["a", "bb bb", "你好世界 cat"])},
            ("error", ["text", "text_pair", "batch size"]),
        ),
        (
            "pre-pair-mismatch-0-2",
            "pretrainer",
            "encode_pair",
            {"text": _s([]), "text_pair": _s(_STRINGS)},
            ("error", ["text", "text_pair", "batch size"]),
        ),
        (
            "pre-pair-empty",
            "pretrainer",
            "encode_pair",
            {"text": _s([]), "text_pair": _s([])},
            ("empty", "pooled_output"),
        ),
        (
            "pre-pair-rank2",
            "pretrainer",
            "encode_pair",
            {"text": _s(_STRINGS), "text_pair": _s([_STRINGS])},
            ("error", ["text_pair"]),
        ),
        (
            "pre-pair-scalar",
            "pretrainer",
            "encode_pair",
            {"text": _s("a cat"), "text_pair": _s(["x"])},
            ("error", ["text"]),
        ),
        ("pre-fill-empty", "pretrainer", "fill_mask", {"text": _s([])}, ("empty", "tokens")),
        (
            "pre-fill-scalar",
            "pretrainer",
            "fill_mask",
            {"text": _s("a [MASK]")},
            ("error", ["text"]),
        ),
        (
            "pre-fill-rank2",
            "pretrainer",
            "fill_mask",
            {"text": _s([["a [MASK]"]])},
            ("error", ["text"]),
        ),
        # BERT classifier
        (
            "cls-empty",
            "classifier",
            "serving_default",
            {"text": _s([])},
            ("empty", "probabilities"),
        ),
        ("cls-scalar", "classifier", "serving_default", {"text": _s("a cat")}, ("error", ["text"])),
        (
            "cls-rank2",
            "classifier",
            "serving_default",
            {"text": _s([_STRINGS])},
            ("error", ["text"]),
        ),
        # GPT
        (
            "gpt-default-empty",
            "gpt",
            "serving_default",
            {"prompts": _s([])},
            ("empty", "completions"),
        ),
        (
            "gpt-default-scalar",
            "gpt",
            "serving_default",
            {"prompts": _s("a")},
            ("error", ["prompts"]),
        ),
        (
            "gpt-default-rank2",
            "gpt",
            "serving_default",
            {"prompts": _s([_STRINGS])},
            ("error", ["prompts"]),
        ),
        (
            "gpt-generate-empty",
            "gpt",
            "generate",
            _generate_inputs(prompts=_s([])),
            ("empty", "completions"),
        ),
        (
            "gpt-generate-rank2",
            "gpt",
            "generate",
            _generate_inputs(prompts=_s([_STRINGS])),
            ("error", ["prompts"]),
        ),
    ]
    + [
        (
            f"gpt-generate-{name}-rank1",
            "gpt",
            "generate",
            _generate_inputs(**{name: (dtype, [value])}),
            ("error", [name]),
        )
        for name, (dtype, value) in _generate_inputs().items()
        if name != "prompts"
    ]
    + [
        (
            f"gpt-generate-{name}={value}",
            "gpt",
            "generate",
            _generate_inputs(**{name: (dtype, value)}),
            ("error", [name]),
        )
        for name, dtype, value in [
            ("max_new_tokens", "int32", -1),
            ("max_new_tokens", "int32", MAX_LENGTH),
            ("max_new_tokens", "int32", 2**31 - 1),
            ("temperature", "float32", -1.0),
            ("temperature", "float32", float("nan")),
            ("temperature", "float32", float("inf")),
            ("top_k", "int32", -3),
            ("top_p", "float32", 0.0),
            ("top_p", "float32", 1.5),
        ]
    ]
    + [
        (
            "gpt-logits-empty",
            "gpt",
            "logits",
            {"token_ids": _i({"zeros": [0, 4]})},
            ("empty", "logits"),
        ),
        (
            "gpt-logits-negative",
            "gpt",
            "logits",
            {"token_ids": _i([[1, -1]])},
            ("error", ["token_ids"]),
        ),
        (
            "gpt-logits-too-large",
            "gpt",
            "logits",
            {"token_ids": _i([[1, VOCAB]])},
            ("error", ["token_ids"]),
        ),
        (
            "gpt-logits-int-max",
            "gpt",
            "logits",
            {"token_ids": _i([[2**31 - 1]])},
            ("error", ["token_ids"]),
        ),
        (
            "gpt-logits-too-long",
            "gpt",
            "logits",
            {"token_ids": _i([[1] * (MAX_LENGTH + 1)])},
            ("error", ["token_ids"]),
        ),
        ("gpt-logits-rank1", "gpt", "logits", {"token_ids": _i([1, 2])}, ("error", ["token_ids"])),
        (
            "gpt-logits-rank3",
            "gpt",
            "logits",
            {"token_ids": _i([[[1, 2]]])},
            ("error", ["token_ids"]),
        ),
    ]
)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    from tf_bigmodels.export import export_bert, export_gpt
    from tf_bigmodels.models import BERTClassifier, BERTEncoder, BERTPretrainer, GPTModel
    from tf_bigmodels.tokenizers import ByteTokenizer, WordPieceTokenizer

    tf.keras.utils.set_random_seed(3)
    directory = tmp_path_factory.mktemp("fuzz")
    tokenizer = WordPieceTokenizer.train(
        ["The cat sat on the mat.", "A dog ran in the park.", "你好世界"] * 20,
        vocab_size=60,
        verbose=False,
    )
    encoder = BERTEncoder(tokenizer.vocab_size, 16, 2, 32, 1, rate=0.0, max_length=16)
    gpt = GPTModel(VOCAB, 16, 2, 32, 1, rate=0.0, max_length=MAX_LENGTH)
    return {
        "pretrainer": export_bert(BERTPretrainer(encoder), tokenizer, directory / "pre", top_k=2),
        "classifier": export_bert(
            BERTClassifier(encoder, 2, rate=0.0), tokenizer, directory / "cls", jit_compile=False
        ),
        "gpt": export_gpt(gpt, ByteTokenizer(), directory / "gpt", max_new_tokens=4),
    }


def _serve(calls):
    """Runs `calls` in serving processes; returns {index: result}, restarting after a crash."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    results, remaining = {}, list(calls)
    while remaining:
        process = subprocess.run(
            [sys.executable, "-c", _WORKER],
            input=json.dumps(remaining),
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        started = None
        for line in process.stdout.splitlines():
            if line.startswith("START "):
                started = int(line.split()[1])
            elif line.startswith("RESULT "):
                index, result = json.loads(line[len("RESULT ") :])
                results[index] = result
        if process.returncode == 0 and len(results) >= len(calls):
            break
        if started is None or started in results:  # died before or after every call
            pytest.fail(f"the serving process failed outside a call:\n{process.stderr[-3000:]}")
        results[started] = {
            "ok": False,
            "type": "process died",
            "message": f"exit status {process.returncode}: {process.stderr.strip()[-500:]}",
        }
        remaining = [call for call in remaining if call[0] not in results]
    return results


@pytest.fixture(scope="module")
def served(exports):
    calls = [
        [index, exports[export], signature, inputs]
        for index, (_, export, signature, inputs, _) in enumerate(CASES)
    ]
    return _serve(calls)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(CASES)), ids=[case[0] for case in CASES])
def test_a_request_never_kills_the_serving_process(served, index):
    case_id, _, signature, inputs, (kind, detail) = CASES[index]
    result = served[index]
    assert result.get("type") != "process died", (
        f"{case_id} killed the process: {result['message']}"
    )
    if kind == "empty":
        assert result["ok"], f"{signature} on an empty batch failed: {result}"
        assert result["shapes"][detail][0] == 0, result["shapes"]
    else:
        assert not result["ok"], f"{signature}({inputs}) was accepted: {result}"
        assert result["type"] == "InvalidArgumentError", result
        missing = [name for name in detail if name not in result["message"]]
        assert not missing, f"the error does not name {missing}: {result['message'][:500]}"
