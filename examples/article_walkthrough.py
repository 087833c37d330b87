"""The tutorial's Transformer and GPT, defect by defect, next to tf_bigmodels.

The tutorial builds a `TransformerLayer(d_model, num_heads, dff, rate)` and a
`GPTModel(vocab_size, d_model, num_heads, dff, num_layers, rate)`. This script does not run the
tutorial's code (it does not even parse); it rebuilds each of its shapes from our own parts — for
example a GPT-like stack of `TransformerLayer(..., causal=False)` — and shows what each defect
does, then the same experiment with the corrected models:

  0. the attention formula softmax(QK^T / sqrt(d_k)) V, checked against Keras's own layer;
  1. a syntax error;
  2. `key_dim=d_model`: every head as wide as the whole model;
  3. a one-Dense feed-forward block: fails as soon as dff != d_model;
  4. no causal mask: the model reads the answer (near-zero training loss, useless generation);
  5. no position embedding: word order is invisible;
  6. no padding mask: padding changes the real tokens' outputs;
  7. no `**kwargs`/`get_config`: cannot be named, saved or reloaded.

Run:  python examples/article_walkthrough.py            (about 2 minutes on a laptop CPU)
      python examples/article_walkthrough.py --smoke    (seconds; fewer training steps)
"""

import argparse
import json
import os
import pathlib
import re
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import tf_bigmodels as tfb  # noqa: E402
from tf_bigmodels.data import lm_dataset, load_corpus  # noqa: E402
from tf_bigmodels.tokenizers import ByteTokenizer  # noqa: E402

# ---------------------------------------------------------------- settings
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--smoke", action="store_true", help="a fast run for CI")
parser.add_argument(
    "--out", default="example_outputs/article_walkthrough", help="directory for walkthrough.json"
)
parser.add_argument("--steps", type=int, default=None, help="training steps of the causal demo")
args = parser.parse_args()

D_MODEL, NUM_HEADS, DFF, NUM_LAYERS = 64, 4, 256, 2
SEQ_LEN, BATCH_SIZE, LEARNING_RATE = 64, 16, 3e-3
STEPS = args.steps or (40 if args.smoke else 400)
out_dir = pathlib.Path(args.out)
out_dir.mkdir(parents=True, exist_ok=True)
keras.utils.set_random_seed(0)
results = {}


def report(number, title, text):
    print(f"\nDEFECT {number}: {title}\n  {text}")


# ---------------------------------------------------------------- 0. the attention formula
# The tutorial writes Attention(Q, K, V) = softmax(QK^T / sqrt(d_k)) V. We compute it by hand with
# NumPy on the projections of a `keras.layers.MultiHeadAttention` and compare with what the layer
# returns: the formula (and our `scaled_dot_product_attention`) is what Keras computes.
x = np.random.default_rng(0).normal(size=(2, 5, 16)).astype("float32")
keras_mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8)
want = ops.convert_to_numpy(keras_mha(x, x))


def project(dense, inputs):  # kernel (d, heads, d_k) -> (B, heads, T, d_k)
    kernel, bias = (ops.convert_to_numpy(w) for w in dense.weights)
    return np.einsum("btd,dhk->bhtk", inputs, kernel) + bias[None, :, None, :]


q, k, v = (
    project(dense, x)
    for dense in (keras_mha.query_dense, keras_mha.key_dense, keras_mha.value_dense)
)
scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])  # (B, h, T, T)
weights = np.exp(scores - scores.max(-1, keepdims=True))
weights /= weights.sum(-1, keepdims=True)  # softmax over keys
heads = weights @ v  # (B, h, T, d_k)
out_kernel, out_bias = (ops.convert_to_numpy(w) for w in keras_mha.output_dense.weights)
by_hand = np.einsum("bhtk,hkd->btd", heads, out_kernel) + out_bias  # Concat(heads) W^O
ours, _ = tfb.layers.scaled_dot_product_attention(q, k, v)
formula_diff = float(np.abs(by_hand - want).max())
ours_diff = float(np.abs(ops.convert_to_numpy(ours) - heads).max())
results["attention_formula_max_abs_diff"] = formula_diff
print(
    f"ATTENTION FORMULA: softmax(QK^T/sqrt(d_k))V by hand vs keras.layers.MultiHeadAttention: "
    f"max |diff| = {formula_diff:.2e}; tfb.layers.scaled_dot_product_attention vs by hand: "
    f"{ours_diff:.2e}"
)
assert formula_diff < 1e-5 and ours_diff < 1e-5

# ---------------------------------------------------------------- 1. syntax error
# The tutorial's feed-forward line is missing an opening parenthesis, so the file never runs.
# Our own one-line reproduction of that mistake:
try:
    compile("ffn = Dense units=4, activation='relu')", "<tutorial-style line>", "exec")
except SyntaxError as error:
    report(
        1,
        "a missing parenthesis",
        f"SyntaxError: {error.msg} -> nothing in the file runs. "
        "Ours: tf_bigmodels imports and runs.",
    )

