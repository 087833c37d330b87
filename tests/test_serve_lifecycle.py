"""The server's life: versions swapped live, the drain on stop, metrics, warm-up at load.

In-process (Starlette's TestClient) with stand-in models whose version is their directory's
number, so every step is deterministic: the test calls `registry.poll()` itself instead of
waiting for the scan, and holds a request at the stand-in's gate to keep it running.
"""

import json
import logging
import os
import re
import signal
import threading
import time

import httpx
import pytest
from serving_fixtures import FakeModel, ServerProcess, export_tiny_gpt
from starlette.testclient import TestClient

from tf_bigmodels.serving import ServerSettings, create_app


class _Damaged(Exception):
    pass


def _versioned_loader(gate=None):
    """A `load` that gives a FakeModel per version directory; a directory holding a file
    `damaged` fails to load, as a broken SavedModel does."""
    loads = []

    def load(name, export_dir, version):
        loads.append(version)
        if os.path.exists(os.path.join(export_dir, str(version), "damaged")):
            raise _Damaged(f"version {version} is damaged")
        model = FakeModel(name)
        model.version, model.path = version, os.path.join(export_dir, str(version))
        if gate is not None:
            model.gate = gate
        return model

    return load, loads


def _started(sources, load, **settings):
    client = TestClient(create_app(sources, ServerSettings(**settings), load=load))
    client.__enter__()
    assert client.app.state.registry.ready.wait(10)
    return client


def _states(client, name="gpt"):
    """(version, state, error code) of each version; empty before the first load starts."""
    answer = client.get(f"/v1/models/{name}")
    if answer.status_code == 503:
        return []
    status = answer.json()["model_version_status"]
    return [(s["version"], s["state"], s["status"]["error_code"]) for s in status]


def test_a_new_version_is_served_live_and_running_requests_finish_on_the_old(tmp_path, caplog):
    (tmp_path / "gpt/1").mkdir(parents=True)
    gate = threading.Event()
    gate.set()
    load, loads = _versioned_loader(gate)
    client = _started([("gpt", str(tmp_path / "gpt"))], load)
    registry = client.app.state.registry
    assert _states(client) == [("1", "AVAILABLE", "OK")]
    registry.poll()
    assert loads == [1]  # nothing new: nothing loaded again

    # A stream runs on version 1, held at the gate mid-way.
    gate.clear()
    answers = []
    body = {"model": "gpt", "max_tokens": 12, "stream": True, "seed": 1}
    thread = threading.Thread(
        target=lambda: answers.append(client.post("/v1/completions", json=body))
    )
    thread.start()
    old = registry.models["gpt"]
    deadline = time.monotonic() + 10
    while not old.stream_calls:
        assert time.monotonic() < deadline
        time.sleep(0.01)

    # Version 2 appears; a partial export beside it is not a version.
    (tmp_path / "gpt/.partial-3-1-0123abcd-host").mkdir()
    (tmp_path / "gpt/2").mkdir()
    registry.poll()
    assert loads == [1, 2] and registry.models["gpt"].version == 2
    assert _states(client) == [("2", "AVAILABLE", "OK"), ("1", "END", "OK")]
    gate.set()
    thread.join(10)
    events = [json.loads(e[6:]) for e in answers[0].text.split("\n\n") if e.startswith("data: {")]
    assert {e["system_fingerprint"] for e in events} == {"gpt/versions/1"}
    assert old.pieces_made == 3 and registry.models["gpt"].pieces_made == 0

    # New requests, and the model list, are on version 2.
    answer = client.post("/v1/completions", json={"model": "gpt", "max_tokens": 4}).json()
    assert answer["system_fingerprint"] == "gpt/versions/2"
    assert client.get("/v1/models").json()["data"][0]["version"] == "2"
    predict = client.post("/v1/models/gpt:predict", json={"instances": ["ab"]})
    assert predict.headers["x-model-version"] == "2"
    assert (
        client.post("/v1/models/gpt/versions/1:predict", json={"instances": ["a"]}).status_code
        == 404
    )
    assert (
        client.get("/v1/models/gpt/versions/2").json()["model_version_status"][0]["state"]
        == "AVAILABLE"
    )
    assert client.get("/v1/models/gpt/versions/7").status_code == 404

    # A damaged version 3 is refused once, with one log line; version 2 keeps serving.
    (tmp_path / "gpt/3").mkdir()
    (tmp_path / "gpt/3/damaged").write_text("x")
    with caplog.at_level(logging.ERROR, logger="tf_bigmodels.serving"):
        for _ in range(3):
            registry.poll()
    assert loads == [1, 2, 3]  # tried once, not at every scan
    refused = [r for r in caplog.records if "version 3" in r.getMessage()]
    assert len(refused) == 1 and "keeping version 2" in refused[0].getMessage()
    status = client.get("/v1/models/gpt").json()["model_version_status"]
    assert [(s["version"], s["state"]) for s in status] == [
        ("3", "END"),
        ("2", "AVAILABLE"),
        ("1", "END"),
    ]
    assert status[0]["status"]["error_code"] == "UNKNOWN"
    assert "version 3 is damaged" in status[0]["status"]["error_message"]
    assert client.post("/v1/completions", json={"model": "gpt"}).json()["system_fingerprint"] == (
        "gpt/versions/2"
    )

    # Once its files change (a copy that was caught half-way goes on), it is tried again.
    (tmp_path / "gpt/3/damaged").unlink()
    registry.poll()
    assert loads == [1, 2, 3, 3] and registry.models["gpt"].version == 3
    client.__exit__(None, None, None)


