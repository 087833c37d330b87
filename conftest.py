"""pytest settings shared by the tests and the doc examples (`--doctest-modules` over the package)."""

import pytest

# A script the training tests run in subprocesses: it trains at import, so doctest collection
# must not import it.
collect_ignore = ["tests/training_worker.py"]


@pytest.fixture(autouse=True)
def _doc_examples_run_in_a_temporary_directory(request, tmp_path, monkeypatch):
    """Doc examples write files such as `runs/` or `exports/` relative to the working directory;
    each runs in a fresh temporary one, so the checkout stays clean and examples stay independent."""
    if type(request.node).__name__ == "DoctestItem":  # pytest's class for doc examples
        monkeypatch.chdir(tmp_path)


# A doc example that trains a run (it calls `train(RunConfig(...))`) takes tens of seconds on a
# 2-core machine: it runs in the full suite, not in the everyday lane (`-m "not slow"`).
SLOW_DOC_EXAMPLE = "train(RunConfig("


def pytest_collection_modifyitems(items):
    for item in items:
        if type(item).__name__ == "DoctestItem" and any(
            SLOW_DOC_EXAMPLE in example.source for example in item.dtest.examples
        ):
            item.add_marker(pytest.mark.slow)
