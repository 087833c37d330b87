"""The article's Transformer and GPT, defect by defect, measured next to tf_bigmodels.

The article 《大模型的定义与代表性模型》 gives a `TransformerLayer(d_model, num_heads, dff, rate)`
and a `GPTModel(vocab_size, d_model, num_heads, dff, num_layers, rate)`. Its code does not parse,
so this script does not run it. It shows each defect in one of two ways:

  * `ArticleStyleLayer`, a minimal class written here with the article's layer's structure (its
    syntax error fixed, everything else kept: `key_dim=d_model`, one `Dense(dff)` as the
    feed-forward block, post-norm, ReLU, no masks, `super().__init__()` without `**kwargs`, no
    `get_config`), for the defects that live in that structure;
  * our own models with exactly one thing changed (the causal mask switched off, the position
    table zeroed, the activation swapped, ...), for the defects that need a trained or a
    pretrained model. One change per comparison, so the difference has one cause.

The defects are numbered as in the table of docs/article.md. For each one the script prints the
numbers it measured in this run, the rule that decides whether they show the defect (a Python
expression, printed exactly as it is evaluated), and the verdict the rule gives. When a run does not show a
defect, the verdict says so. Everything also goes to `walkthrough.json`, which the tests read.

Run:  python examples/article_walkthrough.py            (about 1.5 minutes on a 2-core CPU)
      python examples/article_walkthrough.py --smoke    (80 training steps instead of 600)
"""

import argparse
import functools
import json
import os
import pathlib
import re
import time
import warnings

# ---------------------------------------------------------------- settings
# Read before TensorFlow loads, so that --help answers at once.
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--smoke", action="store_true", help="a fast run for CI")
parser.add_argument(
    "--out", default="example_outputs/article_walkthrough", help="directory for walkthrough.json"
)
parser.add_argument("--steps", type=int, default=None, help="training steps of each GPT (defect 4)")
args = parser.parse_args()

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

import tf_bigmodels as tfb  # noqa: E402
from tf_bigmodels.convert import gpt_from_keras_hub  # noqa: E402
from tf_bigmodels.data import lm_dataset, load_corpus  # noqa: E402
from tf_bigmodels.tokenizers import ByteTokenizer  # noqa: E402

# The GPTs of defect 4: small enough to train in seconds. Their weights start at a standard
# deviation of 0.1 (GPT-2 uses 0.02 for models a thousand times larger); at 0.02 this tiny model
# needs several hundred steps before it learns anything beyond letter frequencies.
D_MODEL, NUM_HEADS, DFF, NUM_LAYERS, INIT_STD = 64, 4, 256, 2, 0.1
SEQ_LEN, BATCH_SIZE, LEARNING_RATE = 32, 32, 3e-3
STEPS = args.steps or (80 if args.smoke else 600)
SAMPLE_PROMPT, SAMPLE_LENGTH = "KING RICHARD", 80
out_dir = pathlib.Path(args.out)
out_dir.mkdir(parents=True, exist_ok=True)
keras.utils.set_random_seed(0)
results = {"settings": {"steps": STEPS, "seq_len": SEQ_LEN, "smoke": args.smoke}, "defects": {}}


def numpy(x):
    return ops.convert_to_numpy(x)


def max_diff(a, b):
    return float(np.abs(numpy(a).astype("float64") - numpy(b).astype("float64")).max())


def conclude(number, title, numbers, rule, shown, not_shown):
    """Prints what was measured, the rule, and the verdict the rule gives on these numbers.

    `rule` is a Python expression over the names in `numbers`; it is evaluated here, on the
    numbers printed above it, so the verdict cannot say more than the numbers do.
    """
    holds = bool(eval(rule, {"__builtins__": {"len": len}}, dict(numbers)))
    text = (shown if holds else not_shown).format(**numbers)
    results["defects"][str(number)] = {
        "title": title,
        "numbers": numbers,
        "rule": rule,
        "shown": holds,
    }
    print(f"\nDEFECT {number}: {title}")
    for name, value in numbers.items():
        print(f"  {name} = {value:.4g}" if isinstance(value, float) else f"  {name} = {value!r}")
    print(f"  rule: {rule}")
    print(f"  verdict: {'SHOWN' if holds else 'NOT SHOWN IN THIS RUN'}: {text}")


