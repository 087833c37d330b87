"""The everyday lane (`pytest -m "not slow"`) still reaches every module of the package.

A module counts as reached when a doc example of it runs in the lane (one that does not train a
run: the root conftest marks those slow), or when a
test file imports it (or a name defined in it) at module level or inside a test that is not
marked slow. `python -m tf_bigmodels` run by a fast test reaches `tf_bigmodels.__main__`, and a
private helper module (`_checks`) is reached through a reached module that imports it.
"""

import ast
import doctest
import importlib
import inspect
import pathlib
import pkgutil
import re

from helpers import root_conftest

import tf_bigmodels

TESTS = pathlib.Path(__file__).resolve().parent


def _modules():
    names = ["tf_bigmodels"]
    for info in pkgutil.walk_packages(tf_bigmodels.__path__, "tf_bigmodels."):
        names.append(info.name)
    return sorted(names)


def _has_doc_examples(name):
    if name.endswith("__main__"):  # pytest does not collect the doc examples of __main__
        return False
    module = importlib.import_module(name)
    return any(
        not example.options.get(doctest.SKIP)
        for test in doctest.DocTestFinder(exclude_empty=True).find(module, name)
        if not any(root_conftest().SLOW_DOC_EXAMPLE in e.source for e in test.examples)
        for example in test.examples
    )


def _is_slow(node):
    """Whether a `pytestmark = ...` assignment or a decorator list marks slow."""
    return "mark.slow" in ast.unparse(node)


def _imported_names(node):
    """(module, name or None) for each import under `node`."""
    for child in ast.walk(node):
        if isinstance(child, ast.Import):
            yield from ((alias.name, None) for alias in child.names)
        elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
            yield from ((child.module, alias.name) for alias in child.names)


def _resolve(module_name, name):
    """The tf_bigmodels modules an import names: the module, and where the name is defined."""
    if not module_name.startswith("tf_bigmodels"):
        return set()
    module = importlib.import_module(module_name)
    reached = {module.__name__}
    if name is not None and hasattr(module, name):
        value = getattr(module, name)
        reached.add(value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", ""))
    return reached


def _reached_by_fast_tests():
    reached = set()
    for path in sorted(TESTS.glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(
            isinstance(s, ast.Assign)
            and any(getattr(t, "id", None) == "pytestmark" for t in s.targets)
            and _is_slow(s)
            for s in tree.body
        ):
            continue  # every test of the file is slow
        scopes = []
        for statement in tree.body:
            if isinstance(statement, (ast.FunctionDef, ast.ClassDef)):
                slow = any(_is_slow(d) for d in statement.decorator_list)
                if not slow:
                    scopes.append(statement)
            else:
                scopes.append(statement)
        for scope in scopes:
            for module_name, name in _imported_names(scope):
                reached |= _resolve(module_name, name)
            if not isinstance(scope, ast.Assign):
                for package in _MAIN.findall(ast.unparse(scope)):
                    reached.add(f"{package}.__main__")
    return reached


# `python -m tf_bigmodels[.part]` in a test's code: it reaches that package's `__main__`.
_MAIN = re.compile(r"""["']-m["'], ["'](tf_bigmodels(?:\.\w+)*)["']""")


def _with_private_helpers(reached):
    """Adds the private modules (`_checks`, `_ids`, ...) that reached modules import: they are
    reached through them."""
    todo = list(reached)
    while todo:
        name = todo.pop()
        if name.endswith("__main__") or name not in _modules():
            continue
        tree = ast.parse(inspect.getsource(importlib.import_module(name)))
        for module_name, imported in _imported_names(tree):
            for found in _resolve(module_name, imported):
                if found.rsplit(".", 1)[-1].startswith("_") and found not in reached:
                    reached.add(found)
                    todo.append(found)
    return reached


def test_every_module_is_reached_by_the_fast_lane():
    reached = _reached_by_fast_tests()
    reached |= {name for name in _modules() if _has_doc_examples(name)}
    reached = _with_private_helpers(reached)
    missing = [name for name in _modules() if name not in reached]
    assert not missing, f"modules that no fast test or doc example reaches: {missing}"


def test_the_check_sees_a_module_that_nothing_reaches(tmp_path):
    assert "tf_bigmodels.plot" in _reached_by_fast_tests()  # test_plot.py imports it
    assert _has_doc_examples("tf_bigmodels.run_directory")
    assert not _has_doc_examples("tf_bigmodels.__main__")
    source = "import pytest\npytestmark = pytest.mark.slow\nfrom tf_bigmodels import plot\n"
    tree = ast.parse(source)
    assert _is_slow(tree.body[1])
