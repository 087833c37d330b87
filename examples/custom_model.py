"""Use tf_bigmodels layers inside your own Keras model: a Transformer time-series forecaster.

Nothing here is about text. The model reads a window of a noisy signal (a sum of two sine waves
with random periods and phases), embeds each value with a Dense layer plus a learned
`PositionEmbedding`, runs two causal `TransformerLayer`s, and predicts the next value at every
position (causal, so position t only sees values up to t, as in GPT). It is an ordinary
functional `keras.Model`: trained with `fit`, compared with the naive "tomorrow equals today"
forecast, saved to `.keras` and reloaded without `custom_objects`.

Run:  python examples/custom_model.py          (about 1 minute on a laptop CPU)
      python examples/custom_model.py --smoke  (seconds)
"""

import argparse
import os
import pathlib

# ---------------------------------------------------------------- settings
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--smoke", action="store_true", help="a fast run for CI")
parser.add_argument(
    "--out", default="example_outputs/custom_model", help="directory for forecaster.keras"
)
args = parser.parse_args()

# TensorFlow loads only now, so that --help answers at once, without it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tf_bigmodels as tfb  # noqa: E402

out = pathlib.Path(args.out)
out.mkdir(parents=True, exist_ok=True)

WINDOW, D_MODEL, NUM_HEADS, DFF, NUM_LAYERS = 64, 32, 4, 64, 2
NUM_SERIES = 512 if args.smoke else 4096
EPOCHS = 2 if args.smoke else 15
keras.utils.set_random_seed(0)

# ---------------------------------------------------------------- data
# Each example is WINDOW + 1 values; the model reads the first WINDOW and predicts, at every
# position t, the value at t + 1.
rng = np.random.default_rng(0)
t = np.arange(WINDOW + 1)[None, :]
periods = rng.uniform(8, 32, (NUM_SERIES, 2, 1))
phases = rng.uniform(0, 2 * np.pi, (NUM_SERIES, 2, 1))
series = np.sin(2 * np.pi * t[:, None, :] / periods + phases).sum(axis=1)
series += rng.normal(0, 0.05, series.shape)
x, y = series[:, :-1, None].astype("float32"), series[:, 1:, None].astype("float32")
cut = int(0.9 * NUM_SERIES)
(x_train, y_train), (x_test, y_test) = (x[:cut], y[:cut]), (x[cut:], y[cut:])

# ---------------------------------------------------------------- the model
values = keras.Input((WINDOW, 1), name="values")
h = keras.layers.Dense(D_MODEL, name="value_embedding")(values)  # (B, T, d_model)
h = h + tfb.layers.PositionEmbedding(max_length=WINDOW, name="position_embedding")(h)
for i in range(NUM_LAYERS):
    h = tfb.layers.TransformerLayer(
        D_MODEL, NUM_HEADS, DFF, rate=0.0, causal=True, norm_first=True, name=f"block_{i}"
    )(h)
h = keras.layers.LayerNormalization(name="final_norm")(h)
forecast = keras.layers.Dense(1, name="next_value")(h)  # (B, T, 1)
model = keras.Model(values, forecast, name="forecaster")
model.summary(line_length=90)

# ---------------------------------------------------------------- train with fit
model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
model.fit(x_train, y_train, batch_size=64, epochs=EPOCHS, validation_split=0.1, verbose=2)

# ---------------------------------------------------------------- compare with a naive forecast
# Score the second half of each window, where the model has seen enough of the signal.
half = WINDOW // 2
model_mse = float(np.mean((model.predict(x_test, verbose=0) - y_test)[:, half:] ** 2))
naive_mse = float(np.mean((x_test - y_test)[:, half:] ** 2))
print(
    f"\nTest MSE (second half of the window): model {model_mse:.4f}, "
    f"naive last-value forecast {naive_mse:.4f}"
)

# ---------------------------------------------------------------- save and reload
# Importing tf_bigmodels registers its layers, so no custom_objects are needed.
path = out / "forecaster.keras"
model.save(path)
reloaded = keras.saving.load_model(path)
difference = float(
    np.abs(reloaded.predict(x_test, verbose=0) - model.predict(x_test, verbose=0)).max()
)
print(f"reloaded {path}: max |difference| of predictions {difference:.1e}")
assert difference < 1e-5
print(f"\nCUSTOM_MODEL DONE: model MSE {model_mse:.4f} vs naive {naive_mse:.4f}; saved {path}")
