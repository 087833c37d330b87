"""Poem-format score, bits per character and the poetry benchmark's smoke run."""

import json
import math
import pathlib

import pytest
from helpers import run_here, run_script_here

from tf_bigmodels.data import (
    bits_per_character,
    is_regulated_couplet,
    lm_dataset,
    lm_split_counts,
    load_corpus,
    poem_format_score,
    split_poem,
)
from tf_bigmodels.tokenizers import ByteTokenizer

ROOT = pathlib.Path(__file__).resolve().parents[1]

JINGYESI = "静夜思\n李白\n床前明月光，疑是地上霜。\n举头望明月，低头思故乡。"
DENGGAO = (
    "登高\n杜甫\n风急天高猿啸哀，渚清沙白鸟飞回。\n无边落木萧萧下，不尽长江滚滚来。\n"
    "万里悲秋常作客，百年多病独登台。\n艰难苦恨繁霜鬓，潦倒新停浊酒杯。"
)


@pytest.mark.parametrize(
    "line, ok",
    [
        ("床前明月光，疑是地上霜。", True),  # 5 + 5
        ("风急天高猿啸哀，渚清沙白鸟飞回。", True),  # 7 + 7
        ("床前明月光，疑是地上霜", False),  # no "。"
        ("床前明月光。疑是地上霜，", False),  # marks swapped
        ("床前明月光,疑是地上霜.", False),  # half-width marks
        ("床前明月光，风急天高猿啸哀。", False),  # 5 + 7
        ("床前明月，疑是地上。", False),  # 4 + 4
        ("床前明月光，疑是地上霜。床前明月光，疑是地上霜。", False),  # two couplets
        ("床前明月光，疑是地上霜。 ", False),  # trailing space
        ("床前 月光，疑是地上霜。", False),  # a space for a character
        ("abcde，fghij。", False),  # not Han
        ("", False),
    ],
)
def test_is_regulated_couplet(line, ok):
    assert is_regulated_couplet(line) is ok


def test_split_poem_stops_at_the_first_blank_line():
    poem = split_poem(JINGYESI + "\n\n春晓\n孟浩然\n春眠不觉晓，处处闻啼鸟。")
    assert (poem.title, poem.author) == ("静夜思", "李白")
    assert poem.lines == ["床前明月光，疑是地上霜。", "举头望明月，低头思故乡。"]
    assert split_poem("无题").lines == [] and split_poem("无题").author == ""


def test_poem_format_score_on_hand_made_poems():
    assert poem_format_score([JINGYESI, DENGGAO]) == 1.0
    broken = "题\n作者\n床前明月光，疑是地上霜。\n举头望明月低头思故乡\n月，月。\n"
    assert poem_format_score([broken]) == pytest.approx(1 / 3)
    # Lines are pooled over poems: 6 good of 2 + 4 + 3 lines.
    assert poem_format_score([JINGYESI, DENGGAO, broken]) == pytest.approx(7 / 9)
    assert poem_format_score(["题\n作者\n"]) == 0.0  # no body lines at all
    assert poem_format_score([JINGYESI + "\n\n题\n作者\n乱写一行"]) == 1.0  # after a blank line
    with pytest.raises(TypeError, match="`poems` must be a list of str"):
        poem_format_score(JINGYESI)


def test_real_poems_score_about_0_9():
    poems = load_corpus("tangshi")
    score = poem_format_score(poems)
    assert 0.88 < score < 0.91, score  # 0.896 on all 56,053 poems


def test_bits_per_character():
    # One token per character: bits/char is the loss in bits.
    assert bits_per_character(math.log(2), 100, 100) == pytest.approx(1.0)
    # Three byte tokens per Chinese character: three times the bits per character.
    assert bits_per_character(1.0, 300, 100) == pytest.approx(3 / math.log(2))
    with pytest.raises(ValueError, match="`characters` must be an integer >= 1, got 0"):
        bits_per_character(1.0, 10, 0)
    with pytest.raises(ValueError, match="`mean_token_loss` must be a number >= 0"):
        bits_per_character(float("nan"), 10, 10)


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.slow
def test_lm_split_counts_match_the_lm_dataset_stream(split):
    docs = load_corpus("tangshi")[:40] + ["", "no newline at the end", "ends with one\n"]
    tokens, characters = lm_split_counts(docs, ByteTokenizer(), split)
    # With seq_len 1 and batch 1, a stream of n tokens gives n - 1 windows.
    assert sum(1 for _ in lm_dataset(docs, ByteTokenizer(), 1, 1, split=split)) == tokens - 1
    assert characters < tokens  # three bytes per Chinese character
    ascii_docs = ["First line\nsecond line", "", "third\n", "fourth and last"] * 5
    tokens, characters = lm_split_counts(ascii_docs, ByteTokenizer(), split)
    assert sum(1 for _ in lm_dataset(ascii_docs, ByteTokenizer(), 1, 1, split=split)) == tokens - 1
    assert characters == tokens  # one byte per character, and per end of document


