"""`tf_bigmodels.plot` and `tf-bigmodels plot`: the numbers drawn, and PNGs that are real images."""

import json
import os
import pathlib
import struct
import subprocess
import sys

import numpy as np
import pytest
from helpers import is_tensorflow_log_line, run_here

import tf_bigmodels
from tf_bigmodels import plot
from tf_bigmodels.models import BERTEncoder, BERTPretrainer, GPTModel
from tf_bigmodels.tokenizers import ByteTokenizer, WordPieceTokenizer

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BYTES = ByteTokenizer()


def png_size(path):
    """(width, height) of a PNG, after checking its signature and IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", f"{path} is not a PNG"
    assert len(data) > 5_000, f"{path} is only {len(data)} bytes"
    return struct.unpack(">II", data[16:24])


def above_diagonal(maps):
    """The entries of each head's map strictly above the diagonal (a query attending ahead)."""
    rows, columns = np.triu_indices(maps.shape[-1], k=1)
    return maps[:, rows, columns]


def write_metrics(run_dir):
    lines = [{"step": s, "loss": 5.0 - s / 10, "tokens/s": 1000.0} for s in (5, 10, 15, 20)]
    lines += [
        {"step": 10, "epoch": 1, "loss": 4.0, "val_loss": 4.2},
        {"step": 20, "epoch": 2, "loss": 3.0, "val_loss": 3.5},
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (run_dir / "config.json").write_text(json.dumps({"version": tf_bigmodels.__version__}))


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("gpt")
    model = GPTModel(258, 32, 2, 64, 2, rate=0.0, max_length=32)
    model(np.zeros((1, 32), "int32"))
    model.save(run_dir / "model.keras")
    write_metrics(run_dir)
    return run_dir


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("bert")
    tokenizer = WordPieceTokenizer.train(
        ["to be or not to be that is the question"] * 20, 60, verbose=False
    )
    tokenizer.save(run_dir / "tokenizer")
    pretrainer = BERTPretrainer(BERTEncoder(tokenizer.vocab_size, 32, 4, 64, 2, max_length=32))
    pretrainer(
        {"token_ids": np.zeros((1, 8), "int32"), "mask_positions": np.zeros((1, 1), "int32")}
    )
    pretrainer.save(run_dir / "model.keras")
    write_metrics(run_dir)
    return run_dir


def test_gpt_attention_is_a_causal_triangle():
    model = GPTModel(258, 32, 4, 64, 3, rate=0.0, max_length=16)
    for layer in range(3):
        maps = plot.attention_maps(model, np.arange(65, 77), layer=layer)
        assert maps.shape == (4, 12, 12)
        assert np.all(np.triu(maps, k=1) == 0.0)
        np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
        assert np.all(np.diagonal(maps, axis1=1, axis2=2) > 0)


def test_bert_attention_is_bidirectional_and_skips_padding():
    encoder = BERTEncoder(100, 32, 2, 64, 2, max_length=16)
    inputs = {
        "token_ids": np.array([[2, 10, 11, 12, 3, 0, 0]]),
        "padding_mask": np.array([[1, 1, 1, 1, 1, 0, 0]]),
    }
    maps = plot.attention_maps(BERTPretrainer(encoder), inputs, layer=1)
    assert maps.shape == (2, 7, 7)
    assert above_diagonal(maps[:, :5, :5]).min() > 0.0  # real tokens see later ones
    assert np.all(maps[:, :, 5:] == 0.0)  # nobody attends to padding


def test_attention_maps_name_bad_arguments():
    model = GPTModel(258, 32, 2, 64, 2, max_length=16)
    with pytest.raises(ValueError, match=r"^`layer` must be an integer in \[0, 1\], got 2.$"):
        plot.attention_maps(model, [1, 2, 3], layer=2)
    with pytest.raises(ValueError, match="one sequence"):
        plot.attention_maps(model, np.ones((2, 3), "int32"))
    with pytest.raises(TypeError, match="`model` must be"):
        plot.attention_maps("model", [1, 2])


@pytest.mark.slow
def test_plot_run_gpt_writes_pngs_of_the_causal_maps(gpt_run, tmp_path):
    written = plot.plot_run(gpt_run, tmp_path / "pictures", text="To be, or not", layer=1)
    assert written["loss"] == tmp_path / "pictures" / "loss.png"
    assert written["attention"] == tmp_path / "pictures" / "attention_layer1.png"
    for path in (written["loss"], written["attention"]):
        width, height = png_size(path)
        assert 300 < width < 4000 and 200 < height < 4000
    maps = written["attention_maps"]
    assert maps.shape == (2, 13, 13) and np.all(np.triu(maps, k=1) == 0.0)
    assert not list((tmp_path / "pictures").glob(".*"))  # no temporary file left behind


@pytest.mark.slow
def test_plot_run_bert(bert_run):
    written = plot.plot_run(bert_run, text="to be or not")
    assert written["attention"] == bert_run / "plots" / "attention_layer0.png"
    png_size(written["loss"])
    png_size(written["attention"])
    maps = written["attention_maps"]  # [CLS] to be or not [SEP]
    assert maps.shape == (4, 6, 6) and above_diagonal(maps).min() > 0.0


def test_read_metrics_series_and_bad_files(gpt_run, tmp_path):
    series = plot.read_metrics(gpt_run)
    assert series["train"] == [(5, 4.5), (10, 4.0), (15, 3.5), (20, 3.0)]
    assert series["val"] == [(10, 4.2), (20, 3.5)]
    (tmp_path / "metrics.jsonl").write_bytes(b"\x00\xff\xfe binary")
    with pytest.raises(ValueError, match="line 1 is not JSON"):
        plot.read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="no loss values"):
        plot.read_metrics(tmp_path)
    with pytest.raises(FileNotFoundError):
        plot.read_metrics(tmp_path / "missing")


