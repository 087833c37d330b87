"""Batching across requests: rows with their own settings, joining and leaving at chunk boundaries.

A tiny real GPT export (byte tokenizer, d_model 16, one layer, max_length 64, no XLA so that
nothing compiles) is decoded by the real `ContinuousBatcher` and by the real app in-process. The
reference for every text is `stream_text` on the same export, one request alone.
"""

import argparse
import json
import pathlib
import re
import threading

import keras
import pytest
import tensorflow as tf
from helpers import drain
from starlette.testclient import TestClient

from tf_bigmodels.export import (
    BatcherFull,
    ContinuousBatcher,
    GenerationSettings,
    export_gpt,
    load_generator,
    stream_text,
)
from tf_bigmodels.models import GPTModel, generation
from tf_bigmodels.serving import ServedModel, ServerSettings, cli, create_app
from tf_bigmodels.tokenizers import ByteTokenizer

# Other prompts, lengths, languages and settings: greedy, top-k, top-p, both, plain sampling.
REQUESTS = [
    ("To be, or not to be", GenerationSettings(40, temperature=0.0)),
    ("你好，世界", GenerationSettings(12, temperature=0.9, top_k=20, seed=3)),
    ("ab", GenerationSettings(30, temperature=1.2, top_p=0.9, seed=7)),
    ("The quick brown fox jumps", GenerationSettings(5, temperature=1.0, seed=11)),
    ("", GenerationSettings(20, temperature=0.7, top_k=5, top_p=0.8, seed=1)),
]


