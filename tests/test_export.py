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

from tf_bigmodels.export import GPTServingModule, export_gpt
from tf_bigmodels.models import GPTModel
from tf_bigmodels.models.generation import GenerationSettings
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
    result = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.fixture(scope="module")
def gpt_exports(tmp_path_factory):
    """A tiny byte-level GPT exported twice (XLA and plain), greedy by default."""
    tf.keras.utils.set_random_seed(5)
    model = GPTModel(
        vocab_size=258,
        d_model=32,
        num_heads=2,
        dff=64,
        num_layers=2,
        rate=0.0,
        max_length=64,
        initializer_range=0.3,
    )
    model.build((None, None))
    directory = tmp_path_factory.mktemp("gpt")
    settings = dict(max_new_tokens=MAX_NEW, temperature=0.0)
    xla = export_gpt(model, ByteTokenizer(), directory / "xla", **settings)
    plain = export_gpt(model, ByteTokenizer(), directory / "plain", jit_compile=False, **settings)
    return model, xla, plain


@pytest.fixture(scope="module")
def plain_loaded(gpt_exports):
    """The plain export loaded once: each load restores and re-traces every signature."""
    return tf.saved_model.load(gpt_exports[2])


def _in_memory_completions(model, prompts, max_new_tokens, **settings):
    """What the exported signature must return: the continuation text of each prompt (greedy
    unless `settings` say otherwise), a character cut off at the end removed."""
    tokenizer = ByteTokenizer()
    ids = [row or [tokenizer.end_id] for row in tokenizer.tokenize(prompts).to_list()]
    out = model.generate(
        ids,
        max_new_tokens,
        **{"temperature": 0.0, **settings},
        end_id=tokenizer.end_id,
        pad_id=tokenizer.pad_id,
    )
    kept = [min(len(row), model.max_length - max_new_tokens) for row in ids]
    new = tf.ragged.constant([row[k:] for row, k in zip(out.to_list(), kept)], tf.int32)
    return [s.decode().rstrip("\ufffd") for s in tokenizer.detokenize(new).numpy()]


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
    shown = subprocess.run(
        [str(cli), "show", "--all", "--dir", gpt_exports[1]],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    ).stdout
    for text in (
        "signature_def['serving_default']",
        "signature_def['generate']",
        "signature_def['logits']",
        "inputs['prompts']",
        "inputs['max_new_tokens']",
        "inputs['temperature']",
        "inputs['top_k']",
        "inputs['top_p']",
        "inputs['seed']",
        "outputs['completions']",
        "inputs['token_ids']",
        "outputs['logits']",
    ):
        assert text in shown, text


@pytest.mark.parametrize(
    "name, value, argument",
    [
        # One of each argument in the fast lane, the other cases too in the full run: each
        # call runs the whole signature.
        ("max_new_tokens", 64, "max_new_tokens"),
        pytest.param("max_new_tokens", -1, "max_new_tokens", marks=pytest.mark.slow),
        pytest.param("max_new_tokens", [1], "max_new_tokens", marks=pytest.mark.slow),
        pytest.param("temperature", -1.0, "temperature", marks=pytest.mark.slow),
        ("temperature", float("nan"), "temperature"),
        pytest.param("temperature", float("inf"), "temperature", marks=pytest.mark.slow),
        pytest.param("temperature", [[1.0]], "temperature", marks=pytest.mark.slow),
        ("top_k", -1, "top_k"),
        pytest.param("top_p", 0.0, "top_p", marks=pytest.mark.slow),
        ("top_p", 1.5, "top_p"),
        ("seed", [1, 2], "seed"),
        ("prompts", "hi", "prompts"),
        pytest.param("prompts", [["hi"]], "prompts", marks=pytest.mark.slow),
    ],
)
@pytest.mark.slow
def test_generate_signature_checks_its_inputs_in_graph(plain_loaded, name, value, argument):
    generate = plain_loaded.signatures["generate"]
    inputs = dict(
        prompts=tf.constant(["hi"]),
        max_new_tokens=tf.constant(4),
        temperature=tf.constant(1.0),
        top_k=tf.constant(0),
        top_p=tf.constant(1.0),
        seed=tf.constant(1),
    )
    inputs[name] = tf.constant(value, inputs[name].dtype)
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"`{argument}`"):
        generate(**inputs)