# ---------------------------------------------------------------- the article's layer, rebuilt
class ArticleStyleLayer(keras.layers.Layer):
    """The article's layer as it would be with its one syntax error fixed, and nothing else.

    Kept from the article: every head `d_model` wide, a feed-forward block of one `Dense(dff)`,
    post-norm, ReLU, no mask of any kind, a constructor that accepts no base-layer arguments and
    calls `super().__init__()` without them, and no `get_config`.
    """

    def __init__(self, d_model, num_heads, dff, rate=0.1):
        super().__init__()
        self.attention = keras.layers.MultiHeadAttention(num_heads=num_heads, key_dim=d_model)
        self.feed_forward = keras.layers.Dense(dff, activation="relu")
        self.norm_1 = keras.layers.LayerNormalization(epsilon=1e-6)
        self.norm_2 = keras.layers.LayerNormalization(epsilon=1e-6)
        self.dropout_1 = keras.layers.Dropout(rate)
        self.dropout_2 = keras.layers.Dropout(rate)

    def call(self, x, training=False):
        x = self.norm_1(x + self.dropout_1(self.attention(x, x), training=training))
        return self.norm_2(x + self.dropout_2(self.feed_forward(x), training=training))


def error_text(error):
    """The innermost message of an error (Keras wraps deserialization errors in others)."""
    inner = re.findall(r"Exception encountered: (.*)", str(error))
    return f"{type(error).__name__}: {(inner[-1] if inner else str(error)).strip()[:160]}"


# ---------------------------------------------------------------- the attention formula
# The article writes Attention(Q, K, V) = softmax(QK^T / sqrt(d_k)) V and
# MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O. We compute both by hand with NumPy from
# the weights of a `keras.layers.MultiHeadAttention` and compare with what the layer returns.
x = np.random.default_rng(0).normal(size=(2, 5, 16)).astype("float32")
keras_mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8)
want = numpy(keras_mha(x, x))


def project(dense, inputs):  # kernel (d, heads, d_k) -> (B, heads, T, d_k): one W^Q_i per head
    kernel, bias = (numpy(w) for w in dense.weights)
    return np.einsum("btd,dhk->bhtk", inputs, kernel) + bias[None, :, None, :]


q, k, v = (
    project(d, x) for d in (keras_mha.query_dense, keras_mha.key_dense, keras_mha.value_dense)
)
scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])  # (B, h, T, T)
weights = np.exp(scores - scores.max(-1, keepdims=True))
weights /= weights.sum(-1, keepdims=True)  # softmax over keys
heads = weights @ v  # head_i = Attention(x W^Q_i, x W^K_i, x W^V_i): (B, h, T, d_k)
out_kernel, out_bias = (numpy(w) for w in keras_mha.output_dense.weights)
by_hand = np.einsum("bhtk,hkd->btd", heads, out_kernel) + out_bias  # Concat(heads) W^O
ours, _ = tfb.layers.scaled_dot_product_attention(q, k, v)
results["attention_formula"] = {
    "by_hand_vs_keras": max_diff(by_hand, want),
    "ours_vs_by_hand": max_diff(ours, heads),
}
print(
    "ATTENTION FORMULA: softmax(QK^T/sqrt(d_k))V and Concat(head_i)W^O by hand vs "
    f"keras.layers.MultiHeadAttention: max |diff| = {results['attention_formula']['by_hand_vs_keras']:.1e}; "
    f"tfb.layers.scaled_dot_product_attention vs by hand: "
    f"{results['attention_formula']['ours_vs_by_hand']:.1e}"
)

# ---------------------------------------------------------------- 1. syntax error
# The article's feed-forward line misses an opening parenthesis. Our one-line reproduction:
try:
    compile("ffn = Dense units=4, activation='relu')", "<article-style line>", "exec")
    syntax_error = ""
except SyntaxError as error:
    syntax_error = f"SyntaxError: {error.msg}"
conclude(
    1,
    "`Dense units=dff, ...)` does not parse",
    {"error": syntax_error},
    "error.startswith('SyntaxError')",
    "Python refuses the whole file ({error}), so none of the article's code runs. "
    "tf_bigmodels imports and runs.",
    "the line compiled; the defect is not reproduced.",
)