def test_an_export_directory_that_cannot_be_scanned_is_logged_once_and_scanned_again(
    tmp_path, monkeypatch, caplog
):
    from tf_bigmodels.serving import versions

    (tmp_path / "gpt/1").mkdir(parents=True)
    load, loads = _versioned_loader()
    client = _started([("gpt", str(tmp_path / "gpt"))], load)
    registry = client.app.state.registry
    scan = versions.export_versions

    def unreadable(export_dir):
        raise PermissionError(13, "Permission denied", export_dir)

    monkeypatch.setattr(versions, "export_versions", unreadable)
    with caplog.at_level(logging.ERROR, logger="tf_bigmodels.serving"):
        for _ in range(3):
            registry.poll()
    assert len([r for r in caplog.records if "cannot scan" in r.getMessage()]) == 1
    monkeypatch.setattr(versions, "export_versions", scan)
    (tmp_path / "gpt/2").mkdir()
    registry.poll()
    assert registry.models["gpt"].version == 2 and loads == [1, 2]
    client.__exit__(None, None, None)


def test_the_scan_runs_by_itself_every_poll_seconds(tmp_path):
    (tmp_path / "gpt/1").mkdir(parents=True)
    load, loads = _versioned_loader()
    client = TestClient(create_app([("gpt", str(tmp_path / "gpt"))], load=load, poll_seconds=0.05))
    with client:
        assert client.app.state.registry.ready.wait(10)
        (tmp_path / "gpt/2").mkdir()
        deadline = time.monotonic() + 10
        while client.get("/v1/models").json()["data"][0]["version"] != "2":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert _states(client)[0] == ("2", "AVAILABLE", "OK")


def test_a_version_shows_loading_while_it_loads_and_readiness_waits_for_the_warm_up(tmp_path):
    (tmp_path / "gpt/1").mkdir(parents=True)
    release = {1: threading.Event(), 2: threading.Event()}
    load, _ = _versioned_loader()

    def slow_load(name, export_dir, version):
        model = load(name, export_dir, version)
        model.warm_up = lambda **batching: release[version].wait(10)  # it holds the load
        return model

    client = TestClient(create_app([("gpt", str(tmp_path / "gpt"))], load=slow_load))
    with client:
        registry = client.app.state.registry
        deadline = time.monotonic() + 10
        while _states(client) != [("1", "LOADING", "OK")]:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert client.get("/readyz").status_code == 503  # loaded, not yet warmed up
        release[1].set()
        assert registry.ready.wait(10)
        assert client.get("/readyz").status_code == 200
        (tmp_path / "gpt/2").mkdir()
        poll = threading.Thread(target=registry.poll)
        poll.start()
        while _states(client)[0] != ("2", "LOADING", "OK"):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert _states(client)[1] == ("1", "AVAILABLE", "OK")
        assert client.get("/v1/models").json()["data"][0]["version"] == "1"
        release[2].set()
        poll.join(10)
        assert _states(client) == [("2", "AVAILABLE", "OK"), ("1", "END", "OK")]