def test_logits_signature_checks_token_ids_in_graph(plain_loaded):
    logits = plain_loaded.signatures["logits"]
    for bad in ([[1, 258]], [[-1, 3]], [[1] * 65], [1, 2], 3, [[[1]]]):
        with pytest.raises(tf.errors.InvalidArgumentError, match="`token_ids`"):
            logits(token_ids=tf.constant(bad, tf.int32))


@pytest.mark.slow
def test_gpt_signatures_answer_an_empty_batch_with_an_empty_result(plain_loaded):
    loaded = plain_loaded
    prompts = tf.constant([], tf.string)
    assert loaded.signatures["serving_default"](prompts=prompts)["completions"].shape == (0,)
    completions = loaded.signatures["generate"](
        prompts=prompts,
        max_new_tokens=tf.constant(4),
        temperature=tf.constant(1.0),
        top_k=tf.constant(0),
        top_p=tf.constant(1.0),
        seed=tf.constant(-1),
    )["completions"]
    assert completions.shape == (0,)
    empty = tf.zeros([0, 5], tf.int32)
    assert loaded.signatures["logits"](token_ids=empty)["logits"].shape == (0, 5, 258)


def _generate_signature(loaded, prompts, max_new_tokens, temperature, seed):
    return [
        text.decode()
        for text in loaded.signatures["generate"](
            prompts=tf.constant(prompts),
            max_new_tokens=tf.constant(max_new_tokens),
            temperature=tf.constant(temperature),
            top_k=tf.constant(0),
            top_p=tf.constant(1.0),
            seed=tf.constant(seed),
        )["completions"].numpy()
    ]


@pytest.mark.slow  # XLA compiles the sampling loop for each length
def test_saved_model_samples_what_the_model_samples_for_one_seed(gpt_exports):
    from tf_bigmodels.export import stream_text

    model, xla, _ = gpt_exports
    loaded = tf.saved_model.load(xla)
    prompts = ["hello world", "你好，世界"]
    served = _generate_signature(loaded, prompts, 20, 1.0, 42)
    assert served == _in_memory_completions(model, prompts, 20, temperature=1.0, seed=42)
    assert served != _generate_signature(loaded, prompts, 20, 1.0, 43)
    for prompt, text in zip(prompts, served):
        assert "".join(stream_text((loaded, None), prompt, 20, temperature=1.0, seed=42)) == text


@pytest.mark.slow
def test_saved_model_completions_end_with_complete_characters(gpt_exports, plain_loaded):
    # Without XLA, which would compile once per length; the cut is the same code either way.
    model, loaded, tokenizer = gpt_exports[0], plain_loaded, ByteTokenizer()
    cut = 0
    for n in range(1, 13):
        served = _generate_signature(loaded, ["你好"], n, 0.0, 0)[0]
        out = model.generate(tokenizer.tokenize(["你好"]), n, temperature=0.0, jit_compile=False)
        full = tokenizer.detokenize(out[:, 6:]).numpy()[0].decode()
        assert served == full.rstrip("\ufffd") and not served.endswith("\ufffd")
        cut += full.endswith("\ufffd")
    assert cut > 0  # some lengths did cut a character


@pytest.mark.slow  # a whole export for one default
def test_export_gpt_defaults_fit_a_small_model(tmp_path):
    model = GPTModel(258, 32, 2, 64, 1, rate=0.0, max_length=64)
    path = export_gpt(model, ByteTokenizer(), tmp_path, jit_compile=False)
    config = json.loads(tf.saved_model.load(path).generation_config.numpy())
    assert config["max_new_tokens"] == 32  # half the context


