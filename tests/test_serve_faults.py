"""A real server under a storm: 32 clients, new versions mid-way, SIGTERM at the end.

32 asyncio clients (httpx) send, in turns, greedy completions, greedy streams, TF Serving
predicts of the `generate` signature, invalid requests, and streams they cut off after the
first event. Once the server has answered a good many of them, version 2 of the model appears
in its export directory (renamed in, as an export does); later a damaged version 3, which must
be refused (one log line, its error in the version status) while version 2 keeps serving. Once
version 2 has answered a good many, the server gets SIGTERM while the clients keep sending.

Every valid request must get the complete, correct answer of the version that served it (each
answer names its version; greedy text is known in advance for each version) or a clean 503;
an invalid one a 4xx; nothing a 5xx other than 503. The server must not die before SIGTERM,
and must exit 0 after it.
"""

import asyncio
import json
import os
import signal

import httpx
import pytest
from serving_fixtures import ServerProcess, export_tiny_gpt

pytestmark = pytest.mark.slow

CLIENTS = 32
PROMPTS = ["To be", "", "你好", "The quick brown fox"]
MAX_TOKENS = [8, 20]
PREDICT_TOKENS = 8
# Answers to wait for before the new version appears, and from it before SIGTERM.
BEFORE_SWAP, AFTER_SWAP = 60, 60


def _expected(path):
    """The greedy texts of the export at `path`: completions by (prompt, max_tokens), and the
    `generate` signature's by prompt."""
    import tensorflow as tf

    from tf_bigmodels.export import load_generator, stream_text

    generator = load_generator(path)
    completions = {
        (prompt, n): "".join(stream_text(generator, prompt, n, temperature=0.0))
        for prompt in PROMPTS
        for n in MAX_TOKENS
    }
    generate = generator[0].signatures["generate"]
    outputs = generate(
        prompts=tf.constant(PROMPTS),
        max_new_tokens=tf.constant(PREDICT_TOKENS),
        temperature=tf.constant(0.0),
        top_k=tf.constant(0),
        top_p=tf.constant(1.0),
        seed=tf.constant(0),
    )["completions"].numpy()
    predicts = {p: t.decode("utf-8", "replace") for p, t in zip(PROMPTS, outputs)}
    return completions, predicts


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    served = root / "gpt"
    first = export_tiny_gpt(served, 11, max_length=32)
    second = export_tiny_gpt(
        root / "staging", 12, max_length=32
    )  # renamed into `served` as version 2
    expected = {1: _expected(first), 2: _expected(second)}
    assert expected[1] != expected[2]  # the versions' answers tell them apart
    damaged = root / "damaged"  # renamed in as version 3: not a SavedModel
    damaged.mkdir()
    (damaged / "saved_model.pb").write_bytes(b"not a SavedModel")
    return served, second, damaged, expected


class _Storm:
    """The clients' shared record: answers by version, failures, and the phase."""

    def __init__(self, server, expected):
        self.server, self.expected = server, expected
        self.answered = {1: 0, 2: 0}
        self.statuses = {}
        self.failures = []
        self.sigterm_sent = False
        self.stopped = asyncio.Event()

    def fail(self, what):
        self.failures.append(what)

    def answer(self, version):
        self.answered[version] += 1

    def status(self, code):
        self.statuses[code] = self.statuses.get(code, 0) + 1

    def check_503(self, response, what):
        """A 503 is clean: a JSON error and Retry-After. One from the drain stops the client."""
        if response.headers.get("retry-after") != "1":
            self.fail(f"{what}: a 503 without Retry-After")
        if "stopping" in response.text:
            if not self.sigterm_sent:
                self.fail(f"{what}: a 503 'stopping' before SIGTERM")
            return True
        return False


def _version(fingerprint):
    name, _, version = fingerprint.rpartition("/versions/")
    assert name == "gpt" and version in ("1", "2"), fingerprint  # never the damaged 3
    return int(version)