def run_python(code, *args):
    """`python -c code ARGS` in a fresh process (quiet TensorFlow), its `CompletedProcess`."""
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
    )


def error_line(result):
    """The one line a user error prints to stderr (TensorFlow's start-up notices aside)."""
    lines = [
        line
        for line in result.stderr.splitlines()
        if line.strip() and not is_tensorflow_log_line(line)
    ]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.slow
def test_cli_plot(gpt_run, tmp_path):
    result = run_here("plot", gpt_run, "--out", tmp_path, "--layer", "1")
    assert result.returncode == 0, result.stderr
    assert "attention_layer1.png" in result.stdout
    png_size(tmp_path / "loss.png")
    png_size(tmp_path / "attention_layer1.png")
    before = (tmp_path / "loss.png").read_bytes()

    result = run_here("plot", gpt_run, "--out", tmp_path, "--layer", "7")
    assert result.returncode == 2
    assert "`--layer` must be an integer in [0, 1], got 7." in error_line(result)
    assert (tmp_path / "loss.png").read_bytes() == before


@pytest.mark.slow
def test_cli_plot_without_matplotlib_is_a_one_line_error(gpt_run):
    blocked = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from tf_bigmodels.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    result = run_python(blocked, "plot", str(gpt_run))
    assert result.returncode == 2
    assert "pip install" in error_line(result) and "matplotlib" in error_line(result)


POEM = "床前明月光，疑是地上霜。"  # 12 characters, 36 UTF-8 bytes


def test_byte_labels_group_each_characters_bytes():
    ids = BYTES.tokenize("a 你好").numpy().tolist() + [0xE4, 256]  # a cut character, end
    assert plot.byte_token_labels(ids) == ["a", "␣", "你", "", "", "好", "", "", "e4", "<end>"]
    assert plot.byte_token_labels([0xFF, 0x80, 10]) == ["ff", "80", "\\n"]  # invalid UTF-8


def _drawn(monkeypatch, maps, labels, cjk_font):
    """Calls plot_attention and returns its figure, drawn, instead of saving it."""
    import matplotlib

    monkeypatch.setattr(plot, "_cjk_font", lambda: cjk_font)
    figures = []
    monkeypatch.setattr(plot, "_save", lambda figure, path: figures.append(figure) or path)
    plot.plot_attention(maps, labels, "unused.png", title="a title")
    figure = figures[0]
    figure.canvas.draw()
    matplotlib.pyplot.close(figure)  # closing frees it; the drawn figure stays inspectable
    return figure


@pytest.mark.filterwarnings("ignore:Glyph")  # the stand-in font has no Chinese glyphs
def test_attention_plot_labels_chinese_by_character_in_a_cjk_font(monkeypatch):
    ids = BYTES.tokenize(POEM).numpy()
    maps = plot.attention_maps(GPTModel(258, 32, 2, 64, 1, max_length=64), ids)
    # Any installed font stands in for a CJK one: what matters is that the labels use it.
    figure = _drawn(monkeypatch, maps, plot.byte_token_labels(ids), "DejaVu Sans")
    axis = figure.axes[0]
    labels = [label.get_text() for label in axis.get_xticklabels()]
    assert labels == list(POEM)  # one tick per character, not three hex bytes
    assert list(axis.get_xticks()) == [3 * i + 1 for i in range(12)]  # the middle byte
    assert all(label.get_fontfamily()[0] == "DejaVu Sans" for label in axis.get_xticklabels())
    assert min(label.get_fontsize() for label in axis.get_yticklabels()) >= 8