# ---------------------------------------------------------------- 2. key_dim = d_model
# Keras's `key_dim` is the width of ONE head. With key_dim=d_model every head is as wide as the
# whole model: num_heads times the attention parameters (and work) of a real Transformer.
wide = ArticleStyleLayer(512, 8, 512)
wide(np.zeros((1, 4, 512), "float32"))
right = tfb.layers.MultiHeadSelfAttention(num_heads=8)
right(np.zeros((1, 4, 512), "float32"))
conclude(
    2,
    "`key_dim=d_model`: every head as wide as the model",
    {
        "heads": 8,
        "article_attention_params": wide.attention.count_params(),
        "ours_attention_params": right.count_params(),
        "ratio": wide.attention.count_params() / right.count_params(),
    },
    "ratio == article_attention_params / ours_attention_params and 0.99 * heads < ratio <= heads",
    "with d_model=512 and 8 heads the article's attention has {article_attention_params:,} "
    "parameters, ours (heads of d_model // num_heads = 64) {ours_attention_params:,}: "
    "{ratio:.3f} times as many, num_heads times to within 1% (the output bias does not grow "
    "with the heads).",
    "the parameter counts do not differ by the number of heads.",
)

# ---------------------------------------------------------------- 3. one-Dense feed-forward
# The feed-forward block is one Dense(dff): it outputs dff features, and adding them back to the
# d_model-wide input works only when dff == d_model.
try:
    ArticleStyleLayer(D_MODEL, NUM_HEADS, DFF)(np.zeros((1, 4, D_MODEL), "float32"))
    ffn_error = ""
except Exception as error:  # noqa: BLE001 (TensorFlow raises its own error types here)
    shapes = re.search(r"Incompatible shapes: \S+ vs\. \S+", str(error))
    ffn_error = f"{type(error).__name__}: {shapes.group(0) if shapes else str(error)[:80]}"
fixed = tfb.layers.TransformerLayer(D_MODEL, NUM_HEADS, DFF)(np.zeros((1, 4, D_MODEL), "float32"))
conclude(
    3,
    "the feed-forward block is one `Dense(dff)`",
    {
        "d_model": D_MODEL,
        "dff": DFF,
        "article_error": ffn_error,
        "ours_output_width": int(fixed.shape[-1]),
    },
    "'Incompatible shapes' in article_error and ours_output_width == d_model",
    "the article's layer fails as soon as dff != d_model ({article_error}); ours "
    "(Dense(dff) -> Dense(d_model)) returns width {ours_output_width}.",
    "the article-style layer did not fail with dff != d_model.",
)

# ---------------------------------------------------------------- 4. no causal mask
# A language model predicts y_i = x_{i+1} from x_1..x_i. Without a causal mask, position i also
# sees x_{i+1}, the very token it must predict, and can copy it. Two GPTModels, identical but for
# one thing: the "leaky" one has its blocks' causal mask switched off. Both are trained on the
# same Shakespeare batches, then evaluated two ways on held-out text:
#   * teacher-forced: the whole window at once (how training sees it), so the leaky model can
#     still read each answer;
#   * prefix-only: position i is given only x_1..x_i, as in generation, where the next token
#     does not exist yet. For the causal model both ways give the same numbers.
tokenizer = ByteTokenizer()
texts = load_corpus("shakespeare")
train_data = lm_dataset(texts, tokenizer, SEQ_LEN, BATCH_SIZE, split="train", repeat=True)
val_x, val_y = (
    numpy(t) for t in next(iter(lm_dataset(texts, tokenizer, SEQ_LEN, 64, split="val")))
)
loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def make_gpt(causal):
    keras.utils.set_random_seed(0)  # the same initial weights for both models
    model = tfb.models.GPTModel(
        tokenizer.vocab_size,
        D_MODEL,
        NUM_HEADS,
        DFF,
        NUM_LAYERS,
        rate=0.0,
        max_length=SEQ_LEN,
        initializer_range=INIT_STD,
    )
    for block in model.blocks:
        block.causal = causal  # the one change: True in GPTModel; False is what the article lacks
    return model


@functools.cache
def forward(model):
    """The model's logits as one graph for every batch size and length: the hundreds of full
    forward passes below then cost what this small model computes, not an eager call each."""
    return tf.function(
        model, input_signature=[tf.TensorSpec([None, None], tf.int32)], autograph=False
    )


def prefix_only_logits(model, token_ids):
    """Logits at each position i computed from token_ids[:, :i + 1] alone."""
    # A one-token prefix makes Keras warn about a softmax over one key; that is intended here.
    warnings.filterwarnings("ignore", message="You are using a softmax over axis -1")
    return np.stack(
        [numpy(forward(model)(token_ids[:, : i + 1]))[:, -1] for i in range(token_ids.shape[1])],
        axis=1,
    )


