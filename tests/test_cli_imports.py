"""How the package's modules import each other: no cycles, and the cheap entry points stay cheap."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

import tf_bigmodels

PACKAGE = pathlib.Path(tf_bigmodels.__file__).parent


def _module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path, modules):
    """The package's modules that the file `path` imports, anywhere in it (functions included)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            # `from package import module` imports the module; `from module import name` it.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        found.update(target for target in targets if target in modules)
    found.discard(name)
    return found


def _graph():
    paths = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    # A package's __init__ is run by importing any of its modules; an edge to a package's
    # module is an edge to that module only (lazy __init__ files import nothing else).
    return {name: _imports(path, paths) for name, path in paths.items()}


def _cycle(graph):
    """One import cycle of `graph` (a list of module names), or None."""
    state = {}

    def visit(node, trail):
        state[node] = "open"
        for successor in sorted(graph.get(node, ())):
            if state.get(successor) == "open":
                return trail[trail.index(successor) :] + [successor]
            if successor not in state:
                found = visit(successor, trail + [successor])
                if found:
                    return found
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [node])
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_among_the_packages_modules():
    graph = _graph()
    assert "tf_bigmodels.training.tasks" in graph["tf_bigmodels.training.loading"]
    assert _cycle(graph) is None


def test_export_and_the_layout_never_depend_on_training():
    graph = _graph()
    for name, imported in graph.items():
        if name.startswith(("tf_bigmodels.export", "tf_bigmodels.run_directory")):
            assert not any(m.startswith("tf_bigmodels.training") for m in imported), name
        if name.startswith("tf_bigmodels.models") or name.startswith("tf_bigmodels.layers"):
            assert not any(m.startswith("tf_bigmodels.training") for m in imported), name


def _run_python(code):
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
    )


def test_import_is_cheap():
    result = _run_python(
        "import sys, tf_bigmodels as tfb\n"
        "print('tensorflow' in sys.modules, 'tf_bigmodels.models' in sys.modules)\n"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False", "False"]


@pytest.mark.slow
def test_a_run_model_loads_without_custom_objects_after_first_use(tmp_path):
    from tf_bigmodels.training import RunConfig, task_for

    task = task_for(RunConfig(preset="gpt-test").resolved())
    task.compiled_model(258).save(tmp_path / "m.keras")
    # A fresh process: the package imported, one part used, then a compiled model (its AdamW
    # and schedule included) loads with no custom_objects.
    load = f"keras.saving.load_model({str(tmp_path / 'm.keras')!r})"
    used = _run_python(
        "import sys, keras, tf_bigmodels as tfb\n"
        "print('tf_bigmodels.models' in sys.modules)\n"
        "tfb.layers\n"
        f"print(type({load}).__name__)"
    )
    assert used.returncode == 0 and used.stdout.split() == ["False", "GPTModel"], used.stderr
    registered = _run_python(
        f"import keras, tf_bigmodels as tfb\ntfb.register_keras_objects()\nprint({load}.optimizer.name)"
    )
    assert registered.returncode == 0 and "adam" in registered.stdout, registered.stderr[-2000:]
    unregistered = _run_python(f"import keras, tf_bigmodels\n{load}")
    assert unregistered.returncode != 0  # the negative control: nothing registered yet
