"""`serve` on LiteRT exports, in-process: the APIs of a SavedModel, the LiteRT runner's results.

The app is driven with Starlette's TestClient (as in test_serve_app.py) over tiny `.tflite`
exports; a real process with the official `openai` client is in test_serve.py.
"""

import json
import os
import pathlib
import re

import numpy as np
import pytest
from helpers import drain
from starlette.testclient import TestClient

from tf_bigmodels.litert import LiteRTEncoder, LiteRTGenerator
from tf_bigmodels.serving import ServerSettings, create_app, find_export


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    import keras

    from tf_bigmodels.litert import export_litert
    from tf_bigmodels.models import BERTClassifier, BERTEncoder, GPTModel
    from tf_bigmodels.tokenizers import ByteTokenizer, WordPieceTokenizer

    root = tmp_path_factory.mktemp("litert")
    keras.utils.set_random_seed(0)
    gpt = GPTModel(258, 32, 2, 64, 1, rate=0.0, max_length=64)
    words = ["the", "cat", "sat", "good", "bad", "你", "好"]
    tokenizer = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])
    encoder = BERTEncoder(tokenizer.vocab_size, 16, 2, 32, 1, max_length=8)
    classifier = BERTClassifier(encoder, 2)
    return {
        "gpt": export_litert(gpt, ByteTokenizer(), root / "runs" / "poet" / "litert/model.tflite"),
        "sentiment": export_litert(classifier, tokenizer, root / "sentiment.tflite"),
        "encoder": export_litert(encoder, tokenizer, root / "encoder" / "bert.tflite"),
        "tokenizer": tokenizer,
        "root": root,
    }


@pytest.fixture(scope="module")
def client(exports):
    sources = [
        find_export(str(exports["root"] / "runs" / "poet")),
        find_export(exports["sentiment"]),
        find_export(str(exports["root"] / "encoder")),
    ]
    app = create_app(sources, ServerSettings(max_concurrency=2))
    with TestClient(app, raise_server_exceptions=False) as client:
        assert app.state.registry.ready.wait(60), app.state.registry.error
        yield client


@pytest.fixture(scope="module")
def runner(exports):
    return LiteRTGenerator(exports["gpt"])


def test_paths_name_a_litert_export_and_a_savedmodel_comes_first(exports):
    root = exports["root"]
    run = str(root / "runs" / "poet")
    assert find_export(run) == ("poet", exports["gpt"])
    assert find_export(exports["gpt"]) == ("poet", exports["gpt"])  # the run's own file
    assert find_export(exports["sentiment"]) == ("sentiment", exports["sentiment"])
    assert find_export(str(root / "encoder")) == ("encoder", exports["encoder"])
    assert find_export(f"tang={run}/litert") == ("tang", exports["gpt"])
    os.makedirs(root / "both" / "export" / "1")
    os.makedirs(root / "both" / "litert")
    for name in ("model.tflite", "model.json"):
        open(root / "both" / "litert" / name, "w").close()
    assert find_export(str(root / "both")) == ("both", str(root / "both" / "export"))
    litert_file = str(root / "both" / "litert" / "model.tflite")
    assert find_export(litert_file) == ("both", litert_file)
    with pytest.raises(ValueError, match=r"\.tflite file"):
        find_export(str(root / "nothing"))


def test_completions_equal_the_litert_runner(client, runner):
    body = {"model": "poet", "prompt": "To be", "max_tokens": 20}
    greedy = client.post("/v1/completions", json={**body, "temperature": 0}).json()
    assert greedy["choices"][0]["text"] == runner.generate_text("To be", 20, temperature=0.0)
    seeded = client.post("/v1/completions", json={**body, "seed": 7}).json()
    expected, (new_tokens, ended) = drain(runner.stream_text("To be", 20, seed=7))
    assert seeded["choices"][0]["text"] == expected
    assert seeded["usage"]["prompt_tokens"] == 5  # one token per byte
    # Counted as decoded, as the SavedModel's completions are.
    assert seeded["usage"]["completion_tokens"] == new_tokens
    assert seeded["choices"][0]["finish_reason"] == ("stop" if ended else "length")
    filtered = {**body, "seed": 7, "top_k": 5, "top_p": 0.9, "temperature": 0.8}
    text = client.post("/v1/completions", json=filtered).json()["choices"][0]["text"]
    assert text == runner.generate_text("To be", 20, temperature=0.8, top_k=5, top_p=0.9, seed=7)

    several = client.post("/v1/completions", json={**body, "n": 3, "seed": 3}).json()
    texts = [c["text"] for c in several["choices"]]
    assert texts == [
        runner.generate_text("To be", 20, temperature=1.0, seed=3 + i) for i in range(3)
    ]
    assert len(set(texts)) == 3

    with client.stream("POST", "/v1/completions", json={**body, "seed": 7, "stream": True}) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    pieces = [json.loads(e)["choices"][0]["text"] for e in events[:-1]]
    assert "".join(pieces) == expected and len([p for p in pieces if p]) > 1


