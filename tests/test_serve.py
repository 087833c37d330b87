"""`tf-bigmodels serve` as a user runs it: a real process serving real exports.

One tiny GPT, BERT pre-trainer and BERT classifier are exported once for the module and served
by one `python -m tf_bigmodels serve` process on a free port, stopped with SIGTERM at the end
(the last test checks that it exits 0). Clients: plain HTTP with the serving guide's TF Serving requests (read from the page),
the official `openai` package, and Chromium driven by Playwright for the page.

Set TF_BIGMODELS_SCREENSHOT=docs/images/serve-page.png to keep the page's screenshot.
"""

import functools
import os
import pathlib
import re
import signal
import socket
import tempfile

import httpx
import openai
import pytest
from helpers import drain, is_tensorflow_log_line
from serving_fixtures import ServerProcess, export_tiny_models

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
# Generous: two cores are shared with other work, and a first call builds its graph.
post = functools.partial(httpx.post, timeout=120)
get = functools.partial(httpx.get, timeout=120)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return export_tiny_models(tmp_path_factory.mktemp("exports"))


@pytest.fixture(scope="module")
def server(exports):
    process = ServerProcess([exports["gpt"], exports["bert"], exports["sentiment"]])
    try:
        yield process.wait_ready()
    finally:
        process.stop()