def test_draining_turns_readiness_off_refuses_new_requests_and_lets_running_ones_finish():
    gpt = FakeModel("gpt")
    client = _started([gpt], None)
    drain = client.app.state.drain
    gpt.gate.clear()
    answers = []
    body = {"model": "gpt", "max_tokens": 8, "stream": True}
    thread = threading.Thread(
        target=lambda: answers.append(client.post("/v1/completions", json=body))
    )
    thread.start()
    deadline = time.monotonic() + 10
    while drain.running == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert client.get("/readyz").status_code == 200
    drain.begin(30)
    assert not drain.over()  # a request still runs
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "stopping"
    assert client.get("/healthz").status_code == 200
    for method, path, payload in [
        ("POST", "/v1/completions", {"model": "gpt"}),
        ("POST", "/v1/models/gpt:predict", {"instances": ["a"]}),
        ("GET", "/v1/models", None),
    ]:
        refused = client.request(method, path, json=payload)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1", path
    gpt.gate.set()
    thread.join(10)
    assert answers[0].status_code == 200 and answers[0].text.endswith("data: [DONE]\n\n")
    assert drain.over()  # nothing runs any more: the server may stop
    metrics = client.get("/monitoring/prometheus/metrics").text
    # Refused before routing, as a wrong API key is: counted under "unmatched".
    assert 'tf_bigmodels_requests_total{route="unmatched",status="503"} 3.0' in metrics
    client.__exit__(None, None, None)


def _sample(text, name, **labels):
    selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = rf"^{name}\{{{selector}\}} (\S+)$" if labels else rf"^{name} (\S+)$"
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else None


