"""`tf-bigmodels serve` under concurrent clients: throughput and latency with continuous batching.

An asyncio load generator (`httpx.AsyncClient`) sends OpenAI completion requests to real
`python -m tf_bigmodels serve` processes on free ports and measures, at 1, 4, 16 and 64
concurrent clients (each client sends its next request when the last one is answered):

- aggregate new tokens/s (the answers' `usage.completion_tokens` over the level's wall time),
- p50 and p99 latency of all answered requests, the p99 of short ones (`max_tokens` <= 32) and
  the median of long ones (`max_tokens` 256),
- statuses: 200, 503 (whether each had `Retry-After` and an error object: "clean") and others.

The workload is mixed and seeded: prompts in English and Chinese of 8 to 200 tokens (bytes with
the byte tokenizer), `max_tokens` from 16 to 256, temperature 0.8 with a seed per request. The
models are random-weight exports built here (no downloads), byte tokenizer, XLA-compiled:

- `nano`: 4 layers, 4 heads, width 128, dff 512, context 512 (nanoGPT's CPU shape with a
  context that holds a 200-token prompt and 256 new tokens);
- `124m`: GPT-2 124M's shape (12 layers, 12 heads, width 768, dff 3072, context 1024), with the
  byte tokenizer's 258-token vocabulary instead of GPT-2's 50257.

Servers: one with the default batching (`--max-batch-size 16 --max-queue 16`) serving both
models, and one with `--max-batch-size 1` (one completion at a time, the same queue) serving
`nano`, for the one-by-one baseline. Each server and model first gets an untimed pass at every
level (another seed's requests): the batch and the cache take power-of-two sizes, and a (batch,
cache) pair the server's own warm-up did not run compiles on its first use, so the timed levels
measure decoding, not compiling. The single-client level is the baseline of the same run.

Goals, each verdict computed from the measurements above:

1. `124m` at 16 clients >= 3x the tokens/s of one client.
2. In the 16-client `124m` mix, p99 latency of short requests <= 0.3x the median of long ones
   (a short request does not wait for the long ones in its batch).
3. `nano` with batching at least as fast (tokens/s) as one-by-one at every concurrency.
4. At 64 clients (queue 16), every refused request is a clean 503 and no other error occurs.
5. The batching server's RSS grows < 10% over 2,000 requests (16 clients) after warm-up.

It prints a markdown table and the goals, and writes JSON (`--out`). `--smoke` runs the same code
on a tiny model, a few requests per level and 1 and 4 clients (seconds; the verdicts then say
nothing about speed, only that they are computed).

Usage:
    python benchmarks/serving.py --out serving.json      # long: minutes to an hour on 2 cores
    python benchmarks/serving.py --smoke                 # seconds
"""

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import httpx  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = {
    "nano": dict(d_model=128, num_heads=4, dff=512, num_layers=4, max_length=512),
    "124m": dict(d_model=768, num_heads=12, dff=3072, num_layers=12, max_length=1024),
    "smoke": dict(d_model=16, num_heads=2, dff=32, num_layers=1, max_length=64),
}
FULL = dict(
    levels=(1, 4, 16, 64),
    requests=48,
    prompt_tokens=(8, 200),
    max_tokens=(16, 32, 64, 128, 256),
    short=32,
    long=256,
    rss_requests=2000,
    models={"nano": "nano", "124m": "124m"},
    jit_compile=True,
)
SMOKE = dict(
    levels=(1, 4),
    requests=8,
    prompt_tokens=(8, 24),
    max_tokens=(2, 4, 8),
    short=2,
    long=8,
    rss_requests=16,
    models={"nano": "smoke", "124m": "smoke"},
    jit_compile=False,
)
ENGLISH = (
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer the "
    "slings and arrows of outrageous fortune, or to take arms against a sea of troubles and by "
    "opposing end them. To die, to sleep, no more; and by a sleep to say we end the heart-ache "
    "and the thousand natural shocks that flesh is heir to. "
)
CHINESE = "床前明月光，疑是地上霜。举头望明月，低头思故乡。白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"


