"""What a fresh process pays before any work: importing ml_dtypes, TensorFlow, and `--help`.

Every `tf-bigmodels` command that touches a model, every server start and every example runs in a
new Python process that imports TensorFlow first. This times, in fresh processes taken in turn
(one of each per round, so a burst of load slows all alike), the CPU seconds (user + system) and
the wall seconds of:

- `import ml_dtypes`: TensorFlow imports it for bfloat16 and the other NumPy types it adds;
- `import tensorflow`;
- `tf-bigmodels --help`, which must not import TensorFlow at all.

`--peer DIR` times the same with DIR first on `PYTHONPATH`, for instance another release of
ml_dtypes, installed beside the environment without touching it:

    pip install --no-deps --target /tmp/ml_dtypes-0.7 ml_dtypes==0.7.0
    python benchmarks/startup.py --peer /tmp/ml_dtypes-0.7 --out startup.json

Reports the median over `--repeats` rounds and the ratio of the peer's CPU to ours.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "import ml_dtypes": [sys.executable, "-c", "import ml_dtypes"],
    "import tensorflow": [sys.executable, "-c", "import tensorflow"],
    "tf-bigmodels --help": [sys.executable, "-m", "tf_bigmodels", "--help"],
}
VERSION = "import ml_dtypes, numpy; print(ml_dtypes.__version__, numpy.__version__)"


def _environment(path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [path, env.get("PYTHONPATH")]))
    return env


def _children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_command(command, env):
    """CPU and wall seconds of one run of `command` in a fresh process; raises if it fails."""
    cpu, start = _children_cpu(), time.perf_counter()
    completed = subprocess.run(command, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, _children_cpu() - cpu
    if completed.returncode:
        raise RuntimeError(f"{command} failed:\n{completed.stderr[-2000:]}")
    return cpu, wall


def run(repeats, peer=None):
    """Median CPU and wall seconds of each command, for ours and for the peer if given.

    Returns:
        dict: `rows` (one per setup and command: `setup`, `command`, `ml_dtypes`, `numpy`,
        `cpu_s`, `wall_s`, the per-round `cpu_rounds`), and `peer_cpu_ratio` (the peer's median
        CPU over ours, per command) when there is a peer.
    """
    setups = {"ours": _environment(None)}
    if peer:
        setups["peer"] = _environment(peer)
    versions = {
        name: subprocess.run(
            [sys.executable, "-c", VERSION], env=env, capture_output=True, text=True, check=True
        ).stdout.split()
        for name, env in setups.items()
    }
    times = {(setup, command): [] for setup in setups for command in COMMANDS}
    for _ in range(repeats):
        for command, argv in COMMANDS.items():
            for setup, env in setups.items():
                times[setup, command].append(time_command(argv, env))
    rows = [
        dict(
            setup=setup,
            command=command,
            ml_dtypes=versions[setup][0],
            numpy=versions[setup][1],
            cpu_s=statistics.median(cpu for cpu, _ in rounds),
            wall_s=statistics.median(wall for _, wall in rounds),
            cpu_rounds=[cpu for cpu, _ in rounds],
        )
        for (setup, command), rounds in times.items()
    ]
    result = {"repeats": repeats, "rows": rows}
    if peer:
        median = {(row["setup"], row["command"]): row["cpu_s"] for row in rows}
        result["peer_cpu_ratio"] = {
            command: median["peer", command] / median["ours", command] for command in COMMANDS
        }
    return result


def table(result):
    """The rows as a Markdown table."""
    lines = [
        "| setup | ml_dtypes | numpy | command | CPU s (median) | wall s (median) |",
        "|---|---|---|---|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['setup']} | {row['ml_dtypes']} | {row['numpy']} | `{row['command']}` "
            f"| {row['cpu_s']:.2f} | {row['wall_s']:.2f} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="rounds (default 7)")
    parser.add_argument("--peer", help="a directory put first on PYTHONPATH for the peer's runs")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.peer and not os.path.isdir(args.peer):
        parser.error(f"--peer must be a directory, got {args.peer!r}")
    result = run(args.repeats, args.peer)
    from _timing import machine  # imports TensorFlow: only after the timed processes

    result["machine"] = machine()
    print(table(result))
    for command, ratio in result.get("peer_cpu_ratio", {}).items():
        print(f"peer CPU / ours, `{command}`: {ratio:.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
