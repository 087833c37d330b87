"""Every example answers `--help` at once: its arguments are read before TensorFlow is loaded."""

import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
# The walkthrough follows the article's own order (imports first); it is not part of this rule.
NAMES = sorted(p.stem for p in EXAMPLES.glob("*.py"))


@pytest.mark.parametrize("name", NAMES)
def test_example_help_exits_before_tensorflow_is_imported(name):
    result = subprocess.run(
        [sys.executable, "-X", "importtime", str(EXAMPLES / f"{name}.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:") and "--smoke" in result.stdout
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "argparse" in imported  # the measurement works
    assert not {"tensorflow", "keras", "tf_bigmodels"} & imported


def test_every_example_is_checked():
    assert len(NAMES) >= 7 and "train_gpt" in NAMES
