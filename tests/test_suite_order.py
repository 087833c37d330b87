"""The full suite on two workers starts with its longest files, so it does not end on one of them."""

import configparser
import pathlib
import shlex
from types import SimpleNamespace

from helpers import root_conftest

TESTS = pathlib.Path(__file__).resolve().parent


def test_the_longest_files_are_collected_first_in_their_order():
    for name in root_conftest().LONG_FILES:
        assert (TESTS / name).is_file(), name
    names = ["test_a.py", "test_export.py", "test_b.py", "test_readme_tour.py", "test_a.py"]
    items = [SimpleNamespace(path=TESTS / name, index=i) for i, name in enumerate(names)]
    root_conftest().pytest_collection_modifyitems(items)
    assert [(item.path.name, item.index) for item in items] == [
        ("test_readme_tour.py", 3),
        ("test_export.py", 1),
        ("test_a.py", 0),
        ("test_b.py", 2),
        ("test_a.py", 4),
    ]


def test_pytest_xdist_keeps_the_collection_order():
    # By default pytest-xdist would hand out the files with the most tests first instead.
    setup = configparser.ConfigParser()
    setup.read(TESTS.parent / "setup.cfg")
    assert "--no-loadscope-reorder" in shlex.split(setup["tool:pytest"]["addopts"])