def _compiled(model):
    """`model` as training leaves it: compiled, its AdamW's moments built."""
    import keras

    model.compile(keras.optimizers.AdamW(1e-3), "mse")
    model.optimizer.build(model.trainable_variables)
    assert len(model.optimizer.variables) > 2 * len(model.trainable_variables)
    return model


@pytest.mark.parametrize("kind", ["gpt", "bert"])
def test_an_export_saves_the_weights_not_the_optimizer_s_state(tmp_path, kind):
    # A compiled model tracks its optimizer: its two moments per weight would triple the
    # SavedModel, and every server would load them.
    from tf_bigmodels.export import export_bert
    from tf_bigmodels.models import BERTEncoder, BERTPretrainer
    from tf_bigmodels.tokenizers import WordPieceTokenizer

    if kind == "gpt":
        model = GPTModel(258, 16, 2, 32, 1, max_length=16)
        model(np.zeros((1, 16), "int32"))
        path = export_gpt(_compiled(model), ByteTokenizer(), tmp_path, jit_compile=False)
    else:
        tokenizer = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"])
        model = BERTPretrainer(BERTEncoder(tokenizer.vocab_size, 16, 2, 32, 1, max_length=16))
        model({"token_ids": np.zeros((1, 16), "int32"), "mask_positions": np.ones((1, 1), "int32")})
        path = export_bert(_compiled(model), tokenizer, tmp_path, jit_compile=False)
    saved = tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))
    numbers = [
        int(np.prod(saved.get_variable_to_shape_map()[name]))
        for name, dtype in saved.get_variable_to_dtype_map().items()
        if dtype != tf.string  # the recorded settings
    ]
    assert sum(numbers) == sum(int(np.prod(v.shape)) for v in model.variables)


def _count_traces(monkeypatch, cls, method):
    """A list that grows by one each time `cls.method` runs while a graph is traced."""
    traced = []
    original = getattr(cls, method)

    def counted(self, *args, **kwargs):
        if not tf.executing_eagerly():
            traced.append(method)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, counted)
    return traced


@pytest.mark.parametrize("jit_compile", [False, True])
def test_an_export_traces_each_pass_of_the_model_once(tmp_path, monkeypatch, jit_compile):
    # The signatures share their graph functions (the prompt pass, the decode loop, the batched
    # loop, the logits pass). `tf.saved_model.save` would trace each of them once more on its
    # own if the module tracked them: seven traces of the model, not four.
    model = GPTModel(258, 32, 2, 64, 1, rate=0.0, max_length=64)
    model(np.zeros((1, 1), "int32"))
    traced = _count_traces(monkeypatch, GPTModel, "hidden_states")
    path = export_gpt(model, ByteTokenizer(), tmp_path, max_new_tokens=4, jit_compile=jit_compile)
    assert len(traced) == 4
    loaded = tf.saved_model.load(path)  # and the export still answers each signature
    assert loaded.signatures["serving_default"](prompts=tf.constant(["To"]))[
        "completions"
    ].shape == [1]


def test_a_bert_export_traces_each_pass_of_the_model_once(tmp_path, monkeypatch):
    # A pre-trainer's signatures call the encoder (encode, encode_pair) and the whole model
    # (fill_mask): two traces, not the four of a module that tracks them; a classifier's, one
    # (not two).
    from tf_bigmodels.export import export_bert
    from tf_bigmodels.models import BERTClassifier, BERTEncoder, BERTPretrainer
    from tf_bigmodels.tokenizers import WordPieceTokenizer

    tokenizer = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"])
    encoder = BERTEncoder(tokenizer.vocab_size, 16, 2, 32, 1, max_length=16)
    traced = _count_traces(monkeypatch, BERTEncoder, "_forward")
    export_bert(BERTPretrainer(encoder), tokenizer, tmp_path / "p", top_k=3, jit_compile=False)
    assert len(traced) == 2
    traced.clear()
    classifier = BERTClassifier(encoder, 2)
    export_bert(classifier, tokenizer, tmp_path / "c", class_names=["n", "y"], jit_compile=False)
    assert len(traced) == 1


