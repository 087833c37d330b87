"""SavedModel exports: served in a fresh process that never imports tf_bigmodels."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tf_bigmodels.export import export_gpt
from tf_bigmodels.models import GPTModel
from tf_bigmodels.tokenizers import ByteTokenizer

PROMPTS = ["hello world", "你好，世界", "", "a" * 100 + "b"]  # the last is longer than the context
TOKEN_IDS = [[104, 101, 108, 108, 111, 32, 0, 255], [228, 189, 160, 229, 165, 189, 256, 257]]
MAX_NEW = 12

# Runs in a fresh interpreter: only tensorflow and tensorflow_text are imported.
_SERVE_GPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the tensorflow-text ops, if any are used)
    assert not any(name.startswith("tf_bigmodels") for name in sys.modules)
    paths, prompts, token_ids, out = sys.argv[1].split(","), json.loads(sys.argv[2]), \\
        json.loads(sys.argv[3]), sys.argv[4]
    results = {}
    for key, path in zip(("xla", "plain"), paths):
        loaded = tf.saved_model.load(path)
        serve = loaded.signatures["serving_default"]
        generate = loaded.signatures["generate"]
        strings = tf.constant(prompts)
        results[key] = {
            "default": [s.decode() for s in serve(prompts=strings)["completions"].numpy()],
            "greedy": [s.decode() for s in generate(
                prompts=strings, max_new_tokens=tf.constant(5), temperature=tf.constant(0.0),
                top_k=tf.constant(0), top_p=tf.constant(1.0),
                seed=tf.constant(0))["completions"].numpy()],
            "sampled": [[s.decode() for s in generate(
                prompts=strings, max_new_tokens=tf.constant(8), temperature=tf.constant(1.0),
                top_k=tf.constant(10), top_p=tf.constant(0.9),
                seed=tf.constant(42))["completions"].numpy()] for _ in range(2)],
            "logits": loaded.signatures["logits"](
                token_ids=tf.constant(token_ids, tf.int32))["logits"].numpy().tolist(),
            "config": json.loads(loaded.generation_config.numpy()),
        }
    with open(out, "w") as f:
        json.dump(results, f)
""")


