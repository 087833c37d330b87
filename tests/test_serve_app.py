"""The server's HTTP behaviour, in-process (Starlette's TestClient) with stand-in models.

Every route family once, and each safety default with a test that fails without it: the API
key, the body size limit, the max_tokens cap, the timeout, the bounded queue, one clear 400 for
each kind of bad request, no traceback to a client, and a server that keeps serving. The real
exports are served by a real process in test_serve.py.
"""

import argparse
import json
import threading
import time

import pytest
from serving_fixtures import FakeModel
from starlette.testclient import TestClient

from tf_bigmodels.serving import ServerSettings, create_app, find_export
from tf_bigmodels.serving import cli as serving_cli


def _client(models, **settings):
    app = create_app(models, ServerSettings(**settings))
    client = TestClient(app, raise_server_exceptions=False)
    client.__enter__()
    assert app.state.registry.ready.wait(10)
    return client


@pytest.fixture
def gpt():
    return FakeModel("gpt")


@pytest.fixture
def client(gpt):
    client = _client([gpt, FakeModel("sentiment", "bert_classifier")])
    yield client
    client.__exit__(None, None, None)


def _events(response):
    """The `data:` payloads of a server-sent event stream."""
    return [line[6:] for line in response.text.split("\n\n") if line.startswith("data: ")]