async def _completion(client, storm, turn):
    prompt, n = PROMPTS[turn % len(PROMPTS)], MAX_TOKENS[turn % len(MAX_TOKENS)]
    body = {"model": "gpt", "prompt": prompt, "max_tokens": n, "temperature": 0}
    response = await client.post("/v1/completions", json=body)
    storm.status(response.status_code)
    if response.status_code == 503:
        return storm.check_503(response, "completion")
    if response.status_code != 200:
        storm.fail(f"completion {body}: {response.status_code} {response.text[:200]}")
        return False
    answer = response.json()
    version = _version(answer["system_fingerprint"])
    if answer["choices"][0]["text"] != storm.expected[version][0][(prompt, n)]:
        storm.fail(f"completion {body} on version {version}: {answer['choices'][0]['text']!r}")
    storm.answer(version)
    return False


async def _stream(client, storm, turn, *, cut=False):
    prompt, n = PROMPTS[turn % len(PROMPTS)], MAX_TOKENS[(turn + 1) % len(MAX_TOKENS)]
    body = {"model": "gpt", "prompt": prompt, "max_tokens": n, "temperature": 0, "stream": True}
    async with client.stream("POST", "/v1/completions", json=body) as response:
        storm.status(response.status_code)
        if response.status_code == 503:
            await response.aread()
            return storm.check_503(response, "stream")
        if response.status_code != 200:
            storm.fail(f"stream {body}: {response.status_code}")
            return False
        text, fingerprints, done = "", set(), False
        try:
            async for line in response.aiter_lines():
                if cut:
                    return False  # leaves after the first line: the server must stop generating
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    event = json.loads(line[6:])
                    if "error" in event:
                        storm.fail(f"stream {body}: {event}")
                        return False
                    fingerprints.add(event["system_fingerprint"])
                    text += event["choices"][0]["text"] if event["choices"] else ""
        except httpx.TransportError as error:
            # A stream the server has begun is never cut, not even by the drain.
            storm.fail(f"stream {body}: cut after its status line: {error!r}")
            return False
    if not done or len(fingerprints) != 1:
        storm.fail(f"stream {body}: done={done}, versions {fingerprints}")
        return False
    version = _version(fingerprints.pop())
    if text != storm.expected[version][0][(prompt, n)]:
        storm.fail(f"stream {body} on version {version}: {text!r}")
    storm.answer(version)
    return False


async def _predict(client, storm, turn):
    prompt = PROMPTS[turn % len(PROMPTS)]
    inputs = {"prompts": [prompt], "max_new_tokens": PREDICT_TOKENS, "temperature": 0.0}
    inputs.update(top_k=0, top_p=1.0, seed=0)
    body = {"signature_name": "generate", "inputs": inputs}
    response = await client.post("/v1/models/gpt:predict", json=body)
    storm.status(response.status_code)
    if response.status_code == 503:
        return storm.check_503(response, "predict")
    if response.status_code != 200:
        storm.fail(f"predict {prompt!r}: {response.status_code} {response.text[:200]}")
        return False
    version = _version(f"gpt/versions/{response.headers['x-model-version']}")
    if response.json()["outputs"] != [storm.expected[version][1][prompt]]:
        storm.fail(f"predict {prompt!r} on version {version}: {response.text[:200]}")
    storm.answer(version)
    return False


_INVALID = [
    ("/v1/completions", b"{not json", 400),
    ("/v1/completions", {"model": "nope", "prompt": "a"}, 404),
    ("/v1/completions", {"model": "gpt", "max_tokens": 10**6}, 400),
    ("/v1/completions", {"model": "gpt", "temperature": "hot"}, 400),
    ("/v1/models/gpt:predict", {"signature_name": "nope", "instances": ["a"]}, 404),
    ("/v1/models/gpt:predict", {"inputs": {"prompts": [["ragged"], []]}}, 400),
    ("/v1/models/gpt/versions/99:predict", {"instances": ["a"]}, 404),
]


async def _invalid(client, storm, turn):
    path, body, status = _INVALID[turn % len(_INVALID)]
    if isinstance(body, bytes):
        response = await client.post(path, content=body)
    else:
        response = await client.post(path, json=body)
    storm.status(response.status_code)
    if response.status_code == 503:
        return storm.check_503(response, "invalid request")
    if response.status_code != status:
        storm.fail(f"invalid {path} {body!r}: {response.status_code} {response.text[:200]}")
    return False