@pytest.fixture(scope="module")
def export_path(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = GPTModel(258, 16, 2, 32, 1, rate=0.0, max_length=64)
    root = tmp_path_factory.mktemp("exports")
    return export_gpt(model, ByteTokenizer(), root / "gpt", max_new_tokens=8, jit_compile=False)


@pytest.fixture(scope="module")
def source(export_path):
    return load_generator(export_path)


@pytest.fixture(scope="module")
def loaded(export_path):
    return tf.saved_model.load(export_path)


@pytest.fixture(scope="module")
def alone(source):
    """Each request decoded alone by `stream_text`: its text, and how it ended (`(new_tokens,
    ended)`)."""
    return [
        drain(
            stream_text(
                source,
                prompt,
                s.max_new_tokens,
                temperature=s.temperature,
                top_k=s.top_k,
                top_p=s.top_p,
                seed=s.seed,
                chunk_tokens=4,
            )
        )
        for prompt, s in REQUESTS
    ]


class _Collector:
    """Texts, first-update and finish events of rows submitted to a batcher, by name."""

    def __init__(self, batcher):
        self.batcher, self.texts, self.finished_order = batcher, {}, []
        self.started, self.finished, self.tickets = {}, {}, {}

    def submit(self, name, request):
        self.texts[name] = ""
        self.started[name], self.finished[name] = threading.Event(), threading.Event()

        def on_update(index, piece, finished, error):
            assert error is None, error
            self.texts[name] += piece
            self.started[name].set()
            if finished:
                self.finished_order.append(name)
                self.finished[name].set()

        try:
            self.tickets[name] = self.batcher.submit([request], on_update)
            return self.tickets[name]
        except BatcherFull:
            del self.texts[name], self.started[name], self.finished[name]
            raise

    def wait(self):
        assert all(event.wait(120) for event in self.finished.values())


def test_a_text_is_the_same_alone_or_batched_with_others_joining_at_other_times(source, alone):
    sizes = []
    batcher = ContinuousBatcher(source, max_batch_size=4, chunk_tokens=4, on_chunk=sizes.append)
    rows = _Collector(batcher)
    try:
        rows.submit(0, REQUESTS[0])
        assert rows.started[0].wait(60)  # row 0 is decoding: the others join a running batch
        rows.submit(1, REQUESTS[1])
        rows.submit(2, REQUESTS[2])
        assert rows.started[1].wait(60)
        rows.submit(3, REQUESTS[3])
        rows.submit(4, REQUESTS[4])  # five rows, a batch of four: one waits for a free slot
        rows.wait()
    finally:
        batcher.close()
    assert [rows.texts[i] for i in range(len(REQUESTS))] == [text for text, _ in alone]
    # And each ended as it did alone: as many tokens, the end token or the limit.
    assert [rows.tickets[i].end(0) for i in range(len(REQUESTS))] == [end for _, end in alone]
    assert sizes[0] == 1 and max(sizes) == 4  # alone at first, then batched


def test_a_short_request_leaves_the_batch_while_a_long_one_goes_on(source):
    sizes = []
    batcher = ContinuousBatcher(source, max_batch_size=4, chunk_tokens=4, on_chunk=sizes.append)
    rows = _Collector(batcher)
    try:
        rows.submit("long", ("To be", GenerationSettings(60, temperature=0.0)))
        assert rows.started["long"].wait(60)
        rows.submit("short", ("ab", GenerationSettings(4, temperature=0.0)))
        assert rows.finished["short"].wait(60)
        chunks_when_short_ended = len(sizes)
        rows.wait()
    finally:
        batcher.close()
    assert rows.finished_order == ["short", "long"]
    # The long row ran chunks alone after the short one left: one row per chunk again.
    assert sizes[chunks_when_short_ended:] and set(sizes[chunks_when_short_ended:]) == {1}
    assert 2 in sizes


def test_a_full_batcher_refuses_at_once_and_max_tokens_zero_ends_at_once(source):
    batcher = ContinuousBatcher(source, max_batch_size=1, max_queue=1, chunk_tokens=4)
    rows = _Collector(batcher)
    try:
        rows.submit("zero", ("ab", GenerationSettings(0)))
        assert rows.finished["zero"].is_set() and rows.texts["zero"] == ""
        assert rows.tickets["zero"].end(0) == (0, False)
        rows.submit("running", ("To be", GenerationSettings(60, temperature=0.0)))
        rows.submit("waiting", ("To be", GenerationSettings(60, temperature=0.0)))
        with pytest.raises(BatcherFull, match="1 \\+ 1"):
            rows.submit("refused", ("To be", GenerationSettings(4, temperature=0.0)))
        rows.wait()
    finally:
        batcher.close()


def test_sample_next_token_takes_one_setting_per_row():
    logits = tf.random.stateless_normal([4, 50], [1, 2]) * 3
    keys = tf.constant([[1, 2], [3, 4], [5, 6], [7, 8]])
    temperature, top_k = [0.0, 0.8, 1.3, 1.0], [0, 5, 0, 3]
    top_p, step = [1.0, 1.0, 0.6, 0.9], [0, 4, 9, 2]
    together = generation.sample_next_token(
        logits,
        tf.constant(temperature),
        tf.constant(top_k),
        tf.constant(top_p),
        keys,
        tf.constant(step),
    )
    for row in range(4):  # each row alone, its settings as scalars: the same token
        alone = generation.sample_next_token(
            logits[row : row + 1],
            tf.constant(temperature[row]),
            tf.constant(top_k[row]),
            tf.constant(top_p[row]),
            keys[row : row + 1],
            tf.constant(step[row]),
        )
        assert int(alone[0]) == int(together[row])
    assert int(together[0]) == int(tf.argmax(logits[0]))  # temperature 0: greedy


def test_an_export_without_batched_decoding_still_serves_one_request_at_a_time(export_path):
    loaded = tf.saved_model.load(export_path)
    del loaded.decode_batch_steps  # as an export written before batching
    with pytest.raises(ValueError, match="export the GPT again"):
        ContinuousBatcher((loaded, None))
    model = ServedModel("old", 1, export_path, loaded)
    assert not model.batchable
    with _client([model]) as client:
        body = {"model": "old", "prompt": "To be", "max_tokens": 12, "temperature": 0}
        answer = client.post("/v1/completions", json=body)
        assert answer.status_code == 200
        expected, (new_tokens, ended) = drain(
            stream_text((loaded, None), "To be", 12, temperature=0.0)
        )
        assert answer.json()["choices"][0]["text"] == expected
        assert answer.json()["usage"]["completion_tokens"] == new_tokens
        assert answer.json()["choices"][0]["finish_reason"] == ("stop" if ended else "length")
        assert _histogram(client, "old")[1] == 0  # no batch ever ran


def _client(models, **settings):
    app = create_app(models, ServerSettings(**settings))
    client = TestClient(app, raise_server_exceptions=False)

    class _Ready:
        def __enter__(self):
            client.__enter__()
            assert app.state.registry.ready.wait(120)
            return client

        def __exit__(self, *exc):
            client.__exit__(*exc)
            for model in models:
                model.stop_batching()

    return _Ready()


def _histogram(client, model):
    """`(sum, count)` of the batch-size histogram of `model`."""
    text = client.get("/monitoring/prometheus/metrics").text
    values = []
    for name in ("sum", "count"):
        found = re.search(rf'^tf_bigmodels_batch_rows_{name}{{model="{model}"}} (\S+)$', text, re.M)
        values.append(float(found.group(1)) if found else 0.0)
    return tuple(values)


def test_concurrent_completions_and_streams_are_batched_and_the_histogram_moves(
    export_path, loaded, source
):
    model = ServedModel("gpt", 1, export_path, loaded)
    # A long wait gathers concurrent requests into one batch, whatever the thread timing.
    with _client([model], batch_wait_ms=1000, chunk_tokens=4) as client:
        assert "tf_bigmodels_batch_rows" in client.get("/monitoring/prometheus/metrics").text
        before = _histogram(client, "gpt")
        bodies = [
            {"model": "gpt", "prompt": "To be", "max_tokens": 10, "temperature": 0},
            {"model": "gpt", "prompt": "你好", "max_tokens": 16, "seed": 4, "top_k": 9},
            {"model": "gpt", "prompt": "ab", "max_tokens": 6, "seed": 2, "n": 2, "stream": True},
        ]
        answers = [None] * len(bodies)

        def call(i):
            answers[i] = client.post("/v1/completions", json=bodies[i])

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(bodies))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [a.status_code for a in answers] == [200, 200, 200]
        total, chunks = _histogram(client, "gpt")
        # Four rows (the stream's two choices are rows too) decoded together in some chunk.
        assert chunks > before[1] and total - before[0] > chunks - before[1]
        # The texts are those of each choice alone, streamed or not, and so are their token
        # counts and how they ended.
        for body, answer in zip(bodies[:2], answers[:2]):
            expected, (new_tokens, ended) = drain(
                stream_text(
                    source,
                    body["prompt"],
                    body["max_tokens"],
                    temperature=body.get("temperature", 1.0),
                    top_k=body.get("top_k"),
                    seed=body.get("seed"),
                )
            )
            (choice,) = answer.json()["choices"]
            assert choice["text"] == expected
            assert answer.json()["usage"]["completion_tokens"] == new_tokens
            assert choice["finish_reason"] == ("stop" if ended else "length")
        streamed = {0: "", 1: ""}
        events = [e[6:] for e in answers[2].text.split("\n\n") if e.startswith("data: ")]
        assert events[-1] == "[DONE]"
        for event in events[:-1]:
            for choice in json.loads(event)["choices"]:
                streamed[choice["index"]] += choice["text"]
        plain = client.post("/v1/completions", json={**bodies[2], "stream": False}).json()
        assert [streamed[0], streamed[1]] == [c["text"] for c in plain["choices"]]
        assert streamed[0] != streamed[1]  # choice i draws with seed + i


