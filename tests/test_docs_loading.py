"""The guides' snippets that load an export run, exactly as written, in a fresh process.

Each snippet is taken from its page and run against tiny exports made here, in a process that
has never imported tf_bigmodels. A negative control shows why the snippets import
tensorflow_text: without it, a SentencePiece or WordPiece export does not load.
"""

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from tf_bigmodels.data import load_corpus
from tf_bigmodels.export import export_bert, export_gpt
from tf_bigmodels.models import BERTEncoder, BERTPretrainer, GPTModel
from tf_bigmodels.tokenizers import ByteTokenizer, SentencePieceTokenizer, WordPieceTokenizer

ROOT = pathlib.Path(__file__).resolve().parents[1]
NO_PACKAGE = (
    "\nimport sys\n"
    "assert not any(name.startswith('tf_bigmodels') for name in sys.modules), 'tf_bigmodels'\n"
)


def _export_snippet():
    """The ```py block of docs/export.md that loads the exports."""
    blocks = re.findall(
        r"^```py\n(.*?)^```", (ROOT / "docs" / "export.md").read_text(), re.S | re.M
    )
    (snippet,) = [block for block in blocks if "tf.saved_model.load" in block]
    return snippet


def _readme_snippet():
    """The Python program of the README's quick tour (step 4), between `<<'PY'` and `PY`."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.search(r"^python - <<'PY'\n(.*?)^PY$", text, flags=re.S | re.M).group(1)


def _gpt(vocab_size):
    model = GPTModel(vocab_size, 32, 2, 64, 1, rate=0.0, max_length=128)
    model(np.zeros((1, 1), "int32"))
    return model


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A working directory holding exports/gpt (SentencePiece), exports/bert (WordPiece) and the
    quick tour's runs/tour/export (byte level), each tiny.

    Without XLA: a snippet loads and calls an export the same way either way, and compiling
    would only slow its process down. The quick tour's test runs the README's snippet on an
    export made with XLA, as the command line makes it."""
    directory = tmp_path_factory.mktemp("loading")
    gpt_options = dict(max_new_tokens=8, jit_compile=False)
    poems = load_corpus("tangshi")[:300]
    pieces = SentencePieceTokenizer.train(poems, vocab_size=4000)  # at most; fewer are learned
    export_gpt(_gpt(pieces.vocab_size), pieces, directory / "exports" / "gpt", **gpt_options)
    words = WordPieceTokenizer.train(
        ["the king wore the crown .", "a dog ran in the park ."] * 30, vocab_size=60, verbose=False
    )
    encoder = BERTEncoder(words.vocab_size, 32, 2, 64, 1, rate=0.0, max_length=32)
    export_bert(
        BERTPretrainer(encoder), words, directory / "exports" / "bert", top_k=3, jit_compile=False
    )
    byte = ByteTokenizer()
    export_gpt(_gpt(byte.vocab_size), byte, directory / "runs" / "tour" / "export", **gpt_options)
    return directory


def _run(program, cwd):
    return subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=""),
    )


@pytest.mark.slow
@pytest.mark.parametrize("snippet", [_export_snippet, _readme_snippet], ids=["export", "readme"])
def test_the_loading_snippet_runs_as_written_in_a_fresh_process(snippet, exports):
    result = _run(snippet() + NO_PACKAGE, exports)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip()


@pytest.mark.slow
def test_without_tensorflow_text_a_sentencepiece_export_does_not_load(exports):
    snippet = _export_snippet()
    assert "import tensorflow_text" in snippet
    without = "\n".join(line for line in snippet.splitlines() if "tensorflow_text" not in line)
    result = _run(without, exports)
    assert result.returncode != 0
    assert "not registered" in result.stderr or "Op type" in result.stderr, result.stderr[-2000:]
