"""Pictures of a run: loss curves from `metrics.jsonl` and attention maps of a layer.

Matplotlib is an optional extra (`pip install "tf-bigmodels[plot]"`); only the functions that
draw need it, `attention_maps` (the numbers) does not. `tf-bigmodels plot RUN_DIR` calls
`plot_run`.

Example:

>>> from tf_bigmodels import plot
>>> plot.plot_loss_curves({"train": [(10, 2.5), (20, 2.1)], "val": [(20, 2.4)]}, "loss.png")
PosixPath('loss.png')
"""

import functools
import glob
import json
import math
import os
import pathlib
import shutil
import subprocess
import warnings

import numpy as np
from keras import ops

from tf_bigmodels import _checks
from tf_bigmodels.run_directory import RunDirectory
from tf_bigmodels.tokenizers import ByteTokenizer
from tf_bigmodels.training.loading import tokenizer_for
from tf_bigmodels.training.tasks import task_class_for

DEFAULT_TEXT = "First Citizen: Before we proceed any further, hear me speak."
_MAX_LABELLED_TOKENS = 64  # beyond this, tick labels would overlap


def _pyplot():
    """matplotlib.pyplot on the file-only Agg backend; ImportError with the install command."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError(
            "plotting needs matplotlib, which is not installed; install it with "
            '`pip install "tf-bigmodels[plot]"` (or `pip install matplotlib`).'
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path):
    """Reads a run's `metrics.jsonl` into training and validation series.

    Training lines are `{"step": N, "loss": ...}`; lines with an `"epoch"` key are end-of-epoch
    summaries, whose `"val_loss"` is the validation loss at that step.

    Args:
        path: str or path-like. The `metrics.jsonl` file, or the run directory holding it.

    Returns:
        dict with "train" `[(step, loss), ...]` and "val" `[(step, val_loss), ...]`, sorted by
        step (a resumed run may repeat a step; its last value is kept).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if a line is not a JSON object, or no line has a loss.

    Example:

    >>> import json
    >>> run = pathlib.Path("runs/demo")
    >>> run.mkdir(parents=True)
    >>> lines = [{"step": 10, "loss": 2.5}, {"step": 20, "loss": 2.1},
    ...          {"step": 20, "epoch": 1, "loss": 2.3, "val_loss": 2.4}]
    >>> _ = (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\\n" for x in lines))
    >>> read_metrics(run)
    {'train': [(10, 2.5), (20, 2.1)], 'val': [(20, 2.4)]}
    """
    path = pathlib.Path(path)
    if path.is_dir():
        path = RunDirectory(path).metrics
    if not path.is_file():
        raise FileNotFoundError(
            2,
            "No such file (a run directory has metrics.jsonl once training has logged a step)",
            str(path),
        )
    train, val = {}, {}
    with open(path, "rb") as file:
        for number, raw in enumerate(file, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise ValueError(
                    f"{path} line {number} is not JSON; metrics.jsonl holds one JSON "
                    "object per line (is this the right file?)."
                ) from None
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError(
                    f'{path} line {number} has no integer "step"; metrics.jsonl '
                    'lines look like {"step": 10, "loss": 2.5}.'
                )
            if "epoch" in record:
                if _finite(record.get("val_loss")):
                    val[record["step"]] = float(record["val_loss"])
            elif _finite(record.get("loss")):
                train[record["step"]] = float(record["loss"])
    if not train and not val:
        raise ValueError(
            f"{path} holds no loss values yet; train for at least `log_every` steps first."
        )
    return {"train": sorted(train.items()), "val": sorted(val.items())}


def _finite(value):
    return isinstance(value, (int, float)) and math.isfinite(value)


def plot_loss_curves(metrics, path, *, title=None):
    """Writes a PNG of the training and validation loss against the optimizer step.

    Args:
        metrics: a run directory, a `metrics.jsonl` path, or the dict `read_metrics` returns.
        path: str or path-like. The PNG to write (its directory is created).
        title: str or None. Figure title. Defaults to None ("loss").

    Returns:
        The PNG's path (`pathlib.Path`).

    Example:

    >>> plot_loss_curves({"train": [(10, 2.5), (20, 2.1)], "val": [(20, 2.4)]}, "plots/loss.png")
    PosixPath('plots/loss.png')
    """
    plt = _pyplot()
    series = metrics if isinstance(metrics, dict) else read_metrics(metrics)
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name, style in (("train", {"linewidth": 1.2}), ("val", {"marker": "o"})):
        if series[name]:
            steps, losses = zip(*series[name])
            axes.plot(
                steps, losses, label={"train": "training", "val": "validation"}[name], **style
            )
    axes.set_xlabel("step")
    axes.set_ylabel("loss (cross-entropy, nats)")
    axes.set_title(title or "loss")
    axes.grid(alpha=0.3)
    axes.legend()
    return _save(figure, path)


def attention_maps(model, inputs, layer=0):
    """The attention weights of one layer for one input: `(num_heads, seq, seq)` float32 NumPy.

    Row i of a head's map is the distribution over the keys that query position i attends to
    (each row sums to 1). For a `GPTModel` the causal mask makes every entry above the diagonal
    exactly zero; a BERT encoder attends in both directions and never to padded positions.

    Args:
        model: a `GPTModel`, or a `BERTEncoder` (or a `BERTPretrainer` / `BERTClassifier`, whose
            encoder is used).
        inputs: GPT: int token ids `(seq,)` or `(1, seq)`. BERT: the encoder's input dict with
            `(1, seq)` arrays ("token_ids", optional "segment_ids" and "padding_mask").
        layer: int in `[0, num_layers - 1]`. Which Transformer block. Defaults to 0.

    Returns:
        float32 NumPy array `(num_heads, seq, seq)`: `[head, query, key]`.

    Raises:
        TypeError: for another kind of model.
        ValueError: if `layer` is out of range or the input is not one sequence.

    Example:

    >>> from tf_bigmodels.models import GPTModel
    >>> gpt = GPTModel(258, 32, 2, 64, 2, max_length=16)
    >>> maps = attention_maps(gpt, [70, 105, 114, 115, 116], layer=1)
    >>> maps.shape, float(np.triu(maps, 1).max())
    ((2, 5, 5), 0.0)
    """
    model = getattr(model, "encoder", model)  # the encoder of a BERT task model
    if not hasattr(model, "attention_weights"):
        raise TypeError(
            f"`model` must be a GPTModel, BERTEncoder, BERTPretrainer or "
            f"BERTClassifier, got {type(model).__name__}."
        )
    layer = _checks.integer("layer", layer, low=0, high=model.num_layers - 1)
    if not isinstance(inputs, dict):  # token ids, for a GPT
        weights = model.attention_weights(_one_sequence(inputs, "inputs"))
    else:
        if "token_ids" not in inputs:
            raise ValueError(
                '`inputs` of a BERT model must be a dict with "token_ids" (and optionally '
                f'"segment_ids", "padding_mask"), got keys {sorted(inputs)}.'
            )
        token_ids = _one_sequence(inputs["token_ids"], "inputs['token_ids']")
        weights = model.attention_weights(
            {
                key: np.asarray(value, "int32").reshape(token_ids.shape)
                for key, value in dict(inputs, token_ids=token_ids).items()
                if value is not None
            }
        )
    return np.asarray(ops.convert_to_numpy(weights[layer]), "float32")[0]  # (heads, T, T)


def _token_labels(tokenizer, ids):
    """One tick label per token: a byte tokenizer's by character (`byte_token_labels`), a
    vocabulary's pieces, else each token's text."""
    if isinstance(tokenizer, ByteTokenizer):
        return byte_token_labels(ids)
    if hasattr(tokenizer, "vocabulary"):
        return [tokenizer.vocabulary[i] for i in ids]
    pieces = tokenizer.detokenize(np.asarray(ids)[:, None]).numpy()
    return [piece.decode("utf-8").replace("\n", "\\n") for piece in pieces]


def _one_sequence(token_ids, argument):
    ids = np.asarray(token_ids)
    if ids.ndim == 1:
        ids = ids[None, :]
    if (
        ids.ndim != 2
        or ids.shape[0] != 1
        or ids.shape[1] < 1
        or not np.issubdtype(ids.dtype, np.integer)
    ):
        raise ValueError(
            f"`{argument}` must be the integer token ids of one sequence, shape "
            f"(seq,) or (1, seq), got an array of shape {ids.shape} and dtype "
            f"{ids.dtype}."
        )
    return ids.astype("int32")


def plot_attention(maps, tokens, path, *, title=None):
    """Writes a PNG of attention maps, one panel per head, queries down and keys across.

    Tick labels name the tokens. A label `""` continues the label before it: the later bytes of
    a UTF-8 character (see `byte_token_labels`) share their character's one tick, placed at the
    middle of its bytes, so Chinese text reads character by character. Labels with CJK
    characters are drawn in an installed CJK font (Noto Sans CJK, Source Han Sans, WenQuanYi,
    SimHei, ...); when none is installed, each such character is shown as its code point
    (`U+4F60`), a note under the panels says so, and a warning names the fix.

    Args:
        maps: float array `(num_heads, seq, seq)`, as `attention_maps` returns.
        tokens: list of `seq` str. Tick labels (shown when there are at most 64 ticks).
        path: str or path-like. The PNG to write (its directory is created).
        title: str or None. Figure title. Defaults to None ("attention").

    Returns:
        The PNG's path (`pathlib.Path`).

    Example:

    >>> from tf_bigmodels.models import GPTModel
    >>> from tf_bigmodels.tokenizers import ByteTokenizer
    >>> ids = ByteTokenizer().tokenize("To be").numpy()
    >>> maps = attention_maps(GPTModel(258, 32, 2, 64, 1, max_length=16), ids)
    >>> plot_attention(maps, byte_token_labels(ids), "attention.png")
    PosixPath('attention.png')
    """
    plt = _pyplot()
    maps = np.asarray(maps)
    if maps.ndim != 3 or maps.shape[1] != maps.shape[2] or maps.shape[1] != len(tokens):
        raise ValueError(
            f"`maps` must have shape (heads, seq, seq) with seq = len(tokens) = "
            f"{len(tokens)}, got {maps.shape}."
        )
    ticks, labels, note = _ticks(tokens)
    labelled = 0 < len(ticks) <= _MAX_LABELLED_TOKENS
    heads = maps.shape[0]
    columns = min(math.ceil(math.sqrt(heads)), 4)
    rows = math.ceil(heads / columns)
    # Room for every tick label at a readable size: about 0.15 inch per label.
    size = min(max(3.5, 0.15 * len(ticks)), 8.0) if labelled else 4.0
    font_size = 10 if len(ticks) <= 24 else 8
    figure, axes = plt.subplots(
        rows,
        columns,
        figsize=(size * columns + 1.2, size * rows + 0.8 + 0.3 * bool(note)),
        squeeze=False,
        layout="constrained",
    )
    figure.get_layout_engine().set(hspace=0.06, wspace=0.04)  # rows apart from the key labels
    # The CJK font first, matplotlib's own DejaVu Sans for what it lacks (Latin, symbols).
    font = {"family": [_cjk_font(), "DejaVu Sans"]} if _cjk_font() else {}
    for head, axis in enumerate(axes.flat):
        if head >= heads:
            axis.axis("off")
            continue
        # One colour scale for all heads, up to the largest weight, so faint patterns show.
        image = axis.imshow(maps[head], cmap="viridis", vmin=0.0, vmax=float(maps.max()))
        axis.set_title(f"head {head}", fontsize=11)
        if labelled:
            # Single characters read best upright; longer labels (wordpieces) turned.
            turn = 90 if max(len(label) for label in labels) > 2 else 0
            axis.set_xticks(ticks, labels, rotation=turn, fontsize=font_size, **font)
            axis.set_yticks(ticks, labels, fontsize=font_size, **font)
        axis.set_xlabel("key (attended to)", fontsize=10)
        if head % columns == 0:
            axis.set_ylabel("query (attending)", fontsize=10)
    figure.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
    figure.suptitle(title or "attention", fontsize=13)
    if note and labelled:
        figure.supxlabel(note, fontsize=10, color="firebrick")
        warnings.warn(note, stacklevel=2)
    return _save(figure, path)


def byte_token_labels(token_ids):
    """Tick labels for `ByteTokenizer` ids: one per position, a character's later bytes "".

    Each complete UTF-8 character labels its first byte and leaves its other bytes "" (so
    `plot_attention` gives it one tick); a byte that is not part of a complete character (cut
    text, invalid UTF-8) is labelled by its hex value. A space is "␣", a newline "\\n", and
    the end-of-text and padding ids "<end>" and "<pad>".

    Args:
        token_ids: int sequence of `ByteTokenizer` ids.

    Returns:
        list of str, as long as `token_ids`.

    Example:

    >>> byte_token_labels([104, 105, 32, 228, 189, 160, 228, 256])
    ['h', 'i', '␣', '你', '', '', 'e4', '<end>']
    """
    ids = [int(i) for i in np.asarray(token_ids).reshape(-1)]
    labels, i = [], 0
    while i < len(ids):
        width = _utf8_width(ids[i])
        piece = bytes(ids[i : i + width]) if all(b < 256 for b in ids[i : i + width]) else b""
        try:
            character = piece.decode("utf-8") if len(piece) == width else None
        except UnicodeDecodeError:
            character = None
        if character is None:
            labels.append(_SPECIAL_LABELS.get(ids[i], f"{ids[i]:02x}"))
            i += 1
            continue
        labels += [_SPECIAL_LABELS.get(ids[i], character)] + [""] * (width - 1)
        i += width
    return labels


_SPECIAL_LABELS = {32: "␣", 10: "\\n", 256: "<end>", 257: "<pad>"}


def _utf8_width(byte):
    """Bytes in the UTF-8 sequence that `byte` starts (1 for ASCII, a bad or special byte)."""
    for width, (mask, lead) in ((2, (0xE0, 0xC0)), (3, (0xF0, 0xE0)), (4, (0xF8, 0xF0))):
        if byte < 256 and byte & mask == lead:
            return width
    return 1


def _ticks(tokens):
    """(positions, labels, note): one tick per group of a label and the "" after it."""
    starts = [i for i, token in enumerate(tokens) if token != "" or i == 0]
    ends = starts[1:] + [len(tokens)]
    positions = [(start + end - 1) / 2 for start, end in zip(starts, ends)]
    labels = [str(tokens[i]) for i in starts]
    note = None
    if _cjk_font() is None and any(_is_cjk(c) for label in labels for c in label):
        labels = ["".join(f"U+{ord(c):04X}" if _is_cjk(c) else c for c in t) for t in labels]
        note = (
            "No font with Chinese/Japanese/Korean characters is installed, so they are shown as "
            "code points (U+XXXX);\ninstall one (e.g. the fonts-noto-cjk package) to see them."
        )
    return positions, labels, note


def _is_cjk(character):
    """Whether matplotlib's default font (DejaVu Sans) lacks `character`: CJK and full-width."""
    code = ord(character)
    return 0x2E80 <= code <= 0x9FFF or 0xAC00 <= code <= 0xD7AF or 0xF900 <= code <= 0xFFEF


@functools.cache
def _cjk_font():
    """The name of an installed font with CJK glyphs, or None.

    Matplotlib lists the fonts it found when it built its font cache; a CJK font installed
    since then (`apt install fonts-noto-cjk`) is missing from that list until the cache is
    rebuilt. So when no listed font has the glyphs, the system's CJK font files (`fc-list
    :lang=zh`, and the usual places on Linux, macOS and Windows) that matplotlib does not know
    are added to it (`font_manager.fontManager.addfont`); one that cannot be added is named in
    a warning that says how to rebuild the cache.
    """
    name = _listed_cjk_font()
    if name is None and _add_system_cjk_fonts():
        name = _listed_cjk_font()
    return name


def _listed_cjk_font():
    """The name of a font of matplotlib's font list with CJK glyphs, or None."""
    from matplotlib import font_manager

    fonts = {
        entry.name: entry.fname
        for entry in font_manager.fontManager.ttflist
        if "Last Resort" not in entry.name  # draws a placeholder box for every character
    }
    candidates = [name for name in _CJK_FONTS if name in fonts]
    candidates += sorted(name for name in fonts if name not in candidates)
    for name in candidates:
        if _has_cjk_glyphs(fonts[name]):
            return name
    return None


def _has_cjk_glyphs(path):
    """Whether the font file at `path` draws "中" (False for a file FreeType cannot read)."""
    from matplotlib.ft2font import FT2Font

    try:
        return bool(FT2Font(path).get_char_index(ord("中")))
    except (OSError, RuntimeError, ValueError):
        return False


def _add_system_cjk_fonts():
    """Adds the system's CJK font files that matplotlib does not list; returns how many."""
    import matplotlib
    from matplotlib import font_manager

    known = {os.path.realpath(entry.fname) for entry in font_manager.fontManager.ttflist}
    added = 0
    for path in _system_cjk_font_files():
        if os.path.realpath(path) in known or not _has_cjk_glyphs(path):
            continue
        try:
            font_manager.fontManager.addfont(path)
        except (OSError, RuntimeError, ValueError) as error:
            warnings.warn(
                f"{path} has Chinese/Japanese/Korean characters but matplotlib cannot add it "
                f"({error}); delete matplotlib's font cache ({matplotlib.get_cachedir()}"
                "/fontlist-*.json) so that it is rebuilt, and run again.",
                stacklevel=3,
            )
            continue
        added += 1
    return added


def _system_cjk_font_files():
    """Paths of font files with Chinese on this system: `fc-list :lang=zh`, then usual places."""
    paths = []
    if shutil.which("fc-list"):
        try:
            listed = subprocess.run(
                ["fc-list", ":lang=zh", "file"], capture_output=True, text=True, timeout=30
            ).stdout
        except (OSError, subprocess.SubprocessError):
            listed = ""
        paths += [line.split(":")[0].strip() for line in listed.splitlines() if line.strip()]
    for pattern in _CJK_FONT_FILES:
        paths += sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
    return [path for path in dict.fromkeys(paths) if os.path.isfile(path)]


# Where CJK fonts are installed when `fc-list` is missing (macOS, Windows, minimal Linux).
_CJK_FONT_FILES = (
    "/usr/share/fonts/**/*CJK*",
    "/usr/share/fonts/**/wqy*",
    "~/.local/share/fonts/**/*CJK*",
    "~/.fonts/**/*CJK*",
    "/System/Library/Fonts/PingFang.ttc",
    "/System/Library/Fonts/STHeiti*.ttc",
    "/Library/Fonts/Arial Unicode.ttf",
    "C:/Windows/Fonts/msyh.ttc",
    "C:/Windows/Fonts/simhei.ttf",
)


# Tried first, in this order; any other installed font with the glyphs also serves.
_CJK_FONTS = (
    "Noto Sans CJK SC",
    "Noto Sans SC",
    "Source Han Sans SC",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "Microsoft YaHei",
    "PingFang SC",
    "SimHei",
    "Heiti SC",
    "Noto Sans CJK JP",
    "Arial Unicode MS",
    "Droid Sans Fallback",
)


def _save(figure, path):
    import matplotlib.pyplot as plt

    path = pathlib.Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp.png")
        figure.savefig(temporary, dpi=110, bbox_inches="tight")
        os.replace(temporary, path)  # an interrupted write never leaves half a PNG in place
    finally:
        plt.close(figure)
    return path


def plot_run(run_dir, out_dir=None, *, text=None, layer=0):
    """Writes `loss.png` and `attention_layer<N>.png` for a training run directory.

    The loss curves come from `metrics.jsonl`. The attention map is drawn for `text` through the
    run's `model.keras` (a `GPTModel`, tokenized with the run's tokenizer and labelled by
    character for the byte tokenizer, by piece for a learned one; or a
    `BERTPretrainer`, tokenized as `[CLS] text [SEP]` with the run's `tokenizer/` and labelled by
    wordpiece), truncated to the model's `max_length` and to 64 tokens so the picture stays
    readable. Chinese labels need a CJK font (see `plot_attention`).

    Args:
        run_dir: str or path-like. A directory written by `tf-bigmodels train` / `train`.
        out_dir: str or path-like or None. Where to write; None is `run_dir/plots`.
        text: str or None. Input of the attention map. Defaults to None (`DEFAULT_TEXT`).
        layer: int in `[0, num_layers - 1]`. Block whose attention is drawn. Defaults to 0.

    Returns:
        dict with "loss" and "attention" (paths of the PNGs) and "attention_maps" (the plotted
        `(heads, seq, seq)` array).

    Raises:
        ImportError: matplotlib is not installed.
        FileNotFoundError: `run_dir`, its `metrics.jsonl` or its `model.keras` is missing.
        ValueError: a file is not what a run writes, `text` is empty, or `layer` is out of range.

    Example:

    A run directory with its log and a (here untrained) model, as `tf-bigmodels train` leaves:

    >>> from tf_bigmodels.run_directory import RunDirectory
    >>> run = RunDirectory("runs/gpt")
    >>> run.path.mkdir(parents=True)
    >>> _ = run.metrics.write_text('{"step": 10, "loss": 2.5}\\n')
    >>> from tf_bigmodels.models import GPTModel
    >>> model = GPTModel(258, 16, 2, 32, 2, max_length=16)
    >>> _ = model(np.zeros((1, 1), "int32"))
    >>> model.save(run.model)
    >>> plot_run(run, layer=1)["attention"]
    PosixPath('runs/gpt/plots/attention_layer1.png')
    """
    import keras

    _pyplot()  # fail before any work when matplotlib is missing
    run_dir = pathlib.Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(2, "No such run directory", str(run_dir))
    text = DEFAULT_TEXT if text is None else text
    if not isinstance(text, str) or not text.strip():
        raise ValueError(
            f"`text` must be a string with some text to draw attention for, got {text!r}."
        )
    out_dir = run_dir / "plots" if out_dir is None else pathlib.Path(out_dir)
    series = read_metrics(run_dir)
    run = RunDirectory(run_dir)
    if not run.model.is_file():
        raise FileNotFoundError(
            2,
            "No model in the run directory (training writes model.keras when it finishes)",
            str(run.model),
        )
    model = keras.saving.load_model(run.model)
    task = task_class_for(model)
    tokenizer = tokenizer_for(run, task)
    inputs, ids = task.attention_inputs(model, tokenizer, text)
    maps = attention_maps(model, inputs, layer)
    tokens = _token_labels(tokenizer, ids)
    kind = task.attention_title
    name = run_dir.resolve().name
    return {
        "loss": plot_loss_curves(series, out_dir / "loss.png", title=f"{name}: loss"),
        "attention": plot_attention(
            maps,
            tokens,
            out_dir / f"attention_layer{layer}.png",
            title=f"{name}: {kind} attention, layer {layer}",
        ),
        "attention_maps": maps,
    }