# ---------------------------------------------------------------- 2. key_dim = d_model
# Keras's `key_dim` is the width of ONE head. Setting it to d_model gives each of the num_heads
# heads the full width: num_heads times the parameters (and compute) of a real Transformer.
wide = keras.layers.MultiHeadAttention(num_heads=8, key_dim=512)
wide(np.zeros((1, 4, 512), "float32"), np.zeros((1, 4, 512), "float32"))
right = tfb.layers.MultiHeadSelfAttention(num_heads=8)
right(np.zeros((1, 4, 512), "float32"))
results["key_dim_params"] = {"tutorial_style": wide.count_params(), "ours": right.count_params()}
report(
    2,
    "key_dim=d_model",
    f"d_model=512, 8 heads: {wide.count_params():,} attention "
    f"parameters with key_dim=d_model vs {right.count_params():,} with d_model // num_heads "
    f"({wide.count_params() / right.count_params():.1f}x).",
)


# ---------------------------------------------------------------- 3. one-Dense feed-forward
# A feed-forward block that is a single Dense(dff) outputs dff features; adding it back to its
# d_model-wide input only works when dff == d_model.
class OneDenseFeedForward(keras.layers.Layer):
    """Our reproduction of the shape mistake: residual + Dense(dff), no projection back."""

    def __init__(self, dff, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(dff, activation="relu")

    def call(self, x):
        return x + self.dense(x)


try:
    OneDenseFeedForward(DFF)(np.zeros((1, 4, D_MODEL), "float32"))
    failure = "no error"
except Exception as error:  # noqa: BLE001 (TensorFlow raises its own error types here)
    shapes = re.search(r"Incompatible shapes: \S+ vs\. \S+", str(error))
    failure = f"{type(error).__name__}: {shapes.group(0) if shapes else str(error)[:80]}"
fixed = tfb.layers.TransformerLayer(D_MODEL, NUM_HEADS, DFF)(np.zeros((1, 4, D_MODEL), "float32"))
results["ffn_failure"] = failure
report(
    3,
    "feed-forward is one Dense(dff)",
    f"d_model={D_MODEL}, dff={DFF}: {failure}. Ours "
    f"(Dense(dff) -> Dense(d_model)) returns {tuple(fixed.shape)}.",
)

# ---------------------------------------------------------------- 4. no causal mask
# A language model predicts y_i = x_{i+1}. Without a causal mask, position i attends to position
# i+1 and can simply copy the answer. We build the tutorial's GPT shape from our parts with
# `causal=False` and train it next to our `GPTModel` on the same Shakespeare batches.
tokenizer = ByteTokenizer()
texts = load_corpus("shakespeare")
train_data = lm_dataset(texts, tokenizer, SEQ_LEN, BATCH_SIZE, split="train", repeat=True)
val_x, val_y = next(iter(lm_dataset(texts, tokenizer, SEQ_LEN, BATCH_SIZE, split="val")))


def leaky_gpt():
    """A GPT-shaped functional model whose blocks are not causal (the tutorial's defect 4)."""
    token_ids = keras.Input((SEQ_LEN,), dtype="int32")
    x = keras.layers.Embedding(tokenizer.vocab_size, D_MODEL)(token_ids)
    x = x + tfb.layers.PositionEmbedding(SEQ_LEN)(x)
    for _ in range(NUM_LAYERS):
        x = tfb.layers.TransformerLayer(
            D_MODEL, NUM_HEADS, DFF, rate=0.0, causal=False, norm_first=True
        )(x)
    x = keras.layers.LayerNormalization()(x)
    return keras.Model(token_ids, keras.layers.Dense(tokenizer.vocab_size)(x))


loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
models = {
    "leaky (causal=False)": leaky_gpt(),
    "ours (GPTModel)": tfb.models.GPTModel(
        tokenizer.vocab_size, D_MODEL, NUM_HEADS, DFF, NUM_LAYERS, rate=0.0, max_length=SEQ_LEN
    ),
}
losses = {}
for name, model in models.items():
    model.compile(keras.optimizers.Adam(LEARNING_RATE), loss)
    started = time.time()
    history = model.fit(train_data, steps_per_epoch=STEPS, epochs=1, verbose=0, shuffle=False)
    logits = model(val_x)
    losses[name] = {
        "train_loss": float(history.history["loss"][-1]),
        "val_loss": float(loss(val_y, logits)),
        # The last position has no "next token" in its input to copy: what the model really knows.
        "val_loss_last_position": float(loss(val_y[:, -1], logits[:, -1])),
    }
    print(f"  trained {name} for {STEPS} steps in {time.time() - started:.0f}s: {losses[name]}")

# The mechanism, without training: change the token at position 10 and see which outputs move.
probe = np.asarray(val_x[:1])
changed = probe.copy()
changed[0, 10] = (changed[0, 10] + 1) % 256
moved = {
    name: bool(np.abs(ops.convert_to_numpy(m(probe) - m(changed)))[0, :10].max() > 0)
    for name, m in models.items()
}
results["causal"] = {"losses": losses, "earlier_positions_see_position_10": moved}
leaky, ours = losses["leaky (causal=False)"], losses["ours (GPTModel)"]
report(
    4,
    "no causal mask",
    f"after {STEPS} steps the leaky GPT's validation loss is "
    f"{leaky['val_loss']:.3f} (ours {ours['val_loss']:.3f}): it copies the next token it can "
    f"see. At the last position, where there is nothing to copy, its loss is "
    f"{leaky['val_loss_last_position']:.3f} (ours {ours['val_loss_last_position']:.3f}) — the "
    f"leaky model learned to read the answer, not to predict it, and generates nothing useful. "
    f"Positions 0..9 react to token 10: leaky {moved['leaky (causal=False)']}, ours "
    f"{moved['ours (GPTModel)']}.",
)

# ---------------------------------------------------------------- 5. no position embedding
# Self-attention without a causal mask and without positions treats its input as a bag of
# tokens: reversing the sequence just reverses the outputs, so "dog bites man" and
# "man bites dog" look the same to it.
tokens = keras.layers.Embedding(tokenizer.vocab_size, D_MODEL)
block = tfb.layers.TransformerLayer(D_MODEL, NUM_HEADS, DFF, rate=0.0)
sentence = ops.convert_to_numpy(tokenizer.tokenize(["dog bites man"]).to_tensor())
reversed_sentence = sentence[:, ::-1].copy()
without = np.abs(
    ops.convert_to_numpy(block(tokens(sentence)))[:, ::-1]
    - ops.convert_to_numpy(block(tokens(reversed_sentence)))
).max()
gpt = models["ours (GPTModel)"]
with_positions = np.abs(
    ops.convert_to_numpy(gpt(sentence))[:, ::-1] - ops.convert_to_numpy(gpt(reversed_sentence))
).max()
results["order"] = {"without_positions": float(without), "ours": float(with_positions)}
report(
    5,
    "no position embedding",
    f"outputs for a reversed input, reversed back, differ from the "
    f"original by {without:.1e} without positions (order invisible) and by {with_positions:.2f} "
    "in GPTModel (learned PositionEmbedding).",
)

# ---------------------------------------------------------------- 6. no padding mask
# Batches mix lengths, so short rows are padded. Without a padding mask, whatever stands in the
# padding changes the outputs of the real tokens.
real = np.random.default_rng(1).normal(size=(1, 6, D_MODEL)).astype("float32")
pad_a = np.concatenate([real, np.zeros((1, 4, D_MODEL), "float32")], axis=1)
pad_b = np.concatenate([real, np.ones((1, 4, D_MODEL), "float32")], axis=1)
padding_mask = np.array([[1] * 6 + [0] * 4])
no_mask = np.abs(ops.convert_to_numpy(block(pad_a) - block(pad_b)))[:, :6].max()
masked = np.abs(
    ops.convert_to_numpy(
        block(pad_a, padding_mask=padding_mask) - block(pad_b, padding_mask=padding_mask)
    )
)[:, :6].max()
results["padding"] = {"without_mask": float(no_mask), "with_mask": float(masked)}
report(
    6,
    "no padding mask",
    f"changing only the padding moves the real positions' outputs by "
    f"{no_mask:.2f} without a mask and by {masked:.1e} with `padding_mask`.",
)
assert masked == 0.0


# ---------------------------------------------------------------- 7. no **kwargs / get_config
class NoKwargsLayer(keras.layers.Layer):
    """Our reproduction: `super().__init__()` without **kwargs, and no get_config."""

    def __init__(self, units):
        super().__init__()
        self.dense = keras.layers.Dense(units)

    def call(self, x):
        return self.dense(x)


try:
    NoKwargsLayer(4, name="ffn")
    failure = "no error"
except TypeError as error:
    failure = f"TypeError: {error}"
named = tfb.layers.TransformerLayer(D_MODEL, NUM_HEADS, DFF, name="block_0", dtype="mixed_bfloat16")
inputs = keras.Input((None, D_MODEL))
saved = keras.Model(inputs, tfb.layers.TransformerLayer(D_MODEL, NUM_HEADS, DFF)(inputs))
saved.save(out_dir / "transformer_layer.keras")
reloaded = keras.saving.load_model(out_dir / "transformer_layer.keras")
same = np.allclose(reloaded(real), saved(real), atol=1e-6)
report(
    7,
    "no **kwargs, no get_config",
    f"{failure[:100]}. Ours takes name= and dtype= "
    f"({named.name}, {named.dtype_policy.name}) and reloads from .keras with equal outputs: "
    f"{same}.",
)

(out_dir / "walkthrough.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
print(f"\nWALKTHROUGH DONE: results in {out_dir / 'walkthrough.json'}")