def test_a_full_batch_and_queue_answer_503_with_retry_after(export_path, loaded):
    model = ServedModel("gpt", 1, export_path, loaded)
    with _client([model], max_batch_size=1, max_queue=0) as client:
        body = {"model": "gpt", "prompt": "To be", "max_tokens": 4, "n": 2}
        refused = client.post("/v1/completions", json=body)  # two rows, room for one
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert "busy" in refused.json()["error"]["message"]
        assert client.post("/v1/completions", json={**body, "n": 1}).status_code == 200


def test_batching_options_are_in_the_help_and_the_docs_with_their_defaults():
    parser = cli.add_parser(argparse.ArgumentParser().add_subparsers())
    text = " ".join(parser.format_help().split())
    for option, default in [("--max-batch-size", "16"), ("--batch-wait-ms", "0.0")]:
        assert re.search(rf"{option} \S+ .*?\(default: {re.escape(default)}\)", text), option
        args = parser.parse_args(["gpt=exports/gpt", option, "3"])
        settings_name = option[2:].replace("-", "_")
        assert float(getattr(args, settings_name)) == 3
    for page in ("docs/serving.md", "docs/serving.zh-CN.md"):
        doc = pathlib.Path(__file__).parent.parent.joinpath(page).read_text("utf-8")
        for option, default in [("--max-batch-size", "16"), ("--batch-wait-ms", "0")]:
            assert re.search(rf"`{option}` \| {default} \|", doc), (page, option)


@pytest.mark.slow
def test_a_real_server_batches_concurrent_requests_and_each_text_stays_its_own(export_path):
    import concurrent.futures

    import httpx
    from serving_fixtures import ServerProcess

    server = ServerProcess([f"gpt={pathlib.Path(export_path).parent}"], "--batch-wait-ms", "500")
    try:
        server.wait_ready()
        url = f"{server.url}/v1/completions"
        bodies = [
            {
                "model": "gpt",
                "prompt": p,
                "max_tokens": s.max_new_tokens,
                "temperature": s.temperature,
            }
            | ({} if s.seed is None else {"seed": s.seed})
            | ({} if s.top_k is None else {"top_k": s.top_k})
            | ({} if s.top_p is None else {"top_p": s.top_p})
            for p, s in REQUESTS
        ]

        def text(body):
            answer = httpx.post(url, json=body, timeout=120)
            assert answer.status_code == 200, answer.text
            return answer.json()["choices"][0]["text"]

        def histogram():
            metrics = httpx.get(f"{server.url}/monitoring/prometheus/metrics").text
            return [
                float(
                    re.search(
                        rf'^tf_bigmodels_batch_rows_{n}{{model="gpt"}} (\S+)$', metrics, re.M
                    )[1]
                )
                for n in ("sum", "count")
            ]

        alone = [text(body) for body in bodies]  # one after the other: batches of one row
        total, chunks = histogram()
        assert total == chunks
        with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
            together = list(pool.map(text, bodies))
        assert together == alone
        total_after, chunks_after = histogram()
        assert total_after - total > chunks_after - chunks  # some chunk decoded several rows
    finally:
        server.stop()
