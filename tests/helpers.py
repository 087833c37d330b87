"""Checks every layer and model must pass, so each test file states only what is special to it;
`TINY_GPT`, the settings of the training tests' tiny GPT runs, and `run_arrays`, what a run
ends with as arrays; `run_here`, the command line run by `main` in the test's own process;
`run_script` and `run_script_here`, a script (an example, a benchmark) run in a fresh process or
in the test's own one, and `run_example`, an example's `--smoke` run; `root_conftest`, the
repository's root `conftest.py` as a module.

`assert_layer_contract` verifies, for one class and one set of constructor arguments:
  * `get_config()` names every constructor argument, and `from_config` rebuilds an equal config;
  * eager and symbolic (`keras.Input`) calls give the expected output shapes, float32 outputs;
  * under `mixed_bfloat16` the outputs have the documented dtypes;
  * optionally, one `fit` step on a wrapping functional model changes the weights;
  * a `.keras` file saved here reloads in another Python process that imports only `keras` and
    `tf_bigmodels` (no `custom_objects`) and gives the same outputs (one such process serves
    every check of a test process).
"""

import atexit
import contextlib
import functools
import importlib.util
import inspect
import io
import logging
import os
import pathlib
import pickle
import re
import runpy
import signal
import subprocess
import sys
import tempfile
import textwrap
import traceback

import keras
import numpy as np
from keras import tree

# The training tests' tiny GPT run: the test preset (which trains without XLA), quiet, no samples
# or export.
TINY_GPT = dict(
    model="gpt",
    preset="gpt-test",
    samples=0,
    export=False,
    verbose=0,
    log_every=1,
)


def run_arrays(result):
    """A `RunResult`'s final weights (`w0`, `w1`, ...) and history (`history_<metric>`), as
    numpy arrays under the names the training worker saves them with."""
    arrays = {f"w{i}": np.asarray(w) for i, w in enumerate(result.model.get_weights())}
    arrays.update({f"history_{k}": np.array(v) for k, v in result.history.items()})
    return arrays


@functools.cache
def root_conftest():
    """The root `conftest.py` as a module: pytest loads it, but not under an importable name."""
    path = pathlib.Path(__file__).resolve().parents[1] / "conftest.py"
    spec = importlib.util.spec_from_file_location("root_conftest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A line of TensorFlow's C++ logging ("E0000 00:00:1796441382.619346 7788 util.cc:131] ..."), or
# absl's note that comes before them: what a process prints that is not the command's own.
_TENSORFLOW_LOG_LINE = re.compile(r"[IWEF]\d{4} \d\d:\d\d:|WARNING: All log messages before")


def is_tensorflow_log_line(line):
    """Whether `line` is one of TensorFlow's C++ log lines (or absl's note before them)."""
    return bool(_TENSORFLOW_LOG_LINE.match(line))


def drain(pieces):
    """Reads a stream of text pieces to its end: `(text, what the stream returned)` (the
    `(new_tokens, ended)` of `stream_text`)."""
    texts = []
    while True:
        try:
            texts.append(next(pieces))
        except StopIteration as end:
            return "".join(texts), end.value


