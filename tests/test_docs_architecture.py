"""The direction of imports that docs/architecture.md describes holds in the code.

Each package's modules are parsed (not imported) and every `tf_bigmodels` import they make is
checked against the table below, which is the table of docs/architecture.md.
"""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tf_bigmodels"

# Allowed to be imported by every part: the argument checks, `tf.function` without AutoGraph,
# TensorFlow loaded with its start-up lines hidden (the command lines of `cli` and `serving`) and
# the package root's version. The root's own names and the private leaf modules every part may use.
EVERYWHERE = {
    "_checks",
    "_tracing",
    "_startup",
    "",
    "__version__",
    "_version",
    "register_keras_objects",
}
# part -> the other parts of tf_bigmodels its modules may import.
ALLOWED = {
    "layers": set(),
    "models": {"layers"},
    "tokenizers": set(),
    "data": {"tokenizers"},
    "convert": {"layers", "models"},
    "export": {"models", "tokenizers", "run_directory"},
    "training": {
        "layers",
        "models",
        "tokenizers",
        "data",
        "export",
        "litert",
        "convert",
        "run_directory",
    },
    "serving": {"export", "litert", "tokenizers", "run_directory"},
    "litert": {"layers", "models", "tokenizers", "run_directory"},
    "plot": {"models", "tokenizers", "training", "run_directory"},
    "run_directory": set(),
    "_checks": set(),
    "_tracing": set(),
    "_version": set(),
    "_flags": set(),
    "_startup": set(),
    "cli": None,  # the command line may import every part
    "__init__": None,  # the package root registers the layers, models and training with Keras
    "__main__": {"cli"},
}


def _part(path):
    """The part of the package a module belongs to: its subpackage, or its module's name."""
    relative = path.relative_to(PACKAGE).parts
    return relative[0].removesuffix(".py")


def _imported_parts(path):
    """The parts of tf_bigmodels that the module at `path` imports, with the line of each."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = list(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            if module == "tf_bigmodels":  # `from tf_bigmodels import x`: x is the part
                modules = [f"tf_bigmodels.{alias.name}" for alias in node.names]
            else:
                modules = [module]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            if parts[0] == "tf_bigmodels":
                found.append((parts[1] if len(parts) > 1 else "", node.lineno))
    return found


def _violations(package_dir):
    violations = []
    for path in sorted(package_dir.rglob("*.py")):
        part = _part(path)
        allowed = ALLOWED.get(part, set())
        if allowed is None:
            continue
        for imported, line in _imported_parts(path):
            if imported != part and imported not in allowed | EVERYWHERE:
                violations.append(f"{path.relative_to(ROOT)}:{line} imports {imported}")
    return violations


def test_every_part_imports_only_what_the_architecture_allows():
    assert _violations(PACKAGE) == []


def test_every_part_of_the_package_is_in_the_table():
    parts = {_part(path) for path in PACKAGE.rglob("*.py")}
    assert parts - set(ALLOWED) == set()


def test_a_wrong_import_is_caught(tmp_path):
    # models must not know about training; a models module that imports it is reported.
    fake = tmp_path / "tf_bigmodels"
    (fake / "models").mkdir(parents=True)
    (fake / "models" / "x.py").write_text("from tf_bigmodels.training import train\n")
    (fake / "models" / "y.py").write_text("from ..layers import TransformerLayer\n")
    global ROOT, PACKAGE
    saved = ROOT, PACKAGE
    ROOT, PACKAGE = tmp_path, fake
    try:
        assert _violations(fake) == ["tf_bigmodels/models/x.py:1 imports training"]
    finally:
        ROOT, PACKAGE = saved


@pytest.mark.parametrize("page", ["architecture.md", "architecture.zh-CN.md"])
def test_the_page_shows_the_same_table(page):
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]*) \|", text, flags=re.M))
    for part, allowed in ALLOWED.items():
        if part.startswith("_"):  # private modules and the package's own files
            continue
        shown = set(re.findall(r"`(\w+)`", rows[part]))
        expected = {"everything"} if allowed is None else allowed
        assert shown == expected, part