def test_streams_at_once_each_decode_with_an_interpreter_of_their_own(exports, runner):
    from tf_bigmodels.serving.litert_model import load_litert

    model = load_litert("poet", exports["gpt"])
    settings = {"temperature": 1.0, "top_p": 1.0, "top_k": 0}
    first = model.stream("To be", 30, seed=1, **settings)
    second = model.stream("你好", 30, seed=2, **settings)
    texts = ["", ""]
    for step in range(30):  # interleaved, as two requests running at once call them
        texts[0] += next(first, "")
        texts[1] += next(second, "")
        if step == 0:
            assert model._free == []  # each open stream holds an interpreter
    assert texts == [
        runner.generate_text("To be", 30, temperature=1.0, seed=1),
        runner.generate_text("你好", 30, temperature=1.0, seed=2),
    ]
    assert len(model._free) == 2  # given back when the streams ended


def test_generate_takes_the_savedmodel_request_body(client, runner):
    settings = {"max_new_tokens": 12, "temperature": 0.7, "top_k": 0, "top_p": 1.0, "seed": 4}
    body = {"signature_name": "generate", "inputs": {"prompts": ["ab", "ab", "你好"], **settings}}
    answer = client.post("/v1/models/poet:predict", json=body)
    assert answer.status_code == 200, answer.text
    run = {"temperature": 0.7, "seed": 4}
    assert answer.json()["outputs"] == [
        runner.generate_text("ab", 12, **run),
        runner.generate_text("ab", 12, copy=1, **run),  # a copy draws on its own
        runner.generate_text("你好", 12, **run),
    ]
    logits = client.post(
        "/v1/models/poet:predict",
        json={"signature_name": "logits", "inputs": {"token_ids": [[1, 2, 3]]}},
    ).json()["outputs"]
    np.testing.assert_allclose(logits, runner.logits([[1, 2, 3]]), rtol=1e-6)

    # The serving guide's `generate` request for a SavedModel, byte for byte.
    guide = (pathlib.Path(__file__).parent.parent / "docs" / "serving.md").read_text("utf-8")
    documented = re.search(r"-d '(\{\"signature_name\": \"generate\".*?)'", guide, re.S).group(1)
    answer = client.post("/v1/models/poet:predict", content=documented)
    assert answer.status_code == 200, answer.text
    inputs = json.loads(documented)["inputs"]
    prompt, tokens = inputs.pop("prompts")[0], inputs.pop("max_new_tokens")
    assert answer.json()["outputs"] == [runner.generate_text(prompt, tokens, **inputs)]

    refused = client.post("/v1/models/poet:predict", json={"instances": ["ab"]})
    assert refused.status_code == 404 and "generate" in refused.json()["error"]
    bad = {**body, "inputs": {**body["inputs"], "max_new_tokens": 64}}
    answer = client.post("/v1/models/poet:predict", json=bad)
    assert answer.status_code == 400 and "max_new_tokens" in answer.json()["error"]
    bad = {**body, "inputs": {**body["inputs"], "prompts": "ab"}}
    answer = client.post("/v1/models/poet:predict", json=bad)
    assert answer.status_code == 400 and "prompts" in answer.json()["error"]
    answer = client.post(
        "/v1/models/poet:predict",
        json={"signature_name": "logits", "inputs": {"token_ids": [[258]]}},
    )
    assert answer.status_code == 400 and "[0, 258)" in answer.json()["error"]