def run_here(*args):
    """`tf-bigmodels ARGS` run by `main` in this process, with its stdout and stderr captured.

    Returns a `CompletedProcess` as `subprocess.run` would for `python -m tf_bigmodels ARGS`:
    the status is what `main` returns (the process exits with it), or the code of the
    `SystemExit` argparse raises for a usage error. A fresh process would add only TensorFlow's
    import, about 4 s of CPU, so tests run the command here unless the process itself is what
    they check.
    """
    from tf_bigmodels import cli

    stdout, stderr = io.StringIO(), io.StringIO()
    # The log lines a fresh process prints on stderr: `main`'s `logging.basicConfig` adds no
    # handler here, where pytest's are already on the root logger.
    handler = logging.StreamHandler(stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                status = cli.main([str(arg) for arg in args])
            except SystemExit as exit:
                status = exit.code
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    return subprocess.CompletedProcess(args, status, stdout.getvalue(), stderr.getvalue())


def run_all_here(*commands):
    """`run_here` for each command, in order."""
    return [run_here(*args) for args in commands]


def stop_process(process, timeout=30, sig=signal.SIGTERM):
    """Ends `process`: `sig` (SIGTERM by default), then a kill if it still runs after `timeout`
    seconds. Returns its exit status."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def run_script(script, *args, cwd, timeout=900):
    """`python SCRIPT ARGS` in a fresh process from `cwd` (SCRIPT may also be `-c` and the
    program's text): its `CompletedProcess`."""
    return subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )


def run_script_here(script, *args, cwd):
    """`python SCRIPT ARGS` in the working directory `cwd`, run in this process.

    Returns a `CompletedProcess` as `subprocess.run` would: status 0 when the script ends, the
    code of its `SystemExit` (1, with the message on stderr, for `sys.exit("message")`), or 1
    with the traceback on stderr for an uncaught exception. A fresh process would add
    TensorFlow's import and its first tracing, several seconds of CPU per script, so tests run
    scripts here unless the process itself is what they check; `tests/test_example_help.py`
    starts every example in a process of its own.
    """
    argv, path, directory = sys.argv, list(sys.path), os.getcwd()
    stdout, stderr = io.StringIO(), io.StringIO()
    sys.argv = [str(script), *map(str, args)]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))  # as `python SCRIPT` does
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                runpy.run_path(str(script), run_name="__main__")
                status = 0
            except SystemExit as exit:
                status = exit.code
                if not isinstance(status, int) and status is not None:
                    print(status, file=sys.stderr)  # as Python prints sys.exit("message")
                    status = 1
            except Exception:
                status = 1
                traceback.print_exc()
    finally:
        sys.argv, sys.path[:] = argv, path
        os.chdir(directory)
    return subprocess.CompletedProcess(
        [script, *args], status or 0, stdout.getvalue(), stderr.getvalue()
    )


EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def run_example(name, cwd, *args, fresh_process=False):
    """Runs `examples/<name>.py --smoke *args` in `cwd`, in this process unless `fresh_process`;
    returns its stdout, asserting success."""
    script, arguments = EXAMPLES / f"{name}.py", ["--smoke", *map(str, args)]
    if fresh_process:
        result = run_script(script, *arguments, cwd=cwd, timeout=300)
    else:
        result = run_script_here(script, *arguments, cwd=cwd)
    assert result.returncode == 0, (
        f"{name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout


_RELOAD_SCRIPT = textwrap.dedent("""
    import pickle
    import sys
    import traceback
    import numpy as np
    import keras
    import tf_bigmodels
    tf_bigmodels.register_keras_objects()  # the package's serializables, nothing else
    for request in sys.stdin:  # one check per line: model path, data path, wrapped
        model_path, data_path, wrapped = request.rstrip("\\n").split("\\t")
        try:
            with open(data_path, "rb") as file:
                args, expected = pickle.load(file)
            model = keras.saving.load_model(model_path)
            if wrapped == "1":
                outputs = model(args)
            else:
                first, *rest = args
                outputs = model(args[first], **{k: args[k] for k in rest})
            for got, want in zip(keras.tree.flatten(outputs), keras.tree.flatten(expected)):
                np.testing.assert_allclose(np.asarray(got), want, atol=1e-6, rtol=0)
            print("RELOAD_OK", flush=True)
        except Exception:
            print("RELOAD_FAILED", " | ".join(traceback.format_exc().splitlines()), flush=True)
""")


class _ReloadProcess:
    """A Python process that imports only `keras` and `tf_bigmodels` and reloads saved models.

    Started by the first reload check of a test process and reused by the next ones, so that
    the checks share one start-up of TensorFlow instead of paying it each.
    """

    process = None
    log = None

    @classmethod
    def check(cls, model_path, data_path, wrapped):
        """Reloads `model_path` there and compares its outputs; returns the process's answer."""
        if cls.process is None or cls.process.poll() is not None:
            cls.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (as long as the process)
            cls.process = subprocess.Popen(
                [sys.executable, "-c", _RELOAD_SCRIPT],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=cls.log,
                text=True,
                env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
            )
            atexit.register(cls.stop)
        cls.process.stdin.write(f"{model_path}\t{data_path}\t{'1' if wrapped else '0'}\n")
        cls.process.stdin.flush()
        for line in cls.process.stdout:
            if line.startswith("RELOAD_"):
                return line.strip()
        cls.log.seek(0)
        return "RELOAD_FAILED (the process ended) " + cls.log.read()[-3000:]

    @classmethod
    def stop(cls):
        if cls.process is not None and cls.process.poll() is None:
            cls.process.stdin.close()
            try:
                cls.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                cls.process.kill()
                cls.process.wait()


def _to_numpy(structure):
    return tree.map_structure(lambda t: np.asarray(keras.ops.convert_to_numpy(t)), structure)


def call_with(layer, call_args, **extra):
    """Calls `layer` with the first entry of the ordered dict `call_args` positional."""
    first, *rest = call_args
    return layer(call_args[first], **{k: call_args[k] for k in rest}, **extra)


def _symbolic(value, name):
    if isinstance(value, dict):
        return {k: _symbolic(v, k) for k, v in value.items()}
    value = np.asarray(value)
    return keras.Input(batch_shape=value.shape, dtype=str(value.dtype), name=name)


def assert_layer_contract(
    cls,
    init_kwargs,
    call_args,
    expected_shapes,
    *,
    mixed_dtypes="bfloat16",
    fit=True,
    tmp_path=None,
):
    """Runs the common checks on `cls(**init_kwargs)` called with `call_args`.

    Args:
        cls: the layer or model class.
        init_kwargs: dict of constructor arguments.
        call_args: ordered dict of call arguments by name (numpy arrays or dicts of them); the first
            is passed positionally.
        expected_shapes: output shape (tuple) or a dict of them, for the given inputs.
        mixed_dtypes: dtype (or dict of dtypes) of the outputs under "mixed_bfloat16".
        fit: whether to run one `fit` step (tensor outputs only).
        tmp_path: directory for the saved model (a temporary one if None).
    Returns:
        The built float32 instance.
    """
    layer = cls(**init_kwargs)

    # Config: every constructor argument is saved, and the round trip is exact.
    config = layer.get_config()
    params = inspect.signature(cls.__init__).parameters
    arguments = [
        n
        for n, p in params.items()
        if n != "self"
        and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    ]
    missing = [name for name in arguments if name not in config]
    assert not missing, f"{cls.__name__}.get_config() misses constructor arguments {missing}"
    restored = cls.from_config(config)
    assert _comparable(restored.get_config()) == _comparable(config)

    # Eager call: shapes, float32.
    outputs = call_with(layer, call_args)
    got_shapes = tree.map_structure(lambda t: tuple(t.shape), outputs)
    assert got_shapes == expected_shapes, f"output shapes {got_shapes}, expected {expected_shapes}"
    for tensor in tree.flatten(outputs):
        assert keras.backend.standardize_dtype(tensor.dtype) == "float32", tensor.dtype

    # Symbolic call: same shapes.
    symbolic_args = {k: _symbolic(v, k) for k, v in call_args.items()}
    symbolic_out = call_with(cls(**init_kwargs), symbolic_args)
    assert tree.map_structure(lambda t: tuple(t.shape), symbolic_out) == got_shapes

    # Mixed precision: documented output dtypes.
    mixed = cls(**{**init_kwargs, **_mixed(init_kwargs)})
    mixed_out = call_with(mixed, call_args)
    want = (
        mixed_dtypes
        if isinstance(mixed_dtypes, dict)
        else tree.map_structure(lambda _: mixed_dtypes, mixed_out)
    )
    got = tree.map_structure(lambda t: keras.backend.standardize_dtype(t.dtype), mixed_out)
    assert got == want, f"mixed_bfloat16 output dtypes {got}, expected {want}"
    for tensor in tree.flatten(mixed_out):
        assert np.all(np.isfinite(np.asarray(keras.ops.cast(tensor, "float32"))))

    if fit:
        _check_fit_step(cls, init_kwargs, call_args)

    _check_reload(layer, call_args, _to_numpy(outputs), tmp_path)
    return layer


def _mixed(init_kwargs):
    """Constructor arguments that put a layer (or an encoder inside a model) under mixed_bfloat16."""
    return (
        {"dtype": "mixed_bfloat16"}
        if "encoder" not in init_kwargs
        else {
            "encoder": init_kwargs["encoder"].__class__.from_config(
                {**init_kwargs["encoder"].get_config(), "dtype": "mixed_bfloat16"}
            )
        }
    )


def _comparable(config):
    """A config without the build/compile state that only an already-used instance records."""
    if isinstance(config, dict):
        return {
            k: _comparable(v)
            for k, v in config.items()
            if k not in ("build_config", "compile_config")
        }
    if isinstance(config, (list, tuple)):
        return [_comparable(v) for v in config]
    return config


def _check_fit_step(cls, init_kwargs, call_args):
    symbolic_args = {k: _symbolic(v, k) for k, v in call_args.items()}
    layer = cls(**init_kwargs)
    outputs = call_with(layer, symbolic_args)
    model = keras.Model(symbolic_args, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = [w.numpy().copy() for w in model.trainable_weights]
    target = np.zeros(tuple(outputs.shape), "float32")
    history = model.fit(call_args, target, epochs=1, batch_size=len(target), verbose=0)
    assert np.isfinite(history.history["loss"][0])
    changed = [not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights)]
    assert any(changed), "one fit step changed no weight"


def _check_reload(layer, call_args, expected, tmp_path):
    directory = pathlib.Path(tmp_path or tempfile.mkdtemp())
    wrapped = not isinstance(layer, keras.Model)
    if wrapped:
        symbolic_args = {k: _symbolic(v, k) for k, v in call_args.items()}
        model = keras.Model(symbolic_args, call_with(layer, symbolic_args))
        expected = _to_numpy(model(call_args))
    else:
        model = layer
    model_path = directory / f"{layer.__class__.__name__}.keras"
    data_path = directory / "reload_data.pkl"
    model.save(model_path)
    data_path.write_bytes(pickle.dumps((call_args, expected)))
    answer = _ReloadProcess.check(model_path, data_path, wrapped)
    assert answer == "RELOAD_OK", answer


def reference_attention_weights(block, x, allowed):
    """softmax(Q K^T / sqrt(d_k)) of one `TransformerLayer` on input `x`, written out in NumPy.

    `allowed` is a bool array broadcastable to `(batch, seq, seq)` (True = may attend). The
    queries and keys come from the block's fused QKV projection, applied to `x` itself
    (post-norm) or to its layer norm (pre-norm), heads split in order.
    """
    h = block.attention_norm(x) if block.norm_first else x
    attention = block.attention
    qkv = np.asarray(h) @ np.asarray(attention.qkv.kernel) + np.asarray(attention.qkv.bias)
    batch, length, _ = qkv.shape
    heads, depth = attention.num_heads, attention.head_dim
    qkv = qkv.reshape(batch, length, 3, heads, depth).transpose(2, 0, 3, 1, 4)  # (3, B, h, T, d)
    scores = qkv[0] @ qkv[1].transpose(0, 1, 3, 2) / np.sqrt(depth)  # (B, h, T, T)
    scores = np.where(np.asarray(allowed)[:, None], scores, -np.inf)
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return scores / scores.sum(axis=-1, keepdims=True)