@pytest.mark.slow  # three exports
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

    with pytest.raises(ValueError, match="^`version` must be a new version .*already exists"):
        export_gpt(model, ByteTokenizer(), tmp_path, version=1, max_new_tokens=4, jit_compile=False)
    assert export_gpt(model, ByteTokenizer(), tmp_path, max_new_tokens=4, jit_compile=False) == str(
        tmp_path / "2"
    )


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(max_new_tokens=64), "max_new_tokens"),
        (dict(top_p=2.0), "top_p"),
        (dict(temperature=-1.0), "temperature"),
        (dict(version=0), "version"),
    ],
)
def test_export_gpt_checks_settings_before_writing(gpt_exports, tmp_path, kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        export_gpt(
            gpt_exports[0], ByteTokenizer(), tmp_path / "out", **{"max_new_tokens": 4, **kwargs}
        )
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("vocab_size", [300, 100])
def test_export_gpt_refuses_a_tokenizer_of_another_vocabulary(tmp_path, vocab_size):
    model = GPTModel(vocab_size, 16, 2, 32, 1, rate=0.0, max_length=16)
    message = (
        f"^`tokenizer` must have the model's vocab_size={vocab_size}, got one with vocab_size=258"
    )
    with pytest.raises(ValueError, match=message):
        export_gpt(model, ByteTokenizer(), tmp_path, max_new_tokens=4, jit_compile=False)
    assert not list(tmp_path.iterdir())
    settings = GenerationSettings(4, end_id=0)
    with pytest.raises(ValueError, match=message):
        GPTServingModule(model, ByteTokenizer(), settings, jit_compile=False)


# ---------------------------------------------------------------------------------------------
# BERT

BERT_TEXTS = ["The cat sat on the mat.", "你好世界", "", "a dog ran in the park"]
MASKED_TEXTS = ["the [MASK] sat on the [MASK] .", "a dog [MASK] in the park", "no mask here"]
PAIRS = (["the cat sat", "a dog"], ["on the mat", "ran in the park"])

_SERVE_BERT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the WordPiece tokenizer's ops)
    assert not any(name.startswith("tf_bigmodels") for name in sys.modules)
    pretrainer, classifier, texts, masked, pairs, out = sys.argv[1], sys.argv[2], \\
        json.loads(sys.argv[3]), json.loads(sys.argv[4]), json.loads(sys.argv[5]), sys.argv[6]
    loaded = tf.saved_model.load(pretrainer)
    encoded = loaded.signatures["serving_default"](text=tf.constant(texts))
    pair = loaded.signatures["encode_pair"](text=tf.constant(pairs[0]),
                                            text_pair=tf.constant(pairs[1]))
    filled = loaded.signatures["fill_mask"](text=tf.constant(masked))
    classified = tf.saved_model.load(classifier).signatures["serving_default"](
        text=tf.constant(texts))
    tolist = lambda t: t.numpy().tolist()
    result = {
        "pooled": tolist(encoded["pooled_output"]), "sequence": tolist(encoded["sequence_output"]),
        "padding_mask": tolist(encoded["padding_mask"]), "pair_pooled": tolist(pair["pooled_output"]),
        "fill_tokens": [[[t.decode() for t in slot] for slot in row]
                        for row in filled["tokens"].numpy()],
        "fill_scores": tolist(filled["scores"]), "mask_counts": tolist(filled["mask_counts"]),
        "probabilities": tolist(classified["probabilities"]), "label": tolist(classified["label"]),
        "label_name": [n.decode() for n in classified["label_name"].numpy()],
    }
    with open(out, "w") as f:
        json.dump(result, f)
""")


@pytest.fixture(scope="module")
def bert_exports(tmp_path_factory):
    from tf_bigmodels.export import export_bert
    from tf_bigmodels.models import BERTClassifier, BERTEncoder, BERTPretrainer
    from tf_bigmodels.tokenizers import WordPieceTokenizer

    tf.keras.utils.set_random_seed(6)
    tokenizer = WordPieceTokenizer.train(
        ["The cat sat on the mat.", "A dog ran in the park.", "你好世界"] * 30,
        vocab_size=60,
        verbose=False,
    )
    encoder = BERTEncoder(
        tokenizer.vocab_size, 32, 2, 64, 2, rate=0.0, max_length=32, initializer_range=0.3
    )
    pretrainer = BERTPretrainer(encoder)
    classifier = BERTClassifier(encoder, 3, rate=0.0)
    directory = tmp_path_factory.mktemp("bert")
    return (
        pretrainer,
        classifier,
        tokenizer,
        export_bert(pretrainer, tokenizer, directory / "pretrainer", top_k=3),
        export_bert(
            classifier,
            tokenizer,
            directory / "classifier",
            class_names=["neg", "neutral", "pos"],
            jit_compile=False,
        ),
    )


def _packed(tokenizer, segments_ids):
    """[CLS] a [SEP] (b [SEP]) rows padded to the longest, as numpy arrays."""
    rows = []
    for segments in zip(*segments_ids):
        ids, types = [tokenizer.cls_id], [0]
        for kind, segment in enumerate(segments):
            ids += list(segment) + [tokenizer.sep_id]
            types += [kind] * (len(segment) + 1)
        rows.append((ids, types))
    width = max(len(ids) for ids, _ in rows)
    pad = lambda values, fill: values + [fill] * (width - len(values))  # noqa: E731
    return {
        "token_ids": np.array([pad(i, tokenizer.pad_id) for i, _ in rows], "int32"),
        "segment_ids": np.array([pad(t, 0) for _, t in rows], "int32"),
        "padding_mask": np.array([pad([1] * len(i), 0) for i, _ in rows], "int32"),
    }


def _wordpieces_with_masks(tokenizer, text):
    pieces = text.split("[MASK]")
    ids = []
    for i, piece in enumerate(pieces):
        ids += tokenizer.tokenize(piece).numpy().tolist()
        if i < len(pieces) - 1:
            ids.append(tokenizer.mask_id)
    return ids


@pytest.mark.slow
def test_bert_savedmodels_serve_strings_in_a_fresh_process(bert_exports, tmp_path):
    pretrainer, classifier, tokenizer, pretrainer_path, classifier_path = bert_exports
    out = tmp_path / "served.json"
    _fresh_process(
        _SERVE_BERT,
        pretrainer_path,
        classifier_path,
        json.dumps(BERT_TEXTS),
        json.dumps(MASKED_TEXTS),
        json.dumps(PAIRS),
        out,
    )
    served = json.loads(out.read_text())

    inputs = _packed(tokenizer, [tokenizer.tokenize(BERT_TEXTS).to_list()])
    encoded = pretrainer.encoder(inputs)
    assert served["padding_mask"] == inputs["padding_mask"].tolist()
    np.testing.assert_allclose(served["pooled"], encoded["pooled_output"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(served["sequence"], encoded["sequence_output"], atol=1e-5, rtol=0)

    pair_inputs = _packed(tokenizer, [tokenizer.tokenize(texts).to_list() for texts in PAIRS])
    np.testing.assert_allclose(
        served["pair_pooled"], pretrainer.encoder(pair_inputs)["pooled_output"], atol=1e-5, rtol=0
    )

    masked_inputs = _packed(
        tokenizer, [[_wordpieces_with_masks(tokenizer, t) for t in MASKED_TEXTS]]
    )
    counts = (masked_inputs["token_ids"] == tokenizer.mask_id).sum(axis=1)
    assert served["mask_counts"] == counts.tolist() == [2, 1, 0]
    for row in range(len(MASKED_TEXTS)):
        positions = np.nonzero(masked_inputs["token_ids"][row] == tokenizer.mask_id)[0]
        if not len(positions):
            assert served["fill_tokens"][row] == [[""] * 3] * 2
            continue
        logits = pretrainer(
            {
                **{k: v[row : row + 1] for k, v in masked_inputs.items()},
                "mask_positions": positions[None].astype("int32"),
            }
        )["mlm_logits"]
        probabilities = np.asarray(tf.nn.softmax(logits))[0]
        for slot, distribution in enumerate(probabilities):
            best = np.argsort(-distribution)[:3]
            assert served["fill_tokens"][row][slot] == [tokenizer.vocabulary[i] for i in best]
            np.testing.assert_allclose(
                served["fill_scores"][row][slot], distribution[best], atol=1e-5, rtol=0
            )

    probabilities = np.asarray(tf.nn.softmax(classifier(inputs)))
    np.testing.assert_allclose(served["probabilities"], probabilities, atol=1e-5, rtol=0)
    assert served["label"] == probabilities.argmax(axis=1).tolist()
    assert served["label_name"] == [["neg", "neutral", "pos"][i] for i in served["label"]]


@pytest.mark.slow
def test_saved_model_cli_lists_the_bert_signatures(bert_exports):
    cli = pathlib.Path(sys.executable).with_name("saved_model_cli")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    pretrainer = subprocess.run(
        [str(cli), "show", "--all", "--dir", bert_exports[3]],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    ).stdout
    for text in (
        "signature_def['serving_default']",
        "signature_def['encode_pair']",
        "signature_def['fill_mask']",
        "inputs['text']",
        "inputs['text_pair']",
        "outputs['pooled_output']",
        "outputs['sequence_output']",
        "outputs['tokens']",
        "outputs['scores']",
    ):
        assert text in pretrainer, text
    classifier = subprocess.run(
        [str(cli), "show", "--all", "--dir", bert_exports[4]],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    ).stdout
    for text in ("inputs['text']", "outputs['probabilities']", "outputs['label']"):
        assert text in classifier, text


@pytest.mark.slow  # its fixture exports two BERTs
def test_export_bert_checks_its_arguments(bert_exports, tmp_path):
    from tf_bigmodels.export import export_bert
    from tf_bigmodels.tokenizers import ByteTokenizer

    pretrainer, classifier, tokenizer = bert_exports[:3]
    with pytest.raises(ValueError, match=r"^`seq_length` must be None or an integer in \[3, 32\]"):
        export_bert(pretrainer, tokenizer, tmp_path, seq_length=2)
    with pytest.raises(ValueError, match=r"^`top_k` must be an integer in \[1, \d+\], got 0.$"):
        export_bert(pretrainer, tokenizer, tmp_path, top_k=0)
    with pytest.raises(ValueError, match="^`class_names` must be None or 3 strings"):
        export_bert(classifier, tokenizer, tmp_path, class_names=["only one"])
    with pytest.raises(ValueError, match="^`class_names` must be None for a BERTPretrainer"):
        export_bert(pretrainer, tokenizer, tmp_path, class_names=["a", "b"])
    with pytest.raises(TypeError, match="^`tokenizer` must be a WordPieceTokenizer, got Byte"):
        export_bert(pretrainer, ByteTokenizer(), tmp_path)
    with pytest.raises(ValueError, match="^`version` must be None or an integer >= 1, got 0.$"):
        export_bert(pretrainer, tokenizer, tmp_path, version=0)
    with pytest.raises(TypeError, match="`model`"):
        export_bert(pretrainer.encoder, tokenizer, tmp_path)
    assert not list(tmp_path.iterdir())  # every check came before any file


@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o077, 0o700)])
def test_version_directories_respect_the_umask(tmp_path, umask, mode):
    """A TF Serving process of another user must be able to read an export made under 022."""
    from tf_bigmodels.export._layout import write_version

    old = os.umask(umask)
    try:
        path = write_version(tmp_path, None, lambda p: open(os.path.join(p, "x"), "w").close())
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == mode


@pytest.mark.slow
@pytest.mark.parametrize("source", ["model", "export_dir"])
def test_streamed_greedy_text_equals_one_generate_call(gpt_exports, source):
    from tf_bigmodels.export import load_generator, stream_text

    model, xla, _ = gpt_exports
    loaded = load_generator(model if source == "model" else os.path.dirname(xla))
    for prompt in ("你好", ""):
        pieces = list(stream_text(loaded, prompt, 12, temperature=0.0, chunk_tokens=4))
        assert "".join(pieces) == _in_memory_completions(model, [prompt], 12)[0], prompt
        assert len(pieces) > 1
        sampled = "".join(stream_text(loaded, prompt, 12, temperature=1.0, seed=3, chunk_tokens=5))
        expected = _in_memory_completions(model, [prompt], 12, temperature=1.0, seed=3)[0]
        assert sampled == expected, prompt


def test_an_export_removes_what_killed_exports_left_and_nothing_else(tmp_path):
    """A killed export leaves its temporary directory (a whole model); the next export removes
    it, but never one of a process that still runs, nor one written from another host."""
    import socket

    from tf_bigmodels.export._layout import write_version

    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True
    )
    dead_pid = int(ended.stdout)
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    host = socket.gethostname()
    try:
        left = {
            "killed": f".partial-1-{dead_pid}-0123abcd-{host}",
            "killed_without_host": f".partial-2-{dead_pid}-89abcdef",
            "running": f".partial-3-{running.pid}-0123abcd-{host}",
            "this_process": f".partial-4-{os.getpid()}-0123abcd-{host}",
            "other_host": f".partial-5-{dead_pid}-0123abcd-not-{host}",
            "user_file": f".partial-notes-{dead_pid}",
        }
        for name in left.values():
            (tmp_path / name).mkdir()
            (tmp_path / name / "saved_model.pb").write_bytes(b"half written")
        path = write_version(tmp_path, None, lambda p: open(os.path.join(p, "x"), "w").close())
    finally:
        running.kill()
        running.wait()
    kept = {key for key, name in left.items() if (tmp_path / name).is_dir()}
    assert kept == {"running", "this_process", "other_host", "user_file"}
    assert sorted(os.listdir(path)) == ["x"]


def _replay_warmup_file(path, loaded):
    """Reads TF Serving's warm-up file of the SavedModel at `path` with TF Serving's protos and
    runs each request on `loaded`'s signature; returns the signature names in the file."""
    from tensorflow_serving.apis import prediction_log_pb2

    names = []
    file = os.path.join(path, "assets.extra", "tf_serving_warmup_requests")
    for record in tf.data.TFRecordDataset(file):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        assert log.WhichOneof("log_type") == "predict_log"
        request = log.predict_log.request
        signature = loaded.signatures[request.model_spec.signature_name]
        inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
        outputs = signature(**{name: tf.constant(value) for name, value in inputs.items()})
        assert outputs and all(value.shape.rank is not None for value in outputs.values())
        names.append(request.model_spec.signature_name)
    return names


def test_a_gpt_export_carries_tf_servings_warmup_requests_for_every_signature(
    gpt_exports, plain_loaded
):
    names = _replay_warmup_file(gpt_exports[2], plain_loaded)
    assert (
        sorted(names)
        == sorted(plain_loaded.signatures)
        == ["generate", "logits", "serving_default"]
    )


@pytest.mark.slow  # its fixture exports two BERTs
def test_bert_exports_carry_tf_servings_warmup_requests_for_every_signature(bert_exports):
    for path in bert_exports[3:]:
        loaded = tf.saved_model.load(path)
        assert sorted(_replay_warmup_file(path, loaded)) == sorted(loaded.signatures)