def workload(count, config, seed=0):
    """`count` (prompt, max_tokens) pairs: English or Chinese prompts of the configured token
    (byte) lengths, `max_tokens` drawn from the configured values."""
    draw = random.Random(seed)
    low, high = config["prompt_tokens"]
    requests = []
    for _ in range(count):
        length = draw.randint(low, high)
        if draw.random() < 0.5:
            text = (ENGLISH * (1 + high // len(ENGLISH)))[:length]
        else:  # 3 bytes per character
            text = (CHINESE * (1 + high // len(CHINESE)))[: max(1, length // 3)]
        requests.append((text, draw.choice(config["max_tokens"])))
    return requests


def build_exports(root, config):
    """Random-weight GPT exports of each model's shape; {name: export_dir}."""
    import keras

    from tf_bigmodels.export import export_gpt
    from tf_bigmodels.models import GPTModel
    from tf_bigmodels.tokenizers import ByteTokenizer

    paths = {}  # shape -> export_dir: the smoke run's two models share one export
    for shape in sorted(set(config["models"].values())):
        keras.utils.set_random_seed(0)
        model = GPTModel(258, rate=0.0, **SHAPES[shape])
        paths[shape] = os.path.join(root, shape)
        export_gpt(model, ByteTokenizer(), paths[shape], jit_compile=config["jit_compile"])
    return {name: paths[shape] for name, shape in config["models"].items()}


class Server:
    """`python -m tf_bigmodels serve` on a free port; `stop()` sends SIGTERM, then kills."""

    def __init__(self, models, *extra):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        arguments = [f"{name}={path}" for name, path in models.items()]
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (open while the server runs)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tf_bigmodels", "serve", *arguments, "--port", str(self.port)]
            + list(extra),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )

    def wait_ready(self, timeout=900):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"the server exited:\n{self.log.read()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"the server was not ready after {timeout} s")

    def rss_bytes(self):
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def run_level(url, model, clients, requests, config):
    """Sends `requests` with `clients` concurrent clients; the level's measurements."""
    results, next_index = [], iter(range(len(requests)))
    timeout = httpx.Timeout(600.0)
    limits = httpx.Limits(max_connections=clients + 1)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:

        async def one_client():
            for index in next_index:
                prompt, max_tokens = requests[index]
                body = {
                    "model": model,
                    "prompt": prompt,
                    "max_tokens": max_tokens,
                    "temperature": 0.8,
                    "seed": index,
                }
                start = time.perf_counter()
                try:
                    answer = await client.post("/v1/completions", json=body)
                    status = answer.status_code
                except httpx.HTTPError as error:
                    answer, status = None, f"{type(error).__name__}"
                latency = time.perf_counter() - start
                result = {"status": status, "latency": latency, "max_tokens": max_tokens}
                if status == 200:
                    result["tokens"] = answer.json()["usage"]["completion_tokens"]
                elif status == 503:
                    error = answer.json().get("error")
                    result["clean"] = "Retry-After" in answer.headers and bool(error)
                    await asyncio.sleep(0.05)  # a client that was told to retry later
                results.append(result)

        start = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        seconds = time.perf_counter() - start
    return summarize(results, clients, seconds, short=config["short"], long=config["long"])


def summarize(results, clients, seconds, *, short, long):
    """The level's row from its per-request results."""
    ok = [r for r in results if r["status"] == 200]
    refused = [r for r in results if r["status"] == 503]
    latencies = sorted(r["latency"] for r in ok)
    shorts = sorted(r["latency"] for r in ok if r["max_tokens"] <= short)
    longs = sorted(r["latency"] for r in ok if r["max_tokens"] >= long)
    tokens = sum(r["tokens"] for r in ok)
    return {
        "clients": clients,
        "requests": len(results),
        "ok": len(ok),
        "refused_503": len(refused),
        "clean_503": all(r["clean"] for r in refused),
        "other_errors": len(results) - len(ok) - len(refused),
        "seconds": seconds,
        "new_tokens": tokens,
        "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
        "p50_s": percentile(latencies, 50),
        "p99_s": percentile(latencies, 99),
        "short_p99_s": percentile(shorts, 99),
        "long_median_s": statistics.median(longs) if longs else None,
    }


def percentile(sorted_values, q):
    """The q-th percentile (nearest rank) of sorted values; None for none."""
    if not sorted_values:
        return None
    rank = max(1, -(-q * len(sorted_values) // 100))
    return sorted_values[int(rank) - 1]


def goals(rows, rss, config):
    """Each goal's measured value, target and verdict, from the rows and the RSS record."""

    def row(server, model, clients):
        found = [
            r for r in rows if (r["server"], r["model"], r["clients"]) == (server, model, clients)
        ]
        return found[0] if found else None

    levels = config["levels"]
    busy = 16 if 16 in levels else levels[-1]
    crowd = 64 if 64 in levels else levels[-1]
    one, many = row("batched", "124m", 1), row("batched", "124m", busy)
    speedup = many["tokens_per_s"] / one["tokens_per_s"] if one["tokens_per_s"] else 0.0
    short, long = many["short_p99_s"], many["long_median_s"]
    latency_ratio = short / long if short is not None and long else None
    nano = [
        (row("batched", "nano", c)["tokens_per_s"], row("one_by_one", "nano", c)["tokens_per_s"])
        for c in levels
    ]
    worst = min(b / o if o else float("inf") for b, o in nano)
    crowded = [r for r in rows if r["clients"] == crowd]
    other = sum(r["other_errors"] for r in crowded)
    clean = all(r["clean_503"] for r in crowded)
    growth = (rss["after"] - rss["before"]) / rss["before"]
    return [
        {
            "goal": f"124m tokens/s at {busy} clients / at 1 client",
            "measured": speedup,
            "target": ">= 3",
            "met": speedup >= 3,
        },
        {
            "goal": f"124m p99 short (<= {config['short']} tokens) / median long "
            f"({config['long']}) at {busy} clients",
            "measured": latency_ratio,
            "target": "<= 0.3",
            "met": latency_ratio is not None and latency_ratio <= 0.3,
        },
        {
            "goal": "nano tokens/s batched / one-by-one, worst concurrency",
            "measured": worst,
            "target": ">= 1",
            "met": worst >= 1,
        },
        {
            "goal": f"{crowd} clients, queue 16: other errors (503s clean: {clean})",
            "measured": other,
            "target": "0, every 503 clean",
            "met": other == 0 and clean,
        },
        {
            "goal": f"RSS growth over {rss['requests']} requests after warm-up",
            "measured": growth,
            "target": "< 0.10",
            "met": growth < 0.10,
        },
    ]


def table(rows, goal_rows):
    """The markdown report."""
    lines = [
        "| server | model | clients | ok | 503 | other | new tokens/s | p50 s | p99 s | "
        "short p99 s | long median s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def number(value):
        return "-" if value is None else f"{value:.3g}"

    for r in rows:
        lines.append(
            f"| {r['server']} | {r['model']} | {r['clients']} | {r['ok']} | {r['refused_503']} "
            f"| {r['other_errors']} | {r['tokens_per_s']:.1f} | {number(r['p50_s'])} | "
            f"{number(r['p99_s'])} | {number(r['short_p99_s'])} | {number(r['long_median_s'])} |"
        )
    lines += ["", "| goal | measured | target | met |", "|---|---:|---|---|"]
    for g in goal_rows:
        measured = g["measured"]
        shown = f"{measured:.3g}" if isinstance(measured, float) else str(measured)
        lines.append(f"| {g['goal']} | {shown} | {g['target']} | {'yes' if g['met'] else 'NO'} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, seconds")
    parser.add_argument("--out", help="write the JSON results here")
    parser.add_argument("--requests", type=int, help="requests per level (at least 2 per client)")
    args = parser.parse_args(argv)
    config = dict(SMOKE if args.smoke else FULL)
    if args.requests:
        config["requests"] = args.requests
    with tempfile.TemporaryDirectory() as root:
        exports = build_exports(root, config)
        servers = {
            "batched": Server(exports),
            "one_by_one": Server({"nano": exports["nano"]}, "--max-batch-size", "1"),
        }
        try:
            for server in servers.values():
                server.wait_ready()
            rows, rss = measure(servers, config)
        finally:
            for server in servers.values():
                server.stop()
    goal_rows = goals(rows, rss, config)
    print(table(rows, goal_rows))
    result = {"smoke": args.smoke, "config": config, "rows": rows, "rss": rss, "goals": goal_rows}
    print(json.dumps(result, indent=1, default=str))
    if args.out:
        with open(args.out, "w") as out:
            json.dump(result, out, indent=1, default=str)
    return 0


def measure(servers, config):
    """Every level on every server (untimed warm-up passes first), then the RSS run;
    `(rows, rss)`."""
    rows = []
    plan = [("batched", "124m"), ("batched", "nano"), ("one_by_one", "nano")]
    busy = 16 if 16 in config["levels"] else config["levels"][-1]
    for server_name, model in plan:
        server = servers[server_name]
        # The batch and the cache take power-of-two sizes, and each (batch, cache) pair that
        # the server's own warm-up did not run compiles on first use: an untimed pass at every
        # level first, so that the timed levels measure decoding, not compiling.
        for clients in config["levels"]:
            count = max(config["requests"], 2 * clients)
            warm = workload(count, config, seed=1000 + clients)
            asyncio.run(run_level(server.url, model, clients, warm, config))
        for clients in config["levels"]:
            count = max(config["requests"], 2 * clients)
            requests = workload(count, config, seed=clients)
            level = asyncio.run(run_level(server.url, model, clients, requests, config))
            level = {**level, "server": server_name, "model": model}
            rows.append(level)
            print(
                f"{server_name} {model} {clients} clients: {level['tokens_per_s']:.1f} tokens/s",
                file=sys.stderr,
                flush=True,
            )
    server = servers["batched"]
    before = server.rss_bytes()
    requests = workload(config["rss_requests"], config, seed=99)
    asyncio.run(run_level(server.url, "nano", busy, requests, config))
    rss = {"requests": config["rss_requests"], "before": before, "after": server.rss_bytes()}
    return rows, rss


if __name__ == "__main__":
    sys.exit(main())
