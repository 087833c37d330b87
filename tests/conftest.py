import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _float32_policy_and_seed():
    """Every test starts under the float32 policy with a fixed Keras seed."""
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(1234)
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
    """A corpus of the first 40,000 characters of the bundled tiny Shakespeare (1.1 MB), as a
    glob of 10 files (a file is one document; BERT pairs sentences across documents).

    For training runs whose corpus is not what a test is about: a BERT run learns its WordPiece
    vocabulary and cuts its sentence pairs from all of its corpus, which takes over a minute on
    the whole text and about a second on this part.
    """
    import importlib.resources

    text = importlib.resources.files("tf_bigmodels.data").joinpath("tinyshakespeare.txt")
    text = text.read_text(encoding="utf-8")[:40_000]
    directory = tmp_path_factory.mktemp("corpus")
    for index in range(10):
        part = text[index * 4_000 : (index + 1) * 4_000]
        (directory / f"part{index}.txt").write_text(part, encoding="utf-8")
    return str(directory / "*.txt")