def greedy(model, prompt, length):
    """Greedy decoding by full forward passes over the last SEQ_LEN tokens (works without a mask)."""
    ids = list(numpy(tokenizer.tokenize([prompt])[0]))
    for _ in range(length):
        logits = numpy(forward(model)(np.array([ids[-SEQ_LEN:]], "int32")))[0, -1]
        ids.append(int(np.argmax(logits[:256])))  # bytes only: no end/pad token mid-sample
    return ids


gpts = {"leaky": make_gpt(causal=False), "ours": make_gpt(causal=True)}
measured, samples = {}, {}
for name, model in gpts.items():
    model.compile(keras.optimizers.Adam(LEARNING_RATE), loss_fn)
    started = time.time()
    history = model.fit(
        train_data, steps_per_epoch=10, epochs=STEPS // 10, verbose=0, shuffle=False
    )
    teacher = numpy(model(val_x))
    prefix = prefix_only_logits(model, val_x)
    measured[f"{name}_train_loss_last_10_steps"] = float(history.history["loss"][-1])
    measured[f"{name}_teacher_forced_loss"] = float(loss_fn(val_y, teacher))
    measured[f"{name}_prefix_only_loss"] = float(loss_fn(val_y, prefix))
    measured[f"{name}_prefix_only_accuracy"] = float(np.mean(prefix.argmax(-1) == val_y))
    ids = greedy(model, SAMPLE_PROMPT, SAMPLE_LENGTH)
    samples[name] = numpy(tokenizer.detokenize(np.array([ids], "int32")))[0].decode()
    print(f"  trained the {name} GPT for {STEPS} steps in {time.time() - started:.0f}s")

# The mechanism, without training: change the token at position 10 and see which outputs move.
changed = val_x[:1].copy()
changed[0, 10] = (changed[0, 10] + 1) % 256
for name, model in gpts.items():
    measured[f"{name}_positions_0_to_9_move"] = bool(
        np.abs(numpy(model(val_x[:1])) - numpy(model(changed)))[0, :10].max() > 0
    )
# Our cached `generate` gives the same greedy tokens as the full forward passes above.
prompt_ids = numpy(tokenizer.tokenize([SAMPLE_PROMPT]).to_tensor())
cached = numpy(gpts["ours"].generate(prompt_ids, SEQ_LEN - prompt_ids.shape[1], temperature=0.0))
full = greedy(gpts["ours"], SAMPLE_PROMPT, SEQ_LEN - prompt_ids.shape[1])
cached_equals_full = bool(list(cached[0]) == full)
results["samples"] = samples
print(f"\n  greedy samples after {STEPS} steps, prompt {SAMPLE_PROMPT!r}:")
for name, text in samples.items():
    print(f"    {name:>5}: {text!r}")
conclude(
    4,
    "no causal mask",
    measured,
    "leaky_teacher_forced_loss < 0.5 and leaky_teacher_forced_loss < ours_teacher_forced_loss / 2"
    " and leaky_prefix_only_loss > ours_prefix_only_loss"
    " and leaky_prefix_only_accuracy < ours_prefix_only_accuracy"
    " and leaky_positions_0_to_9_move and not ours_positions_0_to_9_move",
    "the leaky GPT reads the answer instead of predicting it. Teacher-forced, where the next "
    "token is visible, its loss falls to {leaky_teacher_forced_loss:.3f} (ours "
    "{ours_teacher_forced_loss:.3f}); given only the prefix, as in generation, its loss is "
    "{leaky_prefix_only_loss:.3f} against ours {ours_prefix_only_loss:.3f}, and its greedy next "
    "token is right {leaky_prefix_only_accuracy:.0%} of the time against ours "
    "{ours_prefix_only_accuracy:.0%}. Compare the two samples above.",
    "these numbers do not show the leaky GPT copying the answer (train it longer: --steps).",
)

