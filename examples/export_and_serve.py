"""Export a trained GPT as a SavedModel and serve it from a clean process.

`export_gpt` writes `export/<version>/` (TF Serving's layout) with the byte tokenizer and the
cached decode loop inside the graph: strings in, strings out. A serving process needs neither
this package nor Python model code — only `tensorflow` (and `tensorflow_text` for BERT's
WordPiece ops). To prove it, the SavedModel is loaded and called in a fresh Python process that
imports just those two.

Run:  python examples/export_and_serve.py --run example_outputs/train_gpt/gpt
      python examples/export_and_serve.py          (trains a small GPT first if no run is given)
      python examples/export_and_serve.py --smoke  (seconds)

To serve with TF Serving instead (Docker):
  docker run -p 8501:8501 -v "$PWD/example_outputs/export_and_serve/export:/models/gpt" \
      -e MODEL_NAME=gpt tensorflow/serving
  curl -d '{"inputs": {"prompts": ["ROMEO:"]}}' localhost:8501/v1/models/gpt:predict
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import textwrap

# ---------------------------------------------------------------- settings
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--smoke", action="store_true", help="a fast run for CI")
parser.add_argument(
    "--out",
    default="example_outputs/export_and_serve",
    help="directory for export/<version>/ and responses.json",
)
parser.add_argument("--run", help="GPT run directory (default: train a small one here)")
args = parser.parse_args()

# TensorFlow loads only now, so that --help answers at once, without it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from tf_bigmodels.export import export_gpt  # noqa: E402
from tf_bigmodels.tokenizers import ByteTokenizer  # noqa: E402
from tf_bigmodels.training import RunConfig, train  # noqa: E402

out = pathlib.Path(args.out).resolve()
out.mkdir(parents=True, exist_ok=True)

# ---------------------------------------------------------------- a trained GPT
run_dir = pathlib.Path(args.run) if args.run else None
if run_dir is None:
    print("No --run given: training a small GPT first.")
    config = (
        RunConfig(
            model="gpt",
            preset="gpt-test",
            steps=10,
            eval_every=10,
            eval_steps=2,
            out=str(out),
            samples=0,
            export=False,
            verbose=2,
        )
        if args.smoke
        else RunConfig(
            model="gpt",
            preset="gpt-nano",
            steps=1000,
            eval_every=250,
            out=str(out),
            samples=0,
            export=False,
            verbose=2,
        )
    )
    run_dir = train(config).run_dir
model = keras.saving.load_model(run_dir / "model.keras")

# ---------------------------------------------------------------- export
# serving_default uses the settings fixed here; the `generate` signature takes them per request.
# jit_compile=False gives a graph without XLA clusters (some TF Serving builds reject XLA) and
# exports faster; True makes decoding faster.
path = export_gpt(
    model,
    ByteTokenizer(),
    out / "export",
    max_new_tokens=model.max_length // 2,
    temperature=0.8,
    top_k=40,
    jit_compile=not args.smoke,
)
print(f"SavedModel written to {path}")

# ---------------------------------------------------------------- serve from a clean process
CLIENT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers tensorflow-text ops; GPT does not need them)
    assert not any(m.split(".")[0] == "tf_bigmodels" for m in sys.modules), "not clean"
    loaded = tf.saved_model.load(sys.argv[1])
    prompts = tf.constant(["ROMEO:", "To be, or not"])
    default = loaded.signatures["serving_default"](prompts=prompts)["completions"]
    chosen = loaded.signatures["generate"](
        prompts=prompts, max_new_tokens=tf.constant(8), temperature=tf.constant(0.0),
        top_k=tf.constant(0), top_p=tf.constant(1.0), seed=tf.constant(0))["completions"]
    logits = loaded.signatures["logits"](token_ids=tf.constant([[82, 79, 77, 69, 79]]))["logits"]
    print(json.dumps({
        "signatures": sorted(loaded.signatures),
        "serving_default": [t.decode("utf-8") for t in default.numpy()],
        "generate_greedy": [t.decode("utf-8") for t in chosen.numpy()],
        "logits_shape": logits.shape.as_list(),
    }))
""")
env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
result = subprocess.run(
    [sys.executable, "-c", CLIENT, path],
    capture_output=True,
    text=True,
    env=env,
    cwd=out,
    timeout=600,
)
if result.returncode:
    sys.exit(f"the clean serving process failed:\n{result.stderr[-2000:]}")
responses = json.loads(result.stdout.strip().splitlines()[-1])
print(f"signatures: {responses['signatures']}")
for prompt, completion in zip(["ROMEO:", "To be, or not"], responses["serving_default"]):
    print(f"serving_default: {prompt!r} -> {completion!r}")
for prompt, completion in zip(["ROMEO:", "To be, or not"], responses["generate_greedy"]):
    print(f"generate (greedy, 8 tokens): {prompt!r} -> {completion!r}")
print(f"logits: shape {responses['logits_shape']}")
(out / "responses.json").write_text(json.dumps(responses, indent=2), encoding="utf-8")
print(
    f"\nEXPORT_AND_SERVE DONE: {path} served from a process without tf_bigmodels; responses in "
    f"{out / 'responses.json'}"
)
