"""Why next-sentence prediction stays near chance on tiny Shakespeare, shown with measured curves.

The default BERT command (`tf-bigmodels train bert --steps 1000 --vocab-size 4000`: `bert-tiny`,
2 layers of width 128, post-norm, sequence 128, batch 32, learning rate 1e-3) is trained here
as the command trains it (same data, tokenizer, model, optimizer and validation batches), with
one thing changed per variant, and the held-out NSP and MLM accuracy is recorded every
`--eval-every` steps:

- `default`: the command as it is;
- `nsp_only`: the masked-LM loss switched off (mask weights 0): is NSP learnable at all here, or
  does the MLM loss crowd it out?
- `lr_3e-4`: a smaller peak learning rate (the post-norm stack is sensitive to it);
- `lr_3e-3`: a larger one.

Beside the curves, one number says how hard the task is on this corpus: the accuracy of a rule
with no learning, on the same validation pairs. The rule (`speaker_rule`): tiny Shakespeare is
dialogue, and a speech starts with its speaker's name and a colon; a true continuation B almost
always shares a speaker name with A (the same scene), a random B from another document rarely
does. The rule predicts "B follows A" when a word that stands before a colon in A or B also
occurs in the other segment.

Usage:
    python benchmarks/bert_nsp.py --out nsp.json                # about 4 x 3 minutes here
    python benchmarks/bert_nsp.py --variants default,nsp_only --steps 3000
    python benchmarks/bert_nsp.py --smoke                        # seconds: plumbing only
"""

import argparse
import json
import os
import pathlib
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _timing import machine  # noqa: E402

from tf_bigmodels.training import RunConfig, task_for  # noqa: E402

VARIANTS = {
    "default": dict(),
    "nsp_only": dict(mlm=False),
    "lr_3e-4": dict(learning_rate=3e-4),
    "lr_3e-3": dict(learning_rate=3e-3),
}
SMOKE = dict(preset="bert-test", vocab_size=1000)


def speaker_rule(features, labels, tokenizer):
    """Accuracy of the no-learning speaker-name rule on batches of (features, labels)."""
    colon = tokenizer.vocabulary.index(":")
    special = {tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id, tokenizer.mask_id, colon}
    correct = total = 0
    for x, y in zip(features, labels):
        for ids, segments, label in zip(
            x["token_ids"].numpy(), x["segment_ids"].numpy(), y["next_sentence_labels"].numpy()
        ):
            real = ids != tokenizer.pad_id
            a, b = ids[real & (segments == 0)], ids[real & (segments == 1)]
            names = {
                int(t)
                for part in (a, b)
                for t, after in zip(part[:-1], part[1:])
                if after == colon and t not in special
            }
            shared = names & set(a.tolist()) & set(b.tolist())
            predicted = 0 if shared else 1  # 0: B follows A
            correct += int(predicted == label)
            total += 1
    return correct / total


def run_variant(name, base, settings, steps, eval_every, run_dir):
    config = RunConfig(
        model="bert",
        steps=steps,
        eval_every=eval_every,
        learning_rate=settings.get("learning_rate"),
        out=str(run_dir),
        **base,
    ).resolved()
    task = task_for(config)
    texts = task.texts()
    keras.utils.set_random_seed(config.seed)
    tokenizer = task.tokenizer(texts, run_dir, save=False)
    train, val = task.datasets(texts, tokenizer)
    if not settings.get("mlm", True):
        train = train.map(lambda x, y: (x, dict(y, mask_weights=tf.zeros_like(y["mask_weights"]))))
    model = task.compiled_model(tokenizer.vocab_size)
    history = model.fit(
        train,
        epochs=steps // eval_every,
        steps_per_epoch=eval_every,
        validation_data=val,
        verbose=0,
    ).history
    curve = [
        dict(
            step=(i + 1) * eval_every,
            val_nsp_accuracy=history["val_nsp_accuracy"][i],
            val_mlm_accuracy=history["val_mlm_accuracy"][i],
            train_nsp_accuracy=history["nsp_accuracy"][i],
        )
        for i in range(len(history["loss"]))
    ]
    val_batches = list(val)
    rule = speaker_rule([x for x, _ in val_batches], [y for _, y in val_batches], tokenizer)
    labels = np.concatenate([y["next_sentence_labels"].numpy() for _, y in val_batches])
    print(f"{name}: {[round(p['val_nsp_accuracy'], 3) for p in curve]}", flush=True)
    return dict(
        variant=name,
        learning_rate=config.learning_rate,
        mlm=settings.get("mlm", True),
        curve=curve,
        best_val_nsp_accuracy=max(p["val_nsp_accuracy"] for p in curve),
        final_val_nsp_accuracy=curve[-1]["val_nsp_accuracy"],
        final_val_mlm_accuracy=curve[-1]["val_mlm_accuracy"],
        val_majority=float(max(labels.mean(), 1 - labels.mean())),
        speaker_rule_accuracy=rule,
    )


def table(rows):
    lines = [
        "| variant | lr | MLM loss | held-out NSP acc. (best / final) | held-out MLM acc. "
        "| majority class | speaker-name rule |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['learning_rate']:g} | {'on' if r['mlm'] else 'off'} "
            f"| {r['best_val_nsp_accuracy']:.3f} / {r['final_val_nsp_accuracy']:.3f} "
            f"| {r['final_val_mlm_accuracy']:.3f} | {r['val_majority']:.3f} "
            f"| {r['speaker_rule_accuracy']:.3f} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--steps", type=int, default=1000, help="training steps per variant")
    parser.add_argument("--eval-every", type=int, default=100, help="steps between evaluations")
    parser.add_argument("--smoke", action="store_true", help="a tiny model, a few steps (CI)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    names = args.variants.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown --variants {unknown}; choose from {list(VARIANTS)}")
    base = SMOKE if args.smoke else dict(vocab_size=4000)
    steps, eval_every = (4, 2) if args.smoke else (args.steps, args.eval_every)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in names:
            run_dir = pathlib.Path(scratch) / name
            rows.append(run_variant(name, base, VARIANTS[name], steps, eval_every, run_dir))
    print(table(rows))
    if args.out:
        result = dict(
            command="python benchmarks/bert_nsp.py "
            + ("--smoke" if args.smoke else f"--steps {steps} --variants {args.variants}"),
            machine=machine(),
            steps=steps,
            eval_every=eval_every,
            rows=rows,
        )
        pathlib.Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