# ---------------------------------------------------------------- 5. no padding mask
# Batches mix lengths, so short rows are padded. Without a padding mask, whatever stands in the
# padding changes the outputs at the real positions. The same block, called without and with
# `padding_mask`.
block = tfb.layers.TransformerLayer(D_MODEL, NUM_HEADS, DFF, rate=0.0)
real = np.random.default_rng(1).normal(size=(1, 6, D_MODEL)).astype("float32")
pad_a = np.concatenate([real, np.zeros((1, 4, D_MODEL), "float32")], axis=1)
pad_b = np.concatenate([real, np.ones((1, 4, D_MODEL), "float32")], axis=1)
padding_mask = np.array([[1] * 6 + [0] * 4])
conclude(
    5,
    "no padding mask",
    {
        "without_mask": max_diff(block(pad_a)[:, :6], block(pad_b)[:, :6]),
        "with_mask": max_diff(
            block(pad_a, padding_mask=padding_mask)[:, :6],
            block(pad_b, padding_mask=padding_mask)[:, :6],
        ),
    },
    "without_mask > 1e-2 and with_mask == 0.0",
    "changing only the padding moves the real positions' outputs by {without_mask:.2f} without "
    "a mask and by exactly {with_mask} with `padding_mask`.",
    "the padding did not move the real positions here, or the mask did not stop it.",
)

# ---------------------------------------------------------------- 6 and 7: pretrained weights
# GPT-2 is pre-norm and uses the tanh form of GELU. A GPT-2-shaped keras-hub backbone with
# random weights stands in for GPT-2's trained ones (no download here); `gpt_from_keras_hub`
# copies them into our GPTModel. Then the same weights in a model with one thing changed. What
# is shown is that the weights of a pre-norm GPT-2-style model need pre-norm blocks (and its
# activation), not anything about GPT-2's trained weights themselves.
backbone = keras_hub.models.GPT2Backbone(
    vocabulary_size=300,
    num_layers=2,
    num_heads=4,
    hidden_dim=64,
    intermediate_dim=256,
    max_sequence_length=32,
)
rng = np.random.default_rng(0)
for variable in backbone.weights:  # like trained weights: gammas near 1, the rest clearly nonzero
    value = rng.normal(0.0, 0.2, variable.shape) + variable.path.endswith("gamma")
    variable.assign(value.astype("float32"))
converted = gpt_from_keras_hub(backbone)
token_ids = rng.integers(0, 300, size=(2, 16)).astype("int32")
reference = numpy(backbone({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)}))
reference = reference @ numpy(backbone.token_embedding.embeddings).T


def variant(**changes):
    """`converted`'s weights in a GPTModel whose config differs by `changes`."""
    model = tfb.models.GPTModel.from_config({**converted.get_config(), **changes})
    model.build((None, None))
    model.set_weights(converted.get_weights())
    return model


post_norm = variant()
for block in post_norm.blocks:
    block.norm_first = False  # the article's blocks: post-norm (its final norm is kept)
conclude(
    6,
    "only post-norm available",
    {
        "pre_norm_vs_keras_hub": max_diff(converted(token_ids), reference),
        "post_norm_vs_keras_hub": max_diff(post_norm(token_ids), reference),
    },
    "pre_norm_vs_keras_hub <= 1e-5 and post_norm_vs_keras_hub > 1e-2",
    "random weights of a GPT-2-shaped model give keras-hub's GPT2Backbone logits in pre-norm "
    "blocks (max |diff| {pre_norm_vs_keras_hub:.1e}) and other logits in post-norm blocks, the "
    "only kind the article's layer has ({post_norm_vs_keras_hub:.2f}).",
    "norm placement made no measurable difference here.",
)
conclude(
    7,
    "ReLU only",
    {
        "gelu_tanh_vs_keras_hub": max_diff(converted(token_ids), reference),
        "gelu_exact_vs_keras_hub": max_diff(variant(activation="gelu")(token_ids), reference),
        "relu_vs_keras_hub": max_diff(variant(activation="relu")(token_ids), reference),
    },
    "gelu_tanh_vs_keras_hub <= 1e-5 and relu_vs_keras_hub > 1e-2 and gelu_exact_vs_keras_hub > 1e-5",
    "with GPT-2's activation (tanh GELU) these random GPT-2-shaped weights give keras-hub's "
    "logits to {gelu_tanh_vs_keras_hub:.1e}; the article's ReLU is off by "
    "{relu_vs_keras_hub:.2f}, and even the other GELU form by {gelu_exact_vs_keras_hub:.1e}.",
    "the activation made no measurable difference here.",
)

