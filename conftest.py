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


# The test files that take longest on 2 cores (one test or fixture of minutes, or minutes in all).
# With two workers (`-n 2 --dist loadfile`, and pytest-xdist's reordering by test count turned off
# in setup.cfg) each file runs on one worker, in collection order: a long file collected last
# would keep the other worker idle for its whole length. These go first, so the run ends on short
# files that the two workers share.
LONG_FILES = (
    "test_readme_tour.py",
    "test_training.py",
    "test_benchmarks.py",
    "test_examples.py",
    "test_training_reliability.py",
    "test_export.py",
    "test_weight_compression.py",
)


def pytest_collection_modifyitems(items):
    for item in items:
        if type(item).__name__ == "DoctestItem" and any(
            SLOW_DOC_EXAMPLE in example.source for example in item.dtest.examples
        ):
            item.add_marker(pytest.mark.slow)
    rank = {name: index for index, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))  # stable