def test_attention_plot_without_a_cjk_font_says_so(monkeypatch):
    ids = BYTES.tokenize(POEM).numpy()
    maps = plot.attention_maps(GPTModel(258, 32, 2, 64, 1, max_length=64), ids)
    with pytest.warns(UserWarning, match="(?s)No font with Chinese.*fonts-noto-cjk"):
        figure = _drawn(monkeypatch, maps, plot.byte_token_labels(ids), None)
    labels = [label.get_text() for label in figure.axes[0].get_xticklabels()]
    assert labels[:2] == ["U+5E8A", "U+524D"]  # 床前: code points, not tofu boxes
    assert "fonts-noto-cjk" in figure.get_supxlabel()


def test_attention_plot_title_sits_just_above_the_panels(monkeypatch):
    maps = np.full((4, 5, 5), 0.2, "float32")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = _drawn(monkeypatch, maps, list("hello"), None)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    title_bottom = figure._suptitle.get_window_extent(renderer).y0
    panels_top = max(axis.get_tightbbox(renderer).y1 for axis in figure.axes[:4])
    assert 0 <= title_bottom - panels_top < 0.3 * figure.dpi  # under 0.3 inch of space


@pytest.fixture
def font_list(monkeypatch):
    """matplotlib's font list as a copy, and `_cjk_font` uncached, for this test only."""
    from matplotlib import font_manager

    monkeypatch.setattr(font_manager.fontManager, "ttflist", list(font_manager.fontManager.ttflist))
    plot._cjk_font.cache_clear()
    yield font_manager.fontManager
    plot._cjk_font.cache_clear()


def _stand_in_cjk_font(monkeypatch, tmp_path):
    """A font file matplotlib does not list, that the glyph check takes for a CJK font."""
    from matplotlib import font_manager

    listed = font_manager.findfont("DejaVu Sans")
    path = tmp_path / "NotoSansCJK-Regular.ttf"
    path.write_bytes(pathlib.Path(listed).read_bytes())
    monkeypatch.setattr(plot, "_has_cjk_glyphs", lambda font: font == str(path))
    return path


def test_a_cjk_font_installed_after_matplotlib_s_cache_is_added(monkeypatch, tmp_path, font_list):
    path = _stand_in_cjk_font(monkeypatch, tmp_path)
    monkeypatch.setattr(plot, "_system_cjk_font_files", lambda: [str(path)])
    assert plot._cjk_font() == "DejaVu Sans"  # the family named inside the stand-in file
    assert [e.fname for e in font_list.ttflist].count(str(path)) == 1
    plot._cjk_font.cache_clear()
    assert plot._cjk_font() == "DejaVu Sans"  # now listed: not added twice
    assert [e.fname for e in font_list.ttflist].count(str(path)) == 1


def test_a_cjk_font_matplotlib_cannot_add_names_the_cache(monkeypatch, tmp_path, font_list):
    path = _stand_in_cjk_font(monkeypatch, tmp_path)
    monkeypatch.setattr(plot, "_system_cjk_font_files", lambda: [str(path)])

    def refuse(font):
        raise RuntimeError("cannot load")

    monkeypatch.setattr(font_list, "addfont", refuse)
    with pytest.warns(UserWarning, match="(?s)NotoSansCJK-Regular.ttf.*font cache.*fontlist"):
        assert plot._cjk_font() is None


def test_system_cjk_fonts_come_from_fc_list_and_the_usual_places(monkeypatch, tmp_path):
    listed, usual = tmp_path / "a.ttc", tmp_path / "fonts" / "wqy-zenhei.ttc"
    usual.parent.mkdir()
    listed.write_bytes(b"")
    usual.write_bytes(b"")
    monkeypatch.setattr(plot.shutil, "which", lambda name: "/usr/bin/fc-list")
    output = f"{listed}: \n{tmp_path / 'gone.ttf'}: \n"
    monkeypatch.setattr(
        plot.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, output, "")
    )
    monkeypatch.setattr(plot, "_CJK_FONT_FILES", (str(tmp_path / "fonts" / "**" / "wqy*"),))
    assert plot._system_cjk_font_files() == [str(listed), str(usual)]  # existing files only