# ---------------------------------------------------------------- 8. no **kwargs, no get_config
# What works and what does not with the article's layer: saving does (Keras records the
# constructor's plain arguments by itself), and so does a global mixed-precision policy. What
# fails is reloading the saved file, and naming or typing one layer, because the constructor
# takes no `name=`/`dtype=`/`trainable=` and would drop them anyway.
inputs = keras.Input((None, D_MODEL))
article_model = keras.Model(inputs, ArticleStyleLayer(D_MODEL, NUM_HEADS, D_MODEL)(inputs))
article_path = out_dir / "article_layer.keras"
article_model.save(article_path)
try:
    keras.saving.load_model(article_path, custom_objects={"ArticleStyleLayer": ArticleStyleLayer})
    reload_error = ""
except Exception as error:  # noqa: BLE001 (Keras wraps the TypeError in its own message)
    reload_error = error_text(error)
per_layer_errors = []
for option in ({"name": "block_0"}, {"dtype": "mixed_bfloat16"}):
    try:
        ArticleStyleLayer(D_MODEL, NUM_HEADS, D_MODEL, **option)
    except TypeError as error:
        per_layer_errors.append(error_text(error))
previous_policy = keras.config.dtype_policy()
keras.config.set_dtype_policy("mixed_bfloat16")
under_policy = ArticleStyleLayer(D_MODEL, NUM_HEADS, D_MODEL)
policy_output = under_policy(real)
keras.config.set_dtype_policy(previous_policy)
named = tfb.layers.TransformerLayer(D_MODEL, NUM_HEADS, DFF, name="block_0", dtype="mixed_bfloat16")
ours_model = keras.Model(inputs, tfb.layers.TransformerLayer(D_MODEL, NUM_HEADS, DFF)(inputs))
ours_model.save(out_dir / "transformer_layer.keras")
reloaded = keras.saving.load_model(out_dir / "transformer_layer.keras")
conclude(
    8,
    "`super().__init__()` drops `**kwargs`, no `get_config`",
    {
        "article_save_works": article_path.is_file(),
        "article_global_mixed_policy_dtype": str(policy_output.dtype.name),
        "article_reload_error": reload_error,
        "article_per_layer_errors": per_layer_errors,
        "ours_name_and_dtype": [named.name, named.dtype_policy.name],
        "ours_reload_max_diff": max_diff(reloaded(real), ours_model(real)),
    },
    "article_save_works and article_global_mixed_policy_dtype == 'bfloat16'"
    " and article_reload_error.startswith('TypeError') and len(article_per_layer_errors) == 2"
    " and ours_name_and_dtype == ['block_0', 'mixed_bfloat16'] and ours_reload_max_diff <= 1e-6",
    "the article's layer saves and runs under a global mixed_bfloat16 policy, but its .keras "
    "file does not load back ({article_reload_error}) and one layer cannot be named or given "
    "a dtype ({article_per_layer_errors[0]}). Ours takes name= and dtype= and reloads with "
    "outputs equal to {ours_reload_max_diff:.0e}.",
    "the article-style layer did not fail the way the table says.",
)

# ---------------------------------------------------------------- 9. the article's GPTModel
# Its GPTModel has no position embedding, no tied output and no way to generate, and puts a
# final LayerNormalization on top of post-norm blocks.
# (a) Order. The article's GPT has neither positions nor a causal mask, and such a model sees its
# input as a bag of tokens: reorder the input and the outputs are only reordered the same way.
# The leaky GPT of defect 4 (no causal mask, like the article's), then the same model with its
# position table zeroed; "dog bites man" reversed, and the outputs reversed back.
article_like = gpts["leaky"]
sentence = numpy(tokenizer.tokenize(["dog bites man"]).to_tensor())


def order_effect():
    """How far the outputs for the reversed sentence, reversed back, are from the original's."""
    return max_diff(numpy(article_like(sentence[:, ::-1].copy()))[:, ::-1], article_like(sentence))


with_positions = order_effect()
table = article_like.position_embedding.embeddings
kept = numpy(table)
table.assign(np.zeros_like(kept))  # the one change: no position information
without_positions = order_effect()
table.assign(kept)
# (b) The final norm on post-norm blocks: a post-norm block's output is already normalised, so a
# LayerNormalization after it (as initialised) changes nothing.
post_block = tfb.layers.TransformerLayer(D_MODEL, NUM_HEADS, DFF, norm_first=False)
block_out = post_block(real)
extra_norm = keras.layers.LayerNormalization(epsilon=1e-6)
# (c) The tied output: the same model with an output layer of its own has more parameters.
sizes = dict(rate=0.0, max_length=SEQ_LEN)
tied, untied = (
    tfb.models.GPTModel(
        tokenizer.vocab_size, D_MODEL, NUM_HEADS, DFF, NUM_LAYERS, tie_embeddings=tie, **sizes
    )
    for tie in (True, False)
)
for model in (tied, untied):
    model(val_x[:1])