def _metric(server, name, **labels):
    """The value of one Prometheus sample (0 if absent)."""
    text = get(f"{server.url}/monitoring/prometheus/metrics").text
    selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    match = re.search(rf"^{name}\{{{selector}\}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_startup_prints_each_model_and_the_url_on_loopback(server):
    assert re.search(
        r"^gpt: version 1 \(gpt\), signatures generate, logits, serving_default$",
        server.output,
        re.M,
    )
    assert re.search(
        r"^bert: version 1 \(bert_pretrainer\), signatures encode_pair, fill_mask",
        server.output,
        re.M,
    )
    assert f"Ready: http://127.0.0.1:{server.port}/" in server.output
    # Its stderr is in the output too: none of TensorFlow's start-up lines (without --verbose).
    assert not any(map(is_tensorflow_log_line, server.output.splitlines())), server.output
    # Bound to the loopback address only: another address of this machine refuses.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent; picks the outgoing interface
            address = probe.getsockname()[0]
        except OSError:
            address = "127.0.0.1"
    if address.startswith("127."):
        pytest.skip("this machine has no address but loopback")
    with pytest.raises(httpx.ConnectError):
        get(f"http://{address}:{server.port}/healthz")


def _documented_requests():
    """Every `curl` request of the serving guide's TF Serving section, as (path, body or None)."""
    page = (pathlib.Path(__file__).parent.parent / "docs" / "serving.md").read_text("utf-8")
    section = page.split("## 2. TF Serving's REST API", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = re.split(r"\n(?=curl )", re.sub(r"#[^\n']*", "", block).strip())
    requests = []
    for command in commands:
        body = re.search(r"-d '(.*?)'", command, re.S)
        path = re.search(r"localhost:8501(/\S+)", command).group(1)
        requests.append((path, body.group(1) if body else None))
    return requests


def test_the_documented_tf_serving_requests_work_verbatim(server):
    requests = _documented_requests()
    assert len(requests) == 7
    for path, body in requests:
        answer = get(server.url + path) if body is None else post(server.url + path, content=body)
        assert answer.status_code == 200, (path, body, answer.text)
    predict = f"{server.url}/v1/models/gpt:predict"
    bodies = [body for path, body in requests if path == "/v1/models/gpt:predict"]
    assert post(predict, content=bodies[1]).json() == post(predict, content=bodies[1]).json()
    logits = post(server.url + requests[4][0], content=requests[4][1]).json()["outputs"]
    assert (len(logits), len(logits[0]), len(logits[0][0])) == (1, 5, 258)


def test_the_bert_and_classifier_routes(server):
    predict = f"{server.url}/v1/models/gpt:predict"
    rows = post(
        f"{server.url}/v1/models/sentiment/versions/1:predict",
        json={"instances": ["good", "bad ."]},
    ).json()["predictions"]
    assert [r["label_name"] in ("负面 negative", "正面 positive") for r in rows] == [True, True]
    assert all(abs(sum(r["probabilities"]) - 1) < 1e-5 for r in rows)
    filled = post(
        f"{server.url}/v1/models/bert:predict",
        json={"signature_name": "fill_mask", "instances": ["the [MASK] sat on the [MASK] ."]},
    ).json()["predictions"][0]
    assert filled["mask_counts"] == 2 and len(filled["tokens"][0]) == 3

    status = get(f"{server.url}/v1/models/bert").json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    metadata = get(f"{server.url}/v1/models/gpt/metadata").json()
    generate = metadata["metadata"]["signature_def"]["signature_def"]["generate"]
    assert generate["inputs"]["max_new_tokens"]["dtype"] == "DT_INT32"
    assert generate["outputs"]["completions"]["dtype"] == "DT_STRING"

    # The graph's own input checks reach the client as a 400 naming the input, nothing more.
    bad = post(
        predict,
        json={
            "signature_name": "generate",
            "inputs": {
                "prompts": ["a"],
                "max_new_tokens": 9999,
                "temperature": 1.0,
                "top_k": 0,
                "top_p": 1.0,
                "seed": 1,
            },
        },
    )
    assert bad.status_code == 400
    assert "`max_new_tokens` must be in" in bad.json()["error"]
    assert "node" not in bad.json()["error"] and "Traceback" not in bad.text
    wrong = post(predict, json={"signature_name": "nope", "instances": ["a"]})
    assert wrong.status_code == 404 and "generate" in wrong.json()["error"]
    assert get(f"{server.url}/healthz").status_code == 200


def test_hostile_requests_get_a_400_and_the_real_server_keeps_serving(server):
    gpt, bert = f"{server.url}/v1/models/gpt:predict", f"{server.url}/v1/models/bert:predict"
    generate = {
        "prompts": ["a"],
        "max_new_tokens": 2,
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 1.0,
        "seed": 1,
    }
    bad = [
        (gpt, {"inputs": {"prompts": [["nested"]]}}),
        (gpt, {"inputs": {"prompts": "a scalar"}}),
        (gpt, {"instances": [1, 2]}),
        (gpt, {"signature_name": "generate", "inputs": {**generate, "top_k": -1}}),
        (gpt, {"signature_name": "generate", "inputs": {**generate, "top_p": 2.0}}),
        (gpt, {"signature_name": "generate", "inputs": {**generate, "max_new_tokens": [1, 2]}}),
        (gpt, {"signature_name": "generate", "inputs": {**generate, "seed": "7"}}),
        (gpt, {"signature_name": "generate", "inputs": {**generate, "temperature": 1e39}}),
        (gpt, {"signature_name": "logits", "inputs": {"token_ids": [[300]]}}),
        (gpt, {"signature_name": "logits", "inputs": {"token_ids": [[1] * 300]}}),
        (gpt, {"signature_name": "logits", "inputs": {"token_ids": [[1], [1, 2]]}}),
        (
            bert,
            {"signature_name": "encode_pair", "inputs": {"text": ["a", "b"], "text_pair": ["c"]}},
        ),
        (bert, {"signature_name": "fill_mask", "inputs": {"text": [["a"]]}}),
        (f"{server.url}/v1/completions", {"model": "gpt", "prompt": "a", "max_tokens": -1}),
    ]
    for url, body in bad:
        response = post(url, json=body)
        assert response.status_code == 400, (body, response.text)
        assert "Traceback" not in response.text and "{{node" not in response.text
    good = post(gpt, json={"signature_name": "generate", "inputs": generate})
    assert good.status_code == 200 and len(good.json()["outputs"]) == 1


def test_the_openai_client(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["bert", "gpt", "sentiment"]
    plain = client.completions.create(model="gpt", prompt="To be", max_tokens=24, seed=7)
    assert plain.object == "text_completion" and len(plain.choices) == 1
    assert plain.usage.prompt_tokens == 5  # the byte tokenizer: one token per byte
    assert 0 < plain.usage.completion_tokens <= 24
    again = client.completions.create(model="gpt", prompt="To be", max_tokens=24, seed=7)
    assert again.choices[0].text == plain.choices[0].text
    other = client.completions.create(model="gpt", prompt="To be", max_tokens=24, seed=8)
    assert other.choices[0].text != plain.choices[0].text

    several = client.completions.create(model="gpt", prompt="你好", max_tokens=16, n=3, seed=1)
    assert [c.index for c in several.choices] == [0, 1, 2]
    assert len({c.text for c in several.choices}) == 3

    stream = client.completions.create(
        model="gpt",
        prompt="To be",
        max_tokens=24,
        seed=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    assert streamed == plain.choices[0].text  # the same seed, streamed or not
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens

    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="nope", prompt="a")
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="gpt", prompt="a", max_tokens=10_000)
    with pytest.raises(openai.BadRequestError, match="/v1/completions"):
        client.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "hi"}])


def test_usage_and_finish_reason_are_counted_as_decoded(server, exports):
    """Not by tokenizing the text again: this untrained byte-level GPT writes bytes that are
    not UTF-8 (read back as U+FFFD, 3 bytes each) and cuts characters at the limit (dropped),
    so its text's bytes are not its tokens."""
    from tf_bigmodels.export import load_generator, stream_text

    source = load_generator(exports["gpt"])
    decoded, found = {}, {}
    for seed in range(300):  # a text the end token ended, and one its bytes would miscount
        text, (new_tokens, ended) = drain(stream_text(source, "To be", 24, seed=seed))
        decoded[seed] = text, new_tokens, ended
        if ended:
            found.setdefault("ended", seed)
        if min(len(text.encode()), 24) != new_tokens:
            found.setdefault("miscounted", seed)
        if len(found) == 2:
            break
    assert set(found) == {"ended", "miscounted"}
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    for seed in found.values():
        text, new_tokens, ended = decoded[seed]
        answer = client.completions.create(model="gpt", prompt="To be", max_tokens=24, seed=seed)
        assert answer.choices[0].text == text
        assert answer.usage.completion_tokens == new_tokens
        assert answer.choices[0].finish_reason == ("stop" if ended else "length")