def test_format_score_says_what_it_does_not_check():
    from tf_bigmodels.data import poetry

    for text in (poetry.__doc__, poem_format_score.__doc__):
        assert "格式得分" in text or "format" in text
        assert "平仄" in text and "押韵" in text
    # The right length and punctuation pass, whatever the tones and rhyme.
    assert is_regulated_couplet("一二三四五，六七八九十。")


def test_an_empty_sample_is_printed_with_a_note(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import poetry as benchmark

    assert benchmark.shown_sample(JINGYESI) == JINGYESI
    for empty in ("静夜思\n李白\n", "静夜思\n李白", "静夜思\n李白\n\n另一首"):
        shown = benchmark.shown_sample(empty)
        assert shown.startswith(empty) and "(no poem: the model wrote no complete line" in shown


@pytest.mark.slow
def test_poetry_benchmark_smoke_run(tmp_path):
    out = tmp_path / "poetry.json"
    result = run_script_here(
        ROOT / "benchmarks" / "poetry.py", "--smoke", "--out", out, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-4000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| tokenizer |") and [r.split(" | ")[0] for r in table[1:]] == [
        "| byte",
        "| sentencepiece",
    ]
    results = json.loads(out.read_text(encoding="utf-8"))
    byte, sentence_piece = results["rows"]
    for row in (byte, sentence_piece):
        assert row["steps"] > 0 and 0.0 <= row["poem_format_score"] <= 1.0
        assert row["bits_per_character"] == pytest.approx(
            row["val_loss_per_token"] * row["val_tokens_per_character"] / math.log(2)
        )
        assert all(sample.count("\n") >= 2 for sample in row["samples"])  # title, author
    # A Chinese character is three byte tokens, about one SentencePiece token.
    assert byte["val_tokens_per_character"] > 2 * sentence_piece["val_tokens_per_character"]
    assert 0.8 < results["held_out_real_poem_score"]["all_held_out"] <= 1.0


@pytest.mark.slow
def test_poet_score_scores_a_run_s_poems_and_reads_its_logged_bits_per_char(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train = ["train", "gpt", "--corpus", "tangshi", "--preset", "gpt-test", "--steps", "2"]
    train += ["--samples", "0", "--name", "poet"]
    train += ["--no-export"]  # the score reads the run's model and its log only
    trained = run_here(*train)
    assert trained.returncode == 0, trained.stderr[-4000:]
    out = tmp_path / "score.json"
    command = [ROOT / "benchmarks" / "poet_score.py", "runs/poet", "runs/poet"]
    command += ["--max-new-tokens", "16", "--max-poems", "3", "--out", str(out)]
    result = run_script_here(*command, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stderr.count("runs/poet: ") == 2 and "of 1,000 lines, 3 poems" in result.stderr
    results = json.loads(out.read_text(encoding="utf-8"))
    logged = [json.loads(line) for line in (tmp_path / "runs/poet/metrics.jsonl").open()]
    for row in results["rows"]:
        # A 2-step model writes few whole lines: every allowed prompt is used.
        assert row["poems_written"] == 3 and row["steps"] == 2
        assert row["poem_format_score"] == poem_format_score(row["poems"])
        assert row["lines_scored"] == sum(len(split_poem(p).lines) for p in row["poems"])
        assert (
            row["val_bits_per_char"]
            == [m for m in logged if "val_bits_per_char" in m][-1]["val_bits_per_char"]
        )
    # The same run scored twice with one seed: the same poems, so the range is one value.
    assert results["rows"][0]["poems"] == results["rows"][1]["poems"]
    assert results["summary"]["worst"] == results["summary"]["best"] == results["summary"]["median"]
    assert f"median {results['summary']['median']:.3f}" in result.stdout