conclude(
    9,
    "the article's GPTModel: no positions, no tied output, no generation, a redundant final norm",
    {
        "reversed_input_changes_outputs_with_positions": with_positions,
        "reversed_input_changes_outputs_without_positions": without_positions,
        "tied_output_saves_params": tokenizer.vocab_size * D_MODEL,
        "untied_params": untied.count_params(),
        "tied_params": tied.count_params(),
        "final_norm_on_post_norm_block_changes_output_by": max_diff(
            extra_norm(block_out), block_out
        ),
        "ours_cached_generate_equals_full_passes": cached_equals_full,
    },
    "reversed_input_changes_outputs_without_positions < 1e-4"
    " and reversed_input_changes_outputs_with_positions > 1e-2"
    " and final_norm_on_post_norm_block_changes_output_by < 1e-3"
    " and ours_cached_generate_equals_full_passes"
    " and untied_params - tied_params == tied_output_saves_params",
    "without positions (and without a causal mask, as in the article) 'dog bites man' read "
    "backwards gives the same outputs, only reversed (max |diff| "
    "{reversed_input_changes_outputs_without_positions:.1e}; with positions "
    "{reversed_input_changes_outputs_with_positions:.2f}): word order is invisible. Tying the output to the token "
    "embedding saves {tied_output_saves_params:,} parameters here. A final norm after a "
    "post-norm block changes its output by only {final_norm_on_post_norm_block_changes_output_by:.1e}. "
    "GPTModel.generate (key/value cache) gives the same greedy tokens as full passes: "
    "{ours_cached_generate_equals_full_passes}.",
    "some part of this comparison did not come out as the table says.",
)

# ---------------------------------------------------------------- 10. no BERT code
# The article describes BERT but gives no code, and its formula is not a model. Ours: token +
# segment + position embeddings, a bidirectional post-norm stack, a tanh pooler on [CLS], and
# MLM and NSP heads. Two properties that make it BERT and not a GPT:
encoder = tfb.models.BERTEncoder(300, D_MODEL, NUM_HEADS, DFF, 2, rate=0.0, max_length=32)
bert_ids = rng.integers(5, 300, size=(1, 12)).astype("int32")
segments = np.array([[0] * 6 + [1] * 6], "int32")
later_changed = bert_ids.copy()
later_changed[0, -1] = (later_changed[0, -1] + 1) % 300
base = encoder({"token_ids": bert_ids, "segment_ids": segments})
heads = tfb.models.BERTPretrainer(encoder)(
    {"token_ids": bert_ids, "segment_ids": segments, "mask_positions": np.array([[3, 8]])}
)
conclude(
    10,
    "no BERT code",
    {
        "first_position_moves_when_last_token_changes": max_diff(
            base["sequence_output"][0, 0],
            encoder({"token_ids": later_changed, "segment_ids": segments})["sequence_output"][0, 0],
        ),
        "segment_ids_change_the_output_by": max_diff(
            base["sequence_output"],
            encoder({"token_ids": bert_ids, "segment_ids": np.zeros_like(segments)})[
                "sequence_output"
            ],
        ),
        "mlm_logits_shape": list(heads["mlm_logits"].shape),
        "nsp_logits_shape": list(heads["nsp_logits"].shape),
    },
    "first_position_moves_when_last_token_changes > 1e-3 and segment_ids_change_the_output_by > 1e-3"
    " and mlm_logits_shape == [1, 2, 300] and nsp_logits_shape == [1, 2]",
    "BERTEncoder is bidirectional (the first position moves by "
    "{first_position_moves_when_last_token_changes:.1e} when the last token changes) and reads "
    "segments; BERTPretrainer gives MLM logits {mlm_logits_shape} for the masked positions and "
    "NSP logits {nsp_logits_shape}.",
    "some property of the BERT encoder did not show.",
)

(out_dir / "walkthrough.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
shown = [n for n, d in results["defects"].items() if d["shown"]]
print(f"\nDEFECTS SHOWN IN THIS RUN: {len(shown)} of {len(results['defects'])}")
print(f"WALKTHROUGH DONE: results in {out_dir / 'walkthrough.json'}")
