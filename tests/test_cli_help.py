"""The command line answers at once: help and argument errors before TensorFlow is loaded."""

import argparse
import os
import subprocess
import sys

import pytest

from tf_bigmodels import cli

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


def _imported_modules(*args):
    """Runs `python -X importtime -m tf_bigmodels ARGS`; returns the result and what it imported."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "tf_bigmodels", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
    modules = {
        line.rsplit("|", 1)[-1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    return result, modules


@pytest.mark.parametrize(
    "args, status, output",
    [
        ([], 0, "usage: tf-bigmodels"),
        (["--help"], 0, "usage: tf-bigmodels"),
        (["train", "--help"], 0, "--weight-decay"),
        (["export", "--help"], 0, "--max-new-tokens"),
        (["train", "gpt", "--steps", "0"], 2, "--steps: must be a positive integer"),
        (["train", "gpt", "--seed", "-1"], 2, "`--seed` must be an integer in [0, 4294967295]"),
        # NumPy's seeds are 32-bit: a larger one is refused up front, naming the flag.
        (["train", "gpt", "--seed", "99999999999"], 2, "`--seed` must be an integer in [0, "),
        (["train", "gpt", "--vocab-size", "300"], 2, "`--vocab-size` must be None"),
        (["train", "bert", "--warmup-steps", "5000"], 2, "`--warmup-steps` must be an integer"),
    ],
)
def test_help_and_argument_errors_do_not_load_tensorflow(args, status, output):
    result, modules = _imported_modules(*args)
    assert result.returncode == status, result.stderr[-2000:]
    assert output in result.stdout + result.stderr
    assert "tensorflow" not in modules and "keras" not in modules
    assert "tf_bigmodels.cli" in modules  # the measurement did see the package's imports


def _subcommands():
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


@pytest.mark.parametrize("command", ["train", "export", "plot"])
def test_every_flag_has_help_and_shows_its_default(command):
    parser = _subcommands()[command]
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        assert action.help, action.option_strings
        if action.default not in (None, False, argparse.SUPPRESS) and not isinstance(
            action, argparse._HelpAction
        ):
            assert "default" in parser._get_formatter()._get_help_string(action), action.dest


def test_train_help_names_the_preset_defaults():
    help_text = "".join(_subcommands()["train"].format_help().split())  # line breaks may split
    for fragment in (
        "gpt-nano: 2000",  # steps
        "gpt-nano: 0.004",  # learning rate
        "(default: gpt-nano, bert-tiny)",  # preset
        "(default: 0.1)",  # weight decay
        "(default: min(250, --steps))",  # eval every
        "--corpus-errors",
    ):
        assert "".join(fragment.split()) in help_text, fragment


@pytest.mark.slow
def test_the_non_utf8_advice_names_a_flag_the_command_has(tmp_path):
    gbk = tmp_path / "gbk.txt"
    gbk.write_bytes("床前明月光，疑是地上霜。".encode("gbk"))
    result = subprocess.run(
        [sys.executable, "-m", "tf_bigmodels", "train", "gpt", "--corpus", str(gbk)],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "--corpus-errors replace" in result.stderr and "errors='replace'" not in result.stderr
    assert "--corpus-errors" in _subcommands()["train"].format_help()


# What TensorFlow's C++ side prints while it loads and finds its devices, on this machine.
_START_UP_LINES = ("oneDNN custom operations", "Could not find cuda drivers", "InitializeLog()")


@pytest.mark.slow
def test_tensorflow_start_up_lines_are_shown_only_with_verbose(tmp_path):
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    quiet, loud = (
        subprocess.run(
            [sys.executable, "-m", "tf_bigmodels", "plot", *extra, str(tmp_path / "none")],
            capture_output=True,
            text=True,
            timeout=300,
            env=environment,
        )
        for extra in ([], ["--verbose"])
    )
    assert quiet.returncode == loud.returncode == 2  # TensorFlow loaded, then no run there
    assert quiet.stderr.strip().splitlines() == [
        f"tf-bigmodels plot: error: No such run directory: {tmp_path / 'none'}"
    ]
    assert any(line in loud.stderr for line in _START_UP_LINES), loud.stderr  # they exist


def test_every_subcommand_has_verbose_and_serve_passes_it_to_tensorflow_s_load(
    tmp_path, monkeypatch
):
    # The real server's output, without the lines, is checked in test_serve.py.
    from tf_bigmodels.serving import cli as serving_cli

    assert all("--verbose" in parser.format_help() for parser in _subcommands().values())
    (tmp_path / "gpt" / "1").mkdir(parents=True)
    asked = []

    class Loaded(Exception):
        pass

    def load_tensorflow(show):
        asked.append(show)
        raise Loaded  # instead of starting a server

    monkeypatch.setattr(serving_cli, "load_tensorflow", load_tensorflow)
    for extra in ([], ["--verbose"]):
        args = cli.build_parser().parse_args(["serve", str(tmp_path / "gpt"), *extra])
        with pytest.raises(Loaded):
            serving_cli.run(args)
    assert asked == [False, True]