async def _client(number, storm):
    kinds = [_completion, _stream, _predict, _invalid, _stream_cut]
    async with httpx.AsyncClient(base_url=storm.server.url, timeout=120) as client:
        turn = number
        while not storm.stopped.is_set():
            try:
                if await kinds[turn % len(kinds)](client, storm, turn // len(kinds)):
                    return  # the server is draining: this client is done
            except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError) as error:
                # Once the drain is over the server closes its connections: a request sent
                # then is refused unread, which is no answer at all (not a wrong one). The
                # client sees the close as a refused connection, a reset one (ReadError), or a
                # disconnection before any response; an answer cut once begun fails above.
                unread = isinstance(
                    error, (httpx.ConnectError, httpx.ReadError)
                ) or "without sending a response" in str(error)
                if not (storm.sigterm_sent and unread):
                    storm.fail(f"{kinds[turn % len(kinds)].__name__}: {error!r}")
                return
            except httpx.HTTPError as error:
                storm.fail(f"{kinds[turn % len(kinds)].__name__}: {error!r}")
                return
            turn += 1


async def _stream_cut(client, storm, turn):
    return await _stream(client, storm, turn, cut=True)


async def _conductor(storm, new_version, damaged, served):
    """Renames version 2 in once enough answers came, then a damaged version 3 once version 2
    has answered some, then sends SIGTERM once version 2 has answered enough."""
    while sum(storm.answered.values()) < BEFORE_SWAP and not storm.failures:
        await asyncio.sleep(0.05)
    os.rename(new_version, served / "2")
    while storm.answered[2] < AFTER_SWAP // 2 and not storm.failures:
        await asyncio.sleep(0.05)
    os.rename(damaged, served / "3")
    while storm.answered[2] < AFTER_SWAP and not storm.failures:
        await asyncio.sleep(0.05)
    status = None  # a failure already recorded skips the wait; the test reports that failure
    async with httpx.AsyncClient(base_url=storm.server.url) as client:
        while not storm.failures:  # version 3 is refused, with its error, and 2 still serves
            status = (await client.get("/v1/models/gpt")).json()["model_version_status"]
            if status[0]["version"] == "3" and status[0]["state"] == "END":
                break
            await asyncio.sleep(0.05)
        storm.status3 = status
    assert storm.server.process.poll() is None, storm.server.output  # alive until SIGTERM
    storm.sigterm_sent = True
    storm.server.process.send_signal(signal.SIGTERM)


async def _storm(server, expected, new_version, damaged, served):
    storm = _Storm(server, expected)
    clients = [asyncio.create_task(_client(i, storm)) for i in range(CLIENTS)]
    await _conductor(storm, new_version, damaged, served)
    await asyncio.wait_for(asyncio.gather(*clients), 120)
    return storm


def test_a_storm_of_clients_a_new_version_and_sigterm(versions):
    served, new_version, damaged, expected = versions
    server = ServerProcess(
        [str(served)], "--poll-seconds", "0.2", "--max-queue", "64", "--drain-seconds", "30"
    )
    try:
        server.wait_ready()
        storm = asyncio.run(_storm(server, expected, new_version, damaged, served))
        exit_status = server.process.wait(60)
    finally:
        server.stop()
    assert not storm.failures, (storm.failures[:10], storm.server.output[-6000:])
    assert storm.answered[1] >= BEFORE_SWAP // 2 and storm.answered[2] >= AFTER_SWAP
    assert [(s["version"], s["state"]) for s in storm.status3] == [
        ("3", "END"),
        ("2", "AVAILABLE"),
        ("1", "END"),
    ]
    assert storm.status3[0]["status"]["error_code"] != "OK"
    # Refused with one line, not one per scan (the server scanned every 0.2 s meanwhile).
    assert server.output.count("version 3 in") == 1, server.output
    assert not [s for s in storm.statuses if s >= 500 and s != 503], storm.statuses
    assert storm.statuses.get(503), storm.statuses  # the drain refused new requests
    assert exit_status == 0, server.output
    assert "Traceback" not in server.output, server.output