def test_every_metric_is_exposed_at_tf_servings_path_and_moves():
    gpt = FakeModel("gpt")
    client = _started([gpt], None, max_concurrency=1, max_queue=1)
    path = "/monitoring/prometheus/metrics"
    before = client.get(path).text
    names = [
        "tf_bigmodels_requests_total",
        "tf_bigmodels_request_seconds",
        "tf_bigmodels_tokens_generated_total",
        "tf_bigmodels_generations_total",
        "tf_bigmodels_queue_waiting",
    ]
    for name in names:
        assert f"# TYPE {name} " in before, name
    assert _sample(before, "tf_bigmodels_queue_waiting") == 0.0

    client.post("/v1/completions", json={"model": "gpt", "max_tokens": 8})
    client.post("/v1/models/gpt:predict", json={"instances": ["a"]})
    client.post("/v1/models/gpt:predict", json={"nonsense": 1})
    # One call holds the only slot, one waits: the queue gauge shows it.
    gpt.gate.clear()
    threads = [
        threading.Thread(
            target=client.post,
            args=("/v1/models/gpt:predict",),
            kwargs={"json": {"instances": ["a"]}},
        )
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while _sample(client.get(path).text, "tf_bigmodels_queue_waiting") != 1.0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    gpt.gate.set()
    for thread in threads:
        thread.join(10)
    after = client.get(path).text
    assert _sample(after, "tf_bigmodels_requests_total", route="/v1/completions", status="200") == 1
    assert (
        _sample(
            after, "tf_bigmodels_requests_total", route="/v1/models/{name}:predict", status="200"
        )
        == 3
    )
    assert (
        _sample(
            after, "tf_bigmodels_requests_total", route="/v1/models/{name}:predict", status="400"
        )
        == 1
    )
    assert (
        _sample(after, "tf_bigmodels_request_seconds_count", route="/v1/models/{name}:predict") == 4
    )
    buckets = re.findall(
        r'^tf_bigmodels_request_seconds_bucket\{le="[^"]+",route="/v1/completions"\} (\S+)$',
        after,
        re.M,
    )
    assert buckets and float(buckets[-1]) == 1  # the +Inf bucket holds the one completion
    assert _sample(after, "tf_bigmodels_tokens_generated_total", model="gpt") == 8
    assert _sample(after, "tf_bigmodels_generations_total", model="gpt", outcome="completed") == 1
    assert _sample(after, "tf_bigmodels_queue_waiting") == 0.0
    client.__exit__(None, None, None)


# Real processes: a tiny GPT served by `python -m tf_bigmodels serve`.


def _xla_modules(directory):
    """The XLA programs compiled so far (XLA dumps each one's HLO once, before optimizing)."""
    return {n for n in os.listdir(directory) if n.endswith(".before_optimizations.txt")}


@pytest.mark.slow
def test_the_first_requests_after_ready_compile_nothing(tmp_path):
    export_tiny_gpt(tmp_path / "gpt", 1, max_length=32, jit_compile=True)
    dumps = tmp_path / "xla"
    # At most 3 rows: the batched loop runs at batch sizes 1, 2 and 3 (3 rows take 3, not the
    # next power of two), and the warm-up compiles those, not the default's 4, 8 and 16.
    server = ServerProcess(
        [str(tmp_path / "gpt")],
        "--max-batch-size",
        "3",
        env={"XLA_FLAGS": f"--xla_dump_to={dumps}"},
    )
    try:
        server.wait_ready()
        compiled = _xla_modules(dumps)
        assert compiled  # the warm-up compiled the decode programs
        url = f"{server.url}/v1/completions"
        first = [
            {"model": "gpt", "prompt": "To be"},  # OpenAI's defaults: 16 tokens
            {"model": "gpt", "prompt": "", "max_tokens": 31, "stream": True, "temperature": 0},
            {"model": "gpt", "prompt": "To be", "n": 2},  # two rows: a batch of 2
            {"model": "gpt", "prompt": "To be", "n": 3},  # the largest batch
            {"model": "gpt", "prompt": "To be, or not to be, that is", "max_tokens": 3},
            {"model": "gpt", "prompt": "To be, or not to be, that is the question", "stream": True},
        ]
        for body in first:
            assert httpx.post(url, json=body, timeout=120).status_code == 200
        for signature, inputs in [
            ("serving_default", {"prompts": ["To be"]}),
            ("generate", {"prompts": ["To be"], "max_new_tokens": 4, "temperature": 0.0}),
        ]:
            if signature == "generate":
                inputs.update(top_k=0, top_p=1.0, seed=0)
            answer = httpx.post(
                f"{server.url}/v1/models/gpt:predict",
                json={"signature_name": signature, "inputs": inputs},
                timeout=120,
            )
            assert answer.status_code == 200, answer.text
        assert _xla_modules(dumps) == compiled
        # The measure sees a compilation: `logits` compiles once per input shape (it is not
        # bucketed), and the warm-up ran one shape only.
        logits = {"signature_name": "logits", "inputs": {"token_ids": [[1, 2, 3]]}}
        httpx.post(f"{server.url}/v1/models/gpt:predict", json=logits, timeout=120)
        assert _xla_modules(dumps) > compiled
    finally:
        server.stop()


def _stream_texts(lines):
    """Each choice's text from the `data:` lines of a completion stream, and whether it ended
    with [DONE]."""
    texts, done = {}, False
    for line in lines:
        if line == "data: [DONE]":
            done = True
        elif line.startswith("data: "):
            for choice in json.loads(line[6:])["choices"]:
                texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
    return texts, done


# 16 choices of 255 tokens, one after the other: a request that runs for seconds.
_LONG = {"model": "gpt", "prompt": "To be", "max_tokens": 255, "n": 16, "temperature": 0}


@pytest.fixture(scope="module")
def long_gpt(tmp_path_factory):
    directory = tmp_path_factory.mktemp("served") / "gpt"
    export_tiny_gpt(directory, 2, max_length=256)
    return str(directory)


@pytest.mark.slow
def test_sigterm_lets_a_running_stream_finish_refuses_new_requests_and_exits_0(long_gpt):
    server = ServerProcess([long_gpt])
    try:
        server.wait_ready()
        url = f"{server.url}/v1/completions"
        expected = httpx.post(url, json=_LONG, timeout=300).json()["choices"]
        with httpx.stream("POST", url, json={**_LONG, "stream": True}, timeout=300) as stream:
            lines = stream.iter_lines()
            received = [next(line for line in lines if line.startswith("data: "))]
            server.process.send_signal(signal.SIGTERM)
            ready = httpx.get(f"{server.url}/readyz", timeout=30)
            while ready.json()["status"] != "stopping":  # the signal is handled between ticks
                ready = httpx.get(f"{server.url}/readyz", timeout=30)
            assert ready.status_code == 503
            refused = httpx.post(url, json={"model": "gpt", "max_tokens": 1}, timeout=30)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            received += list(lines)
        texts, done = _stream_texts(received)
        assert done and texts == {c["index"]: c["text"] for c in expected}
        assert server.process.wait(60) == 0, server.output
    finally:
        server.stop()
    assert "Traceback" not in server.output, server.output


@pytest.mark.slow
def test_a_request_still_running_when_the_drain_time_ends_is_cut_and_the_exit_is_0(long_gpt):
    # One row at a time, as before batching: 16 rows of 255 tokens outlast the 0.2 s by far.
    server = ServerProcess([long_gpt], "--drain-seconds", "0.2", "--max-batch-size", "1")
    try:
        server.wait_ready()
        received = []
        body = {**_LONG, "stream": True}
        with (
            pytest.raises(httpx.HTTPError),  # the connection closes mid-stream
            httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=300) as stream,
        ):
            for line in stream.iter_lines():
                received.append(line)
                if len(received) == 1:
                    server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(60) == 0, server.output
        assert not _stream_texts(received)[1]  # no [DONE]: it was cut
    finally:
        server.stop()