def test_tf_serving_routes(client):
    status = client.get("/v1/models/gpt").json()
    assert status == {
        "model_version_status": [
            {
                "version": "1",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    assert client.get("/v1/models/gpt/versions/1").status_code == 200
    assert client.get("/v1/models/gpt/metadata").json()["model_spec"]["name"] == "gpt"
    # Row format: one value per example (one input), one value per example back (one output).
    rows = client.post("/v1/models/gpt:predict", json={"instances": ["ab", "cd"]})
    assert rows.json() == {"predictions": ["ba", "dc"]}
    columns = client.post("/v1/models/gpt/versions/1:predict", json={"inputs": {"prompts": ["ab"]}})
    assert columns.json() == {"outputs": ["ba"]}
    several = client.post("/v1/models/sentiment:predict", json={"instances": [{"text": "x"}]})
    assert several.json() == {"predictions": [{"label": 0, "probabilities": [0.75, 0.25]}]}
    for path, status_code in [
        ("/v1/models/nope", 404),
        ("/v1/models/gpt/versions/2", 404),
        ("/v1/models/gpt/versions/2/metadata", 404),
    ]:
        response = client.get(path)
        assert response.status_code == status_code
        assert list(response.json()) == ["error"]
    unknown_signature = client.post(
        "/v1/models/gpt:predict", json={"signature_name": "nope", "instances": ["a"]}
    )
    assert unknown_signature.status_code == 404
    assert "nope" in unknown_signature.json()["error"]
    both = client.post("/v1/models/gpt:predict", json={"instances": ["a"], "inputs": ["a"]})
    assert both.status_code == 400 and "exactly one" in both.json()["error"]


def test_openai_routes(client, gpt):
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["gpt", "sentiment"]
    body = {"model": "gpt", "prompt": ["a", "b"], "max_tokens": 6, "n": 2, "seed": 3}
    answer = client.post("/v1/completions", json=body).json()
    assert answer["object"] == "text_completion"
    assert [c["index"] for c in answer["choices"]] == [0, 1, 2, 3]
    assert all(len(c["text"]) == 6 and c["finish_reason"] == "length" for c in answer["choices"])
    # Choice i of a prompt draws with seed + i: n samples differ, the same request repeats.
    assert [call["seed"] for call in gpt.stream_calls] == [3, 4, 3, 4]
    assert client.post("/v1/completions", json=body).json()["choices"] == answer["choices"]
    assert answer["usage"] == {"prompt_tokens": 2, "completion_tokens": 24, "total_tokens": 26}

    stream = client.post("/v1/completions", json={**body, "prompt": "a", "stream": True})
    assert stream.headers["content-type"].startswith("text/event-stream")
    events = _events(stream)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    streamed = {0: "", 1: ""}
    for chunk in chunks:
        for choice in chunk["choices"]:
            streamed[choice["index"]] += choice["text"]
    assert [streamed[0], streamed[1]] == [c["text"] for c in answer["choices"][:2]]
    assert [c["choices"][0]["finish_reason"] for c in chunks[-2:]] == ["length", "length"]

    chat = client.post("/v1/chat/completions", json={"model": "gpt", "messages": []})
    assert chat.status_code == 400
    assert "/v1/completions" in chat.json()["error"]["message"]


def test_finish_reason_and_usage_come_from_how_the_generation_ended(client, gpt):
    body = {"model": "gpt", "prompt": "a", "max_tokens": 10, "n": 2, "seed": 1}
    # The stand-in meets its end-of-text token after 8 of the 10 tokens: near the limit, but
    # the end token ended it, not the limit.
    gpt.end_after = 8
    try:
        ended = client.post("/v1/completions", json=body).json()
        streamed = [
            json.loads(e)
            for e in _events(
                client.post(
                    "/v1/completions",
                    json={**body, "stream": True, "stream_options": {"include_usage": True}},
                )
            )[:-1]
        ]
    finally:
        gpt.end_after = None
    assert [c["finish_reason"] for c in ended["choices"]] == ["stop", "stop"]
    assert ended["usage"]["completion_tokens"] == 16
    assert [c["choices"][0]["finish_reason"] for c in streamed[-3:-1]] == ["stop", "stop"]
    assert streamed[-1]["usage"] == ended["usage"]
    limited = client.post("/v1/completions", json=body).json()
    assert [c["finish_reason"] for c in limited["choices"]] == ["length", "length"]
    assert limited["usage"]["completion_tokens"] == 20


def test_stop_strings_end_the_text_before_them(client):
    full = client.post(
        "/v1/completions", json={"model": "gpt", "prompt": "", "max_tokens": 40, "seed": 5}
    ).json()["choices"][0]["text"]
    stop = full[9:12]  # across the pieces of 4 characters the stand-in yields
    for stream in (False, True):
        response = client.post(
            "/v1/completions",
            json={"model": "gpt", "max_tokens": 40, "seed": 5, "stop": [stop], "stream": stream},
        )
        if stream:
            chunks = [json.loads(e) for e in _events(response)[:-1]]
            text = "".join(c["choices"][0]["text"] for c in chunks)
            reason = chunks[-1]["choices"][0]["finish_reason"]
        else:
            choice = response.json()["choices"][0]
            text, reason = choice["text"], choice["finish_reason"]
        assert (text, reason) == (full[: full.find(stop)], "stop")


def test_openai_errors_are_openai_error_objects(client):
    cases = [
        ({"model": "nope", "prompt": "a"}, 404, "model"),
        ({"model": "sentiment", "prompt": "a"}, 400, "model"),
        ({"model": "gpt", "prompt": 3}, 400, "prompt"),
        ({"model": "gpt", "max_tokens": "9"}, 400, "max_tokens"),
        ({"model": "gpt", "temperature": 2.5}, 400, "temperature"),
        ({"model": "gpt", "top_p": 0}, 400, "top_p"),
        ({"model": "gpt", "n": 0}, 400, "n"),
        ({"model": "gpt", "seed": -1}, 400, "seed"),
        ({"model": "gpt", "stream": "yes"}, 400, "stream"),
        ({"model": "gpt", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"model": "gpt", "logprobs": 3}, 400, "logprobs"),
        ({"model": "gpt", "frobnicate": 1}, 400, "frobnicate"),
    ]
    for body, status, param in cases:
        response = client.post("/v1/completions", json=body)
        assert response.status_code == status, body
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["param"] == param
        assert f"`{param}`" in error["message"] or param == "model"
    # The neutral values of the fields this server does not implement are accepted.
    neutral = {"model": "gpt", "echo": False, "logprobs": None, "best_of": 1, "max_tokens": 1}
    assert client.post("/v1/completions", json=neutral).status_code == 200


def test_max_tokens_is_capped_by_the_model_and_by_the_server(gpt):
    with TestClient(create_app([gpt], ServerSettings(max_tokens_limit=10))) as client:
        assert client.app.state.registry.ready.wait(10)
        ok = client.post("/v1/completions", json={"model": "gpt", "max_tokens": 10})
        assert ok.status_code == 200
        over = client.post("/v1/completions", json={"model": "gpt", "max_tokens": 11})
        assert over.status_code == 400 and "max-tokens-limit" in over.json()["error"]["message"]
    with TestClient(create_app([gpt], ServerSettings(max_tokens_limit=10_000))) as client:
        assert client.app.state.registry.ready.wait(10)
        over = client.post("/v1/completions", json={"model": "gpt", "max_tokens": 256})
        assert over.status_code == 400 and "255" in over.json()["error"]["message"]


def test_the_warm_up_gets_the_batching_the_server_decodes_with():
    # A GPT's batched loop compiles per batch size and chunk width: a warm-up at other sizes
    # would compile programs the server never runs and leave its own to the first requests.
    served, versions = FakeModel("gpt"), []

    def load(name, export_dir, version):
        versions.append(FakeModel(name))
        return versions[-1]

    settings = ServerSettings(max_batch_size=3, chunk_tokens=8)
    with TestClient(create_app([served, ("next", "/nowhere")], settings, load=load)) as client:
        assert client.app.state.registry.ready.wait(10)
    for model in (served, *versions):
        assert model.warmed_with == {"max_batch_size": 3, "chunk_tokens": 8}
    assert len(versions) == 1


def test_health_readiness_and_metrics():
    loaded = threading.Event()

    def load(name, export_dir, version):
        loaded.wait(10)
        return FakeModel(name)

    with TestClient(create_app([("gpt", "/nowhere")], load=load)) as client:
        assert client.get("/healthz").status_code == 200
        loading = client.get("/readyz")
        assert loading.status_code == 503 and loading.json()["pending"] == ["gpt"]
        assert client.post("/v1/models/gpt:predict", json={"instances": ["a"]}).status_code == 503
        loaded.set()
        assert client.app.state.registry.ready.wait(10)
        assert client.get("/readyz").status_code == 200
        client.post("/v1/completions", json={"model": "gpt", "max_tokens": 8})
        metrics = client.get("/monitoring/prometheus/metrics").text
    assert 'tf_bigmodels_requests_total{route="/v1/completions",status="200"} 1.0' in metrics
    assert 'tf_bigmodels_request_seconds_count{route="/readyz"} 2.0' in metrics
    assert 'tf_bigmodels_tokens_generated_total{model="gpt"} 8.0' in metrics
    assert 'tf_bigmodels_generations_total{model="gpt",outcome="completed"} 1.0' in metrics


def test_api_key_is_required_on_every_route_but_health_and_the_page(gpt):
    client = _client([gpt], api_key="s3cret")
    routes = [
        ("GET", "/v1/models", None),
        ("GET", "/v1/models/gpt", None),
        ("GET", "/v1/models/gpt/metadata", None),
        ("POST", "/v1/models/gpt:predict", {"instances": ["a"]}),
        ("POST", "/v1/completions", {"model": "gpt", "max_tokens": 1}),
        ("GET", "/monitoring/prometheus/metrics", None),
        ("GET", "/no/such/route", None),
    ]
    for method, path, body in routes:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = client.request(method, path, json=body, headers=headers)
            assert response.status_code == 401, (path, headers)
        good = client.request(method, path, json=body, headers={"Authorization": "Bearer s3cret"})
        assert good.status_code == (404 if path == "/no/such/route" else 200), path
    for path in ("/healthz", "/readyz", "/"):
        assert client.get(path).status_code == 200
    client.__exit__(None, None, None)
    # The key may come from the environment instead of the command line.
    parser = argparse.ArgumentParser()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(serving_cli.API_KEY_ENV, "from-env")
        serve = serving_cli.add_parser(parser.add_subparsers())
    assert serve.parse_args(["m"]).api_key == "from-env"


def test_request_bodies_over_the_limit_get_413(gpt):
    client = _client([gpt], max_body_bytes=100)
    small = {"instances": ["a" * 10]}
    assert client.post("/v1/models/gpt:predict", json=small).status_code == 200
    large = json.dumps({"instances": ["a" * 200]}).encode()
    assert client.post("/v1/models/gpt:predict", content=large).status_code == 413

    def chunks():  # no Content-Length: the limit is counted while reading
        yield large[:60]
        yield large[60:]

    assert client.post("/v1/completions", content=chunks()).status_code == 413
    client.__exit__(None, None, None)


def test_a_request_over_the_timeout_gets_504_and_its_slot_frees_when_the_call_ends(gpt):
    client = _client([gpt], request_timeout=0.3, max_concurrency=3, max_queue=0)
    gpt.gate.clear()  # every model call hangs until the gate opens
    completion = client.post("/v1/completions", json={"model": "gpt", "max_tokens": 8})
    assert completion.status_code == 504 and "timeout" in completion.json()["error"]["message"]
    stream = client.post("/v1/completions", json={"model": "gpt", "stream": True})
    events = _events(stream)
    assert events[-1] == "[DONE]" and "timeout" in json.loads(events[-2])["error"]["message"]
    predict = client.post("/v1/models/gpt:predict", json={"instances": ["a"]})
    assert predict.status_code == 504
    # The three calls still run (TensorFlow cannot interrupt one), so they hold their slots.
    busy = client.post("/v1/models/gpt:predict", json={"instances": ["a"]})
    assert busy.status_code == 503
    gpt.gate.set()
    deadline = time.monotonic() + 10
    while (
        again := client.post("/v1/models/gpt:predict", json={"instances": ["a"]})
    ).status_code == 503:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert again.status_code == 200
    metrics = client.get("/monitoring/prometheus/metrics").text
    assert 'tf_bigmodels_generations_total{model="gpt",outcome="timeout"} 2.0' in metrics
    client.__exit__(None, None, None)


def test_a_full_queue_answers_503_with_retry_after(gpt):
    client = _client([gpt], max_concurrency=1, max_queue=1)
    gpt.gate.clear()
    answers = []

    def call():
        answers.append(client.post("/v1/models/gpt:predict", json={"instances": ["a"]}))

    threads = [threading.Thread(target=call) for _ in range(2)]  # one runs, one waits
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while "tf_bigmodels_queue_waiting 1.0" not in client.get("/monitoring/prometheus/metrics").text:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    full = client.post("/v1/models/gpt:predict", json={"instances": ["a"]})
    assert full.status_code == 503 and full.headers["retry-after"] == "1"
    busy = client.post("/v1/completions", json={"model": "gpt"})
    assert busy.status_code == 503 and busy.json()["error"]["message"].startswith(
        "the server is busy"
    )
    gpt.gate.set()
    for thread in threads:
        thread.join(10)
    assert [a.status_code for a in answers] == [200, 200]
    client.__exit__(None, None, None)


def test_bad_requests_get_one_clear_400_and_the_server_keeps_serving(client):
    bad = [
        ("/v1/models/gpt:predict", b"{not json"),
        ("/v1/models/gpt:predict", b"[1, 2]"),
        ("/v1/models/gpt:predict", b'{"instances": []}'),
        ("/v1/models/gpt:predict", b'{"instances": [1]}'),
        ("/v1/models/gpt:predict", b'{"instances": ["a"], "extra": 1}'),
        ("/v1/models/gpt:predict", b'{"signature_name": 7, "instances": ["a"]}'),
        ("/v1/models/gpt:predict", b'{"inputs": {"prompts": ["a"], "nope": 1}}'),
        ("/v1/models/gpt:predict", b'{"inputs": 3}'),
        ("/v1/models/gpt:predict", b'{"instances": [{"prompts": "a"}, {"x": "b"}]}'),
        ("/v1/models/gpt:predict", b"\xff\xfe"),
        ("/v1/models/gpt:predict", b"[" * 100_000),
        ("/v1/completions", b"{}"),
        ("/v1/completions", b'{"model": "gpt", "prompt": [[1, 2]]}'),
        ("/v1/completions", b'{"model": "gpt", "n": 1e400}'),
        ("/v1/completions", b'{"model": "gpt", "max_tokens": true}'),
        ("/v1/completions", b'{"model": "gpt", "stream_options": {"x": 1}}'),
        ("/v1/completions", b'{"model": ["gpt"]}'),
    ]
    for path, body in bad:
        response = client.post(path, content=body)
        assert response.status_code == 400, (path, body, response.text)
        error = response.json()["error"]
        message = error if isinstance(error, str) else error["message"]
        assert message and "\n" not in message and "Traceback" not in message
    assert client.post("/v1/models/gpt", json={}).status_code == 405
    assert client.get("/v1/completions").status_code == 405
    good = client.post("/v1/completions", json={"model": "gpt", "max_tokens": 4, "seed": 1})
    assert good.status_code == 200 and len(good.json()["choices"][0]["text"]) == 4


def test_an_internal_failure_is_a_500_without_a_traceback():
    broken = FakeModel("broken", fail=RuntimeError("secret detail of the server"))
    client = _client([broken])
    response = client.post("/v1/models/broken:predict", json={"instances": ["a"]})
    assert response.status_code == 500
    assert response.json() == {"error": "internal error (see the server's log)"}
    assert client.get("/healthz").status_code == 200
    client.__exit__(None, None, None)


def test_the_page_is_plain_html_in_english_and_chinese(client):
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert '<meta charset="utf-8">' in page.text and "模型" in page.text and "Model" in page.text


def test_serve_binds_loopback_by_default_and_names_models_by_directory(tmp_path):
    parser = argparse.ArgumentParser()
    serve = serving_cli.add_parser(parser.add_subparsers())
    assert serve.parse_args(["m"]).host == "127.0.0.1"
    assert serving_cli.is_loopback("::1") and not serving_cli.is_loopback("192.168.1.2")
    (tmp_path / "exports/gpt/3").mkdir(parents=True)
    (tmp_path / "runs/poet/export/1").mkdir(parents=True)
    assert find_export(str(tmp_path / "exports/gpt")) == ("gpt", str(tmp_path / "exports/gpt"))
    assert find_export(str(tmp_path / "runs/poet/")) == (
        "poet",
        str(tmp_path / "runs/poet/export"),
    )
    assert find_export(f"tang={tmp_path}/runs/poet")[0] == "tang"
    with pytest.raises(ValueError, match="`PATH` must be an export directory"):
        find_export(str(tmp_path / "runs"))
    with pytest.raises(ValueError, match="`NAME` must be"):
        find_export(f"a b={tmp_path}/runs/poet")


def test_json_values_become_tensors_of_the_signature_types_or_a_400():
    import tensorflow as tf

    from tf_bigmodels.serving.models import RequestError, _tensor

    assert _tensor("p", ["你好", {"b64": "AAE="}], tf.string).numpy().tolist() == [
        "你好".encode(),
        b"\x00\x01",
    ]
    assert _tensor("t", 0.5, tf.float32).numpy() == 0.5
    assert _tensor("k", [[1, 2]], tf.int32).shape == (1, 2)
    for value, dtype, words in [
        (1.5, tf.int32, "integers"),
        (True, tf.int32, "integers"),
        ([[1], [1, 2]], tf.int32, "not ragged"),
        ([["a"], []], tf.string, "not ragged"),
        (2**40, tf.int32, "outside the range"),
        ([1], tf.string, "strings"),
        ({"b64": "%%"}, tf.string, "base64"),
    ]:
        with pytest.raises(RequestError, match=words):
            _tensor("x", value, dtype)


def test_any_other_saved_model_is_served_through_the_tf_serving_routes(tmp_path):
    import tensorflow as tf

    from tf_bigmodels.serving import load_model

    class Doubler(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def double(self, x):
            return {"y": 2 * x}

    module = Doubler()
    tf.saved_model.save(
        module, str(tmp_path / "doubler/7"), signatures={"serving_default": module.double}
    )
    model = load_model("doubler", str(tmp_path / "doubler"))
    assert (model.kind, model.version) == ("saved_model", 7)
    client = _client([model])
    answer = client.post("/v1/models/doubler/versions/7:predict", json={"instances": [1, 2.5]})
    assert answer.json() == {"predictions": [2.0, 5.0]}
    assert client.post("/v1/completions", json={"model": "doubler"}).status_code == 400
    client.__exit__(None, None, None)


def test_python_m_serving_answers_help_without_loading_tensorflow():
    import subprocess
    import sys

    shown = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "tf_bigmodels.serving", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "tf-bigmodels serve" in shown.stdout
    imported = {line.split("|")[-1].strip() for line in shown.stderr.splitlines() if "|" in line}
    assert "tensorflow" not in imported
