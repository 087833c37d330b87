"""The README's main job, then its quick tour as a reader runs it: the commands in order, in one
directory, after the main job has written `runs/gpt/`.

Only the sizes change. The main job keeps its preset (nanoGPT's CPU configuration) with 20
steps and a 20-token sample; the tour's trainings get the tiny test preset and 2 steps. The main
job takes more steps than the tour, as the real one (2000) does against the tour's 1000, so a
tour that trained into `runs/gpt/` would be refused as a shorter re-run of the main job.
"""

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time

import httpx
import pytest
import tensorflow as tf
from helpers import is_tensorflow_log_line, stop_process
from serving_fixtures import free_port

from tf_bigmodels.data import load_corpus

ROOT = pathlib.Path(__file__).parent.parent


def _tour_blocks(readme="README.md", heading="## A quick tour"):
    text = (ROOT / readme).read_text(encoding="utf-8")
    tour = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", tour, re.S)


def _main_job():
    """The command that the README's set-up line runs after installing."""
    setup = (ROOT / "README.md").read_text(encoding="utf-8").split("## Set-up", 1)[1]
    install = re.search(r"```bash\n(.*?)\n", setup).group(1)
    return install.rsplit(" && ", 1)[1]


def _commands(block):
    """A block without its comments: what the shell runs."""
    return [
        line
        for line in re.sub(r"(^|[ \t]+)#[^\n]*", "", block, flags=re.M).splitlines()
        if line.strip()
    ]


def test_the_chinese_tour_runs_the_same_commands():
    # So the English tour's run below proves the Chinese one too.
    english = [_commands(b) for b in _tour_blocks()]
    chinese = [_commands(b) for b in _tour_blocks("README.zh-CN.md", "## 快速上手")]
    assert len(english) >= 6 and chinese == english


def _run(command, cwd, env):
    done = subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert "Assets written" not in done.stderr  # TensorFlow's INFO names a temporary path
    if all(line.startswith("tf-bigmodels ") for line in _commands(command)):
        # The command line's own lines only: none of TensorFlow's C++ log lines.
        assert not any(map(is_tensorflow_log_line, done.stderr.splitlines())), done.stderr[-2000:]
    return done.stdout


def _check_the_main_job(stdout, run_dir):
    """What the README's set-up command writes and prints (its own settings, 20 steps)."""
    config = json.loads((run_dir / "config.json").read_text())
    shape = ("num_layers", "num_heads", "d_model", "seq_len", "batch_size", "rate")
    assert [config[name] for name in shape] == [4, 4, 128, 64, 12, 0.0]
    for name in ("model.keras", "best.keras", "metrics.jsonl", "export/1/saved_model.pb"):
        assert (run_dir / name).is_file(), name
    assert tf.train.latest_checkpoint(str(run_dir / "checkpoints")).endswith("-20")
    assert list((run_dir / "logs").rglob("events.out.tfevents*"))
    # The sample's prompt is a line of the corpus's validation text (a speaker's name here).
    prompt = stdout.split("--- sample 1 ---\n", 1)[1].split("\n", 1)[0]
    shakespeare = "\n\n".join(load_corpus("shakespeare"))
    assert prompt and f"\n{prompt}\n" in shakespeare[-len(shakespeare) // 10 :]
    assert "tokens/s" in stdout and "val_loss" in stdout
    assert "\r" not in stdout  # plain lines when not a terminal
    assert "Try it: tf-bigmodels generate runs/gpt" in stdout


@pytest.mark.slow
def test_the_quick_tour_runs_in_order_after_the_main_job(tmp_path, small_corpus):
    env = {
        **os.environ,
        "PATH": f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "MPLBACKEND": "Agg",
    }
    # The reader runs the tour in the checkout: the examples are beside `runs/`.
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    main_job = _run(
        f"{_main_job()} --steps 20 --eval-every 10 --samples 1 --sample-tokens 20", tmp_path, env
    )
    _check_the_main_job(main_job, tmp_path / "runs" / "gpt")
    blocks = _tour_blocks()
    assert "pip install" in blocks[0]
    served = False
    for block in blocks[1:]:
        if block.startswith("tf-bigmodels serve"):
            serve, curl = block.strip().splitlines()
            _ask_the_server(shlex.split(serve), curl, tmp_path, env)
            served = True
            continue
        _run(_shrunk(block, tmp_path, small_corpus), tmp_path, env)
    assert served
    assert (tmp_path / "runs" / "tour" / "plots" / "attention_layer1.png").is_file()
    assert [p.name for p in sorted((tmp_path / "runs" / "tour" / "export").iterdir())] == ["1", "2"]
    assert (tmp_path / "runs" / "tour-bert" / "model.keras").is_file()
    assert (tmp_path / "finetune" / "results.json").is_file()


# What each long command of the tour gets appended, so that it runs in seconds.
_SHRINK = {
    "tf-bigmodels train gpt": " --preset gpt-test --samples 0 --steps 2",
    # Still past the tiny model's 32-token context, so the window slides as in the real tour.
    "tf-bigmodels generate": " --max-new-tokens 40",
    # A BERT run learns its vocabulary and cuts its sentence pairs from all of its corpus.
    "tf-bigmodels train bert": " --preset bert-test --steps 2 --corpus '{corpus}'",
    "python examples/finetune_classifier.py": " --smoke --out {tmp}/finetune",
}


def _shrunk(block, tmp_path, corpus):
    """The block with each long command's sizes made tiny (its trailing comment dropped)."""
    lines = []
    for line in block.strip().splitlines():
        command = line.split("  #", 1)[0].rstrip()
        for start, extra in _SHRINK.items():
            if command.startswith(start):
                line = command + extra.format(tmp=tmp_path, corpus=corpus)
        lines.append(line)
    return "\n".join(lines) + "\n"


def _ask_the_server(serve, curl, cwd, env):
    """Starts the tour's `serve` on a free port and sends its `curl` request's body."""
    port = free_port()
    # Two rows at most: the warm-up compiles the batched loop at batch sizes 1 and 2 only.
    server = subprocess.Popen(
        [*serve, "--port", str(port), "--max-batch-size", "2"],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = re.search(r"localhost:8501(/\S+)", curl).group(1)
        body = json.loads(re.search(r"-d '(.*?)'", curl).group(1))
        body["max_tokens"] = 8  # the tiny model's context is 32 tokens
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, "the server exited"
            time.sleep(0.5)
        answer = httpx.post(f"http://127.0.0.1:{port}{url}", json=body, timeout=120)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == "tour"
    finally:
        stop_process(server)
