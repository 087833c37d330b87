"""Pre-train a small BERT (masked language model + next sentence prediction) on Shakespeare.

`train(RunConfig(model="bert", ...))` learns a WordPiece vocabulary from the corpus, builds
BERT's pre-training examples in `tf.data` (sentence pairs, 50% random "next" segments, 15% of
tokens masked 80/10/10, masks drawn anew every epoch) and trains a `BERTPretrainer` with
`model.fit`. The pretrainer reports `mlm_accuracy` (over the masked tokens only) and
`nsp_accuracy`.

Run:  python examples/pretrain_bert.py           (about 4 minutes on a laptop CPU)
      python examples/pretrain_bert.py --smoke   (seconds; a tiny model on 8 documents)

Then: python examples/finetune_classifier.py --pretrained example_outputs/pretrain_bert/bert
"""

import argparse
import os
import pathlib

# ---------------------------------------------------------------- settings
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--smoke", action="store_true", help="a fast run for CI")
parser.add_argument(
    "--out", default="example_outputs/pretrain_bert", help="parent of the run directory"
)
parser.add_argument("--steps", type=int, help="training steps (default 800, smoke 10)")
args = parser.parse_args()

# TensorFlow loads only now, so that --help answers at once, without it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tf_bigmodels.data import load_corpus  # noqa: E402
from tf_bigmodels.training import RunConfig, train  # noqa: E402

out = pathlib.Path(args.out)

if args.smoke:
    # A corpus of 8 documents (NSP needs at least 4: two for training, two for validation),
    # written as files, which is also how you would train on your own text.
    corpus_dir = out / "corpus"
    corpus_dir.mkdir(parents=True, exist_ok=True)
    for index, document in enumerate(load_corpus("shakespeare")[:8]):
        (corpus_dir / f"{index:02d}.txt").write_text(document, encoding="utf-8")
    config = RunConfig(
        model="bert",
        preset="bert-test",
        corpus=str(corpus_dir / "*.txt"),
        steps=args.steps or 10,
        eval_every=args.steps or 10,
        eval_steps=2,
        vocab_size=1000,
        out=str(out),
        export=False,
        verbose=2,
    )
else:
    # BERT-Tiny (2 layers, 128 wide) on 128-token pairs with a 4,000-token vocabulary.
    config = RunConfig(
        model="bert",
        preset="bert-tiny",
        steps=args.steps or 800,
        eval_every=200,
        eval_steps=10,
        vocab_size=4000,
        out=str(out),
        verbose=2,
    )

# ---------------------------------------------------------------- train
result = train(config)

# ---------------------------------------------------------------- MLM and NSP accuracy
# MLM accuracy counts only real predictions (padding slots have weight 0). NSP starts at 50%
# (a coin flip); on a corpus this small it rises slowly.
history = result.history
if history:
    print(
        f"\nMLM accuracy: train {history['mlm_accuracy'][-1]:.3f}, "
        f"validation {history['val_mlm_accuracy'][-1]:.3f}"
    )
    print(
        f"NSP accuracy: train {history['nsp_accuracy'][-1]:.3f}, "
        f"validation {history['val_nsp_accuracy'][-1]:.3f}"
    )
print(
    f"\nPRETRAIN_BERT DONE: run directory {result.run_dir} (step {result.step}); the encoder is "
    f"in {result.run_dir / 'model.keras'} and the vocabulary in {result.run_dir / 'tokenizer'}"
)