def test_a_client_leaving_mid_stream_stops_its_generation(server):
    body = {"model": "gpt", "prompt": "To be", "max_tokens": 255, "temperature": 1.0}
    url = f"{server.url}/v1/completions"
    # A seed whose text runs long (a random model may draw its end-of-text token early).
    for seed in range(20):
        before = _metric(server, "tf_bigmodels_tokens_generated_total", model="gpt")
        post(url, json={**body, "seed": seed})
        full = _metric(server, "tf_bigmodels_tokens_generated_total", model="gpt") - before
        if full >= 128:
            break
    assert full >= 128
    before = _metric(server, "tf_bigmodels_tokens_generated_total", model="gpt")
    left = _metric(server, "tf_bigmodels_generations_total", model="gpt", outcome="disconnected")
    with httpx.stream(
        "POST", url, json={**body, "seed": seed, "stream": True}, timeout=120
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                break  # one chunk read, then the connection closes
    for _ in range(100):
        gone = _metric(
            server, "tf_bigmodels_generations_total", model="gpt", outcome="disconnected"
        )
        if gone > left:
            break
        get(f"{server.url}/healthz")
    assert gone == left + 1
    generated = _metric(server, "tf_bigmodels_tokens_generated_total", model="gpt") - before
    assert 0 < generated < full


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM}")
def test_the_page_in_a_real_browser(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            tempfile.mkdtemp(dir=tmp_path),  # a fresh, empty profile
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
            viewport={"width": 900, "height": 1000},
        )
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            expect(page.locator("#model option")).to_have_count(3)
            page.select_option("#model", "sentiment")
            expect(page.locator("#prompt-label-zh")).to_have_text("待分类文本")
            page.fill("#prompt", "the cat is good")
            page.click("#run")
            expect(page.locator("#output table tr")).to_have_count(3)  # header + 2 classes
            expect(page.locator("#output")).to_contain_text("正面 positive")

            page.select_option("#model", "bert")
            page.fill("#prompt", "the [MASK] sat .")
            page.click("#run")
            expect(page.locator("#output table tr")).to_have_count(4)  # header + top 3

            page.select_option("#model", "gpt")
            page.fill("#prompt", "床前明月光，To be")
            page.fill("#max-tokens", "200")
            page.fill("#seed", "3")
            page.click("#run")
            # Text arrives in several pieces while it is generated, then the stream ends.
            page.wait_for_function("Number(document.getElementById('output').dataset.chunks) >= 2")
            expect(page.locator("#status")).to_contain_text("Done / 完成", timeout=120_000)
            streamed = page.evaluate("document.getElementById('output').textContent")
            page.screenshot(
                path=os.environ.get("TF_BIGMODELS_SCREENSHOT") or str(tmp_path / "page.png"),
                full_page=True,
            )
        finally:
            browser.close()
    body = {"model": "gpt", "prompt": "床前明月光，To be", "max_tokens": 200, "seed": 3}
    text = post(f"{server.url}/v1/completions", json={**body, "temperature": 0.8}).json()
    assert streamed == text["choices"][0]["text"]  # the page showed the whole text


def test_a_non_loopback_address_without_a_key_warns_and_sigint_stops_cleanly(exports):
    process = ServerProcess([exports["sentiment"]], "--host", "0.0.0.0")
    try:
        process.wait_ready()
        assert "WARNING: serving on 0.0.0.0" in process.output
        assert process.stop(signal.SIGINT) == 0
    finally:
        process.stop()
    keyed = ServerProcess([exports["sentiment"]], "--host", "0.0.0.0", "--api-key", "k")
    try:
        keyed.wait_for_line("Loading sentiment")
        assert "WARNING" not in keyed.output
    finally:
        keyed.stop()


def test_sigterm_stops_the_server_cleanly(server):
    assert get(f"{server.url}/healthz").status_code == 200
    assert server.stop(signal.SIGTERM) == 0, server.output
    assert "Traceback" not in server.output, server.output


def test_a_model_that_cannot_load_ends_serve_with_status_2(tmp_path):
    (tmp_path / "broken/1").mkdir(parents=True)
    (tmp_path / "broken/1/saved_model.pb").write_bytes(b"not a SavedModel")
    process = ServerProcess([str(tmp_path / "broken")])
    try:
        assert process.process.wait(120) == 2
    finally:
        process.stop()
    assert "tf-bigmodels serve: error: cannot load the models" in process.output