def _fresh_process(script, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", script, *map(str, args)],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.fixture(scope="module")
def gpt_exports(tmp_path_factory):
    """A tiny byte-level GPT exported twice (XLA and plain), greedy by default."""
    tf.keras.utils.set_random_seed(5)
    model = GPTModel(vocab_size=258, d_model=32, num_heads=2, dff=64, num_layers=2, rate=0.0,
                     max_length=64, initializer_range=0.3)
    model(np.zeros((1, 1), "int32"))
    directory = tmp_path_factory.mktemp("gpt")
    settings = dict(max_new_tokens=MAX_NEW, temperature=0.0)
    xla = export_gpt(model, ByteTokenizer(), directory / "xla", **settings)
    plain = export_gpt(model, ByteTokenizer(), directory / "plain", jit_compile=False, **settings)
    return model, xla, plain


def _in_memory_completions(model, prompts, max_new_tokens):
    """What the exported signature must return: greedy continuation text of each prompt."""
    tokenizer = ByteTokenizer()
    ids = [row or [tokenizer.end_id] for row in tokenizer.tokenize(prompts).to_list()]
    out = model.generate(ids, max_new_tokens, temperature=0.0, end_id=tokenizer.end_id,
                         pad_id=tokenizer.pad_id)
    kept = [min(len(row), model.max_length - max_new_tokens) for row in ids]
    new = tf.ragged.constant([row[k:] for row, k in zip(out.to_list(), kept)], tf.int32)
    return [s.decode() for s in tokenizer.detokenize(new).numpy()]


@pytest.mark.slow
def test_gpt_savedmodel_serves_strings_in_a_fresh_process(gpt_exports, tmp_path):
    model, xla, plain = gpt_exports
    out = tmp_path / "served.json"
    _fresh_process(_SERVE_GPT, f"{xla},{plain}", json.dumps(PROMPTS), json.dumps(TOKEN_IDS), out)
    served = json.loads(out.read_text())
    expected_default = _in_memory_completions(model, PROMPTS, MAX_NEW)
    expected_greedy = _in_memory_completions(model, PROMPTS, 5)
    logits = np.asarray(model(np.array(TOKEN_IDS, "int32")))
    for key in ("xla", "plain"):
        assert served[key]["default"] == expected_default, key
        assert served[key]["greedy"] == expected_greedy, key
        assert all(len(text) > 0 for text in served[key]["default"])
        first, second = served[key]["sampled"]
        assert first == second  # same seed, same text
        np.testing.assert_allclose(np.array(served[key]["logits"]), logits, atol=1e-5, rtol=0)
    assert served["xla"]["config"]["max_new_tokens"] == MAX_NEW
    assert served["xla"]["config"]["jit_compile"] is True
    assert served["plain"]["config"]["jit_compile"] is False


@pytest.mark.slow
def test_saved_model_cli_lists_the_gpt_signatures(gpt_exports):
    cli = pathlib.Path(sys.executable).with_name("saved_model_cli")
    shown = subprocess.run([str(cli), "show", "--all", "--dir", gpt_exports[1]],
                           capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")).stdout
    for text in ("signature_def['serving_default']", "signature_def['generate']",
                 "signature_def['logits']", "inputs['prompts']", "inputs['max_new_tokens']",
                 "inputs['temperature']", "inputs['top_k']", "inputs['top_p']", "inputs['seed']",
                 "outputs['completions']", "inputs['token_ids']", "outputs['logits']"):
        assert text in shown, text


@pytest.mark.parametrize("name, value, argument", [
    ("max_new_tokens", 64, "max_new_tokens"), ("max_new_tokens", -1, "max_new_tokens"),
    ("temperature", -1.0, "temperature"), ("top_k", -1, "top_k"), ("top_p", 0.0, "top_p"),
    ("top_p", 1.5, "top_p"),
])
def test_generate_signature_checks_its_inputs_in_graph(gpt_exports, name, value, argument):
    generate = tf.saved_model.load(gpt_exports[2]).signatures["generate"]
    inputs = dict(prompts=tf.constant(["hi"]), max_new_tokens=tf.constant(4),
                  temperature=tf.constant(1.0), top_k=tf.constant(0), top_p=tf.constant(1.0),
                  seed=tf.constant(1))
    inputs[name] = tf.constant(value, inputs[name].dtype)
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"`{argument}`"):
        generate(**inputs)


def test_logits_signature_checks_token_ids_in_graph(gpt_exports):
    logits = tf.saved_model.load(gpt_exports[2]).signatures["logits"]
    for bad in ([[1, 258]], [[-1, 3]], [[1] * 65]):
        with pytest.raises(tf.errors.InvalidArgumentError, match="`token_ids`"):
            logits(token_ids=tf.constant(bad, tf.int32))


def test_export_is_atomic_and_never_overwrites(gpt_exports, tmp_path, monkeypatch):
    model = gpt_exports[0]
    first = export_gpt(model, ByteTokenizer(), tmp_path, max_new_tokens=4, jit_compile=False)
    assert first == str(tmp_path / "1")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    def fail_half_way(module, path, signatures=None):
        pathlib.Path(path, "saved_model.pb").write_bytes(b"half written")
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", fail_half_way)
    with pytest.raises(OSError, match="disk full"):
        export_gpt(model, ByteTokenizer(), tmp_path, max_new_tokens=4, jit_compile=False)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    monkeypatch.undo()
    assert tf.saved_model.load(first).signatures["serving_default"] is not None

    with pytest.raises(ValueError, match="`version`=1"):
        export_gpt(model, ByteTokenizer(), tmp_path, version=1, max_new_tokens=4,
                   jit_compile=False)
    assert export_gpt(model, ByteTokenizer(), tmp_path, max_new_tokens=4,
                      jit_compile=False) == str(tmp_path / "2")


@pytest.mark.parametrize("kwargs, argument", [
    (dict(max_new_tokens=64), "max_new_tokens"), (dict(top_p=2.0), "top_p"),
    (dict(temperature=-1.0), "temperature"), (dict(version=0), "version"),
])
def test_export_gpt_checks_settings_before_writing(gpt_exports, tmp_path, kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        export_gpt(gpt_exports[0], ByteTokenizer(), tmp_path / "out",
                   **{"max_new_tokens": 4, **kwargs})
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