def test_bert_classify_equals_the_runner(client, exports):
    tokenizer = exports["tokenizer"]
    texts = ["the cat sat", "good 你好", "bad bad bad bad bad bad bad bad"]
    answer = client.post("/v1/models/sentiment:predict", json={"instances": texts})
    assert answer.status_code == 200, answer.text
    rows = answer.json()["predictions"]
    encoder = LiteRTEncoder(exports["sentiment"])
    for text, row in zip(texts, rows):
        pieces = tokenizer.tokenize([text]).to_list()[0][:6]  # max_length 8: [CLS], 6 pieces, [SEP]
        ids = [[tokenizer.cls_id, *pieces, tokenizer.sep_id]]
        expected = encoder.classify(ids)["probabilities"][0]
        np.testing.assert_allclose(row["probabilities"], expected, rtol=1e-6, atol=1e-7)
        assert row["label"] == int(np.argmax(expected))
        assert row["label_name"] == str(row["label"])

    pair = client.post(
        "/v1/models/encoder:predict",
        json={"signature_name": "encode_pair", "inputs": {"text": ["the"], "text_pair": ["cat"]}},
    ).json()["outputs"]
    the, cat = tokenizer.tokenize(["the", "cat"]).to_list()
    ids = [[tokenizer.cls_id, *the, tokenizer.sep_id, *cat, tokenizer.sep_id]]
    expected = LiteRTEncoder(exports["encoder"]).encode(ids, [[0, 0, 0, 1, 1]])
    np.testing.assert_allclose(pair["pooled_output"], expected["pooled_output"], atol=1e-6)
    assert pair["padding_mask"] == [[1] * 5]

    refused = client.post(
        "/v1/models/encoder:predict", json={"signature_name": "fill_mask", "instances": ["a"]}
    )
    assert refused.status_code == 404 and "head" in refused.json()["error"]
    completion = client.post("/v1/completions", json={"model": "sentiment", "prompt": "a"})
    assert completion.status_code == 400


def test_model_list_status_and_metadata(client):
    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert {m: models[m]["kind"] for m in models} == {
        "encoder": "bert_encoder",
        "poet": "gpt",
        "sentiment": "bert_classifier",
    }
    assert models["poet"]["format"] == "litert" and models["poet"]["max_tokens"] == 63
    assert client.get("/v1/models/poet").json()["model_version_status"][0]["version"] == "1"
    signatures = client.get("/v1/models/poet/metadata").json()["metadata"]["signature_def"]
    generate = signatures["signature_def"]["generate"]
    assert sorted(generate["inputs"]) == sorted(
        ["prompts", "max_new_tokens", "temperature", "top_k", "top_p", "seed"]
    )
    assert generate["outputs"]["completions"]["dtype"] == "DT_STRING"
    assert client.get("/").status_code == 200


@pytest.mark.slow
def test_a_real_server_on_a_tflite_file_with_the_openai_client(exports, runner):
    import openai
    from serving_fixtures import ServerProcess

    process = ServerProcess([f"gpt={exports['gpt']}", exports["sentiment"]])
    try:
        process.wait_ready()
        assert "gpt: version 1 (gpt), signatures generate, logits" in process.output
        client = openai.OpenAI(base_url=f"{process.url}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list()] == ["gpt", "sentiment"]
        plain = client.completions.create(model="gpt", prompt="To be", max_tokens=24, seed=7)
        expected = runner.generate_text("To be", 24, temperature=1.0, seed=7)
        assert plain.choices[0].text == expected
        greedy = client.completions.create(
            model="gpt", prompt="你好", max_tokens=16, temperature=0, n=2
        )
        assert [c.text for c in greedy.choices] == [
            runner.generate_text("你好", 16, temperature=0.0)
        ] * 2
        stream = client.completions.create(
            model="gpt", prompt="To be", max_tokens=24, seed=7, stream=True
        )
        assert "".join(c.choices[0].text for c in stream if c.choices) == expected
        with pytest.raises(openai.BadRequestError, match="max_tokens"):
            client.completions.create(model="gpt", prompt="a", max_tokens=64)
    finally:
        assert process.stop() == 0
