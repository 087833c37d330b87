"""The run directory's layout is known in one module, and every reader of a run goes through it."""

import ast
import pathlib

import numpy as np

import tf_bigmodels
from tf_bigmodels import run_directory
from tf_bigmodels.run_directory import RunDirectory, export_versions, newest_version

PACKAGE = pathlib.Path(tf_bigmodels.__file__).parent
# The names of the layout; only run_directory.py may spell them in code.
LAYOUT_NAMES = {
    run_directory.CONFIG,
    run_directory.METRICS,
    run_directory.MODEL,
    run_directory.BEST_MODEL,
    run_directory.CHECKPOINTS,
}


def _code_strings(path):
    """The string constants of a module's code: docstrings are left out (they may describe the
    layout to users), f-string pieces are kept."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def test_only_the_owner_module_spells_the_layout():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "run_directory.py":
            continue
        for text in _code_strings(path):
            if text in LAYOUT_NAMES:
                offenders.append(f"{path.relative_to(PACKAGE)}: {text!r}")
        source = path.read_text(encoding="utf-8")
        if ".isdigit()" in source:  # a scan for numeric version directories
            offenders.append(f"{path.relative_to(PACKAGE)}: a digit scan")
    assert offenders == []


def test_the_owner_check_sees_a_layout_name_in_code(tmp_path):
    module = tmp_path / "m.py"
    module.write_text('"""Writes config.json."""\nPATH = "config.json"\n')
    assert _code_strings(module) == ["config.json"]  # the docstring is not counted


def test_run_directory_paths_and_contents(tmp_path):
    run = RunDirectory(tmp_path / "gpt")
    assert not run.exists() and not run.has_trained() and run.checkpoint_steps() == []
    run.checkpoints.mkdir(parents=True)
    for name in ("ckpt-10.index", "ckpt-10.data-00000-of-00001", "ckpt-30.index", "checkpoint"):
        (run.checkpoints / name).touch()
    run.config.write_text("{}")
    assert run.exists() and run.has_trained() and run.checkpoint_steps() == [30, 10]
    assert RunDirectory.containing(run.checkpoints).path == run.path
    assert RunDirectory.containing(run.model).path == run.path
    assert RunDirectory.containing(tmp_path) is None


def test_export_versions_are_positive_numeric_directories(tmp_path):
    for name in ("1", "2", "10", "0", ".partial-3-1-ab", "٣"):
        (tmp_path / name).mkdir()
    (tmp_path / "4").touch()  # a file is not a version
    assert export_versions(tmp_path) == [1, 2, 10]
    assert newest_version(tmp_path) == str(tmp_path / "10")
    assert export_versions(tmp_path / "missing") == [] and newest_version(tmp_path / "x") is None


def test_load_generator_takes_a_run_directory(tmp_path):
    """As `tf-bigmodels generate` does: a run directory stands for its newest SavedModel, else
    its final model with the tokenizer it saved."""
    from tf_bigmodels.export import load_generator
    from tf_bigmodels.models import GPTModel

    run = RunDirectory(tmp_path / "gpt")
    run.path.mkdir()
    model = GPTModel(258, 16, 2, 32, 1, rate=0.0, max_length=8)
    model(np.zeros((1, 8), "int32"))
    model.save(run.model)
    run.config.write_text('{"model": "gpt"}')
    generator, tokenizer = load_generator(run.path)
    assert type(generator).__name__ == "GPTModel" and tokenizer.vocab_size == 258
    np.testing.assert_array_equal(generator.get_weights()[0], model.get_weights()[0])
