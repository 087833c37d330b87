"""What the server's tests share: tiny exports, a server process, and a stand-in model.

- `export_tiny_models(root)`: a GPT (byte tokenizer, d_model 32, one layer, no XLA), a BERT
  pre-trainer and a BERT classifier, exported under `root` (`gpt/1`, `bert/1`, `sentiment/1`).
- `export_tiny_gpt(export_dir, seed)`: one more version of a tiny GPT.
- `ServerProcess`: `python -m tf_bigmodels serve ...` on a free port, waited for until `/readyz`
  says ready, always stopped (SIGTERM, then kill) by `stop()`.
- `FakeModel`: the methods the app calls on a `ServedModel`, in plain Python, so the HTTP
  behaviour (limits, errors, queue, streaming) is tested in-process in milliseconds; its
  generation can be held at a gate to make a request slow on purpose.
"""

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
from helpers import stop_process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPT_MAX_LENGTH = 256


def export_tiny_models(root):
    """Exports the three tiny models under `root`; returns {name: export_dir}.

    The weights are seeded, so what a test sees (a text that streams in several pieces, a seed
    whose text runs long) is the same on every run.
    """
    import keras

    from tf_bigmodels.export import export_bert, export_gpt
    from tf_bigmodels.models import BERTClassifier, BERTEncoder, BERTPretrainer, GPTModel
    from tf_bigmodels.tokenizers import ByteTokenizer, WordPieceTokenizer

    keras.utils.set_random_seed(0)
    gpt = GPTModel(258, 32, 2, 64, 1, rate=0.0, max_length=GPT_MAX_LENGTH)
    export_gpt(gpt, ByteTokenizer(), os.path.join(root, "gpt"), max_new_tokens=8, jit_compile=False)
    words = ["the", "cat", "sat", "on", "mat", "good", "bad", ".", "你", "好"]
    tokenizer = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])
    encoder = BERTEncoder(tokenizer.vocab_size, 16, 2, 32, 1, max_length=16)
    export_bert(
        BERTPretrainer(encoder), tokenizer, os.path.join(root, "bert"), top_k=3, jit_compile=False
    )
    classifier = BERTClassifier(encoder, 2)
    export_bert(
        classifier,
        tokenizer,
        os.path.join(root, "sentiment"),
        class_names=["负面 negative", "正面 positive"],
        jit_compile=False,
    )
    return {name: os.path.join(root, name) for name in ("gpt", "bert", "sentiment")}


def export_tiny_gpt(export_dir, seed, *, max_length=64, jit_compile=False):
    """Exports a tiny byte-level GPT whose weights come from `seed` (another seed, another
    text) as the next version of `export_dir`; returns the version's path."""
    import keras

    from tf_bigmodels.export import export_gpt
    from tf_bigmodels.models import GPTModel
    from tf_bigmodels.tokenizers import ByteTokenizer

    keras.utils.set_random_seed(seed)
    gpt = GPTModel(258, 32, 2, 64, 1, rate=0.0, max_length=max_length, initializer_range=0.3)
    return export_gpt(gpt, ByteTokenizer(), export_dir, max_new_tokens=8, jit_compile=jit_compile)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`tf-bigmodels serve` in a subprocess on a free port.

    Args:
        models: list of `[NAME=]PATH` arguments.
        extra: more command-line arguments.
        env: extra environment variables.
    """

    def __init__(self, models, *extra, env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "tf_bigmodels", "serve", *models, "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*command, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
        )
        self.lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self):
        return "".join(self.lines)

    def wait_ready(self, timeout=180):
        """Waits until `/readyz` answers 200; raises with the server's output otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited ({self.process.returncode}):\n{self.output}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"the server was not ready after {timeout} s:\n{self.output}")

    def wait_for_line(self, text, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            if text in self.output:
                return
            time.sleep(0.1)
        assert text in self.output, self.output

    def stop(self, sig=signal.SIGTERM):
        """Sends `sig` (SIGTERM, then a kill after 20 s); returns the exit status."""
        status = stop_process(self.process, 20, sig)
        self._reader.join(5)
        return status


class FakeModel:
    """A stand-in for `ServedModel`: a "GPT" whose text is drawn from the seed, or a
    "classifier"; generation waits at `gate` (set by default) before each piece.

    Args:
        name: str.
        kind: "gpt" or "bert_classifier".
        fail: an exception `predict` raises (to test the server's answer to a crash).
    """

    def __init__(self, name="gpt", kind="gpt", fail=None):
        self.name, self.kind, self.version, self.path = name, kind, 1, "/nowhere/1"
        self.max_tokens = 255 if kind == "gpt" else 0
        inputs = ["prompts"] if kind == "gpt" else ["text"]
        self.signatures = {"serving_default": inputs}
        if kind == "gpt":
            self.signatures["generate"] = ["max_new_tokens", "prompts", "seed"]
        self.fail = fail
        self.gate = threading.Event()
        self.gate.set()
        self.pieces_made = 0
        self.stream_calls = []
        self.end_after = None  # a number of tokens: the "GPT" then meets its end-of-text token

    def describe(self):
        return {
            "id": self.name,
            "object": "model",
            "kind": self.kind,
            "version": str(self.version),
            "max_tokens": self.max_tokens,
        }

    def warm_up(self, **batching):
        self.warmed_with = batching

    def metadata(self):
        return {"model_spec": {"name": self.name, "signature_name": "", "version": "1"}}

    def input_names(self, signature_name):
        from tf_bigmodels.serving.models import RequestError

        if signature_name not in self.signatures:
            raise RequestError(f"no signature {signature_name!r}", status=404)
        return self.signatures[signature_name]

    def predict(self, signature_name, inputs):
        from tf_bigmodels.serving.models import RequestError

        if self.fail is not None:
            raise self.fail
        self.gate.wait()
        if set(inputs) != set(self.input_names(signature_name)):
            raise RequestError(f"inputs must be {self.input_names(signature_name)}")
        texts = next(iter(inputs.values()))
        if not (isinstance(texts, list) and all(isinstance(t, str) for t in texts)):
            raise RequestError("input must be a list of strings")
        if self.kind == "gpt":
            return {"completions": [p[::-1] for p in texts]}
        return {
            "label": [0 for _ in inputs["text"]],
            "probabilities": [[0.75, 0.25]] * len(inputs["text"]),
        }

    def count_tokens(self, text):
        return max(1, len(text.encode("utf-8")))

    def stream(self, prompt, max_tokens, *, temperature, top_p, top_k, seed, chunk_tokens=16):
        self.stream_calls.append({"prompt": prompt, "max_tokens": max_tokens, "seed": seed})
        draw = random.Random(seed if seed is not None else random.random())
        made, limit = 0, min(max_tokens, self.end_after or max_tokens)
        while made < limit:
            self.gate.wait()
            count = min(4, limit - made)
            made += count
            self.pieces_made += 1
            yield "".join(draw.choice("abcdefgh ") for _ in range(count))
        return made, limit < max_tokens  # as `stream_text`: (new tokens, ended by the end token)
