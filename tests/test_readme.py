"""The READMEs' and guides' Python examples run as written, and each English page and its Chinese
translation stay in step: the same sections, code, commands, links and generated tables."""

import doctest
import importlib.util
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_tables_script():
    """benchmarks/tables.py as a module (benchmarks/ is a directory of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("benchmark_tables", ROOT / "benchmarks/tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tables = _load_tables_script()

# Pages written by other parts of the project; they are linked to from here and may be checked
# by their own tests.
NOT_HERE = set()


def _pairs():
    """(English page, Chinese page) for the READMEs and every guide in docs/."""
    pairs = [(ROOT / "README.md", ROOT / "README.zh-CN.md")]
    for english in sorted((ROOT / "docs").glob("*.md")):
        if english.name.endswith(".zh-CN.md") or english.stem in NOT_HERE:
            continue
        pairs.append((english, english.with_name(f"{english.stem}.zh-CN.md")))
    return pairs


PAIRS = _pairs()
PAGES = {path: path.read_text(encoding="utf-8") for pair in PAIRS for path in pair if path.exists()}
PAIR_IDS = [english.relative_to(ROOT).as_posix() for english, _ in PAIRS]


def _fenced(text, language):
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def _code_lines(block):
    """The lines of a code block without comments and blank lines (comments may be translated)."""
    lines = []
    for line in block.splitlines():
        line = re.sub(r"\s+#.*$", "", line).rstrip()
        if line and not line.lstrip().startswith("#"):
            lines.append(line)
    return lines


# Each distinct ```python block of any page, run once: a Chinese page repeats the code of its
# English page with its comments translated, so blocks are told apart by their code alone.
BLOCKS = {}
for _path, _text in PAGES.items():
    for _index, _block in enumerate(_fenced(_text, "python")):
        _key = "\n".join(_code_lines(_block))
        if _key not in {"\n".join(_code_lines(b)) for b in BLOCKS}:
            BLOCKS[_block] = f"{_path.relative_to(ROOT).as_posix()}-{_index}"


def _shell_commands(text):
    """Every command line of every ```bash block."""
    return [line for block in _fenced(text, "bash") for line in _code_lines(block)]


def _links(text):
    """Every link target, with a Chinese page's `.zh-CN.md` read as its English page's `.md`."""
    outside_code = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    targets = re.findall(r"\]\(([^)\s]+)\)", outside_code)
    return sorted(re.sub(r"\.zh-CN\.md", ".md", target) for target in targets)


def _headings(text):
    outside_code = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return [len(hashes) for hashes in re.findall(r"^(#+) ", outside_code, flags=re.M)]


def test_every_page_has_its_translation():
    missing = [chinese.name for _, chinese in PAIRS if not chinese.exists()]
    assert not missing
    orphans = {path.name.replace(".zh-CN", "") for path in (ROOT / "docs").glob("*.zh-CN.md")}
    assert orphans - {english.name for english, _ in PAIRS} - {f"{p}.md" for p in NOT_HERE} == set()


@pytest.mark.parametrize("block", list(BLOCKS), ids=list(BLOCKS.values()))
@pytest.mark.slow
def test_python_example_runs(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(block.replace("/tmp/", f"{tmp_path}/"), BLOCKS[block], "exec"), namespace)
    defined = set(namespace) - {"__builtins__"}
    assert defined, "the example defined nothing"


@pytest.mark.parametrize(("english", "chinese"), PAIRS, ids=PAIR_IDS)
def test_a_page_and_its_translation_have_the_same_structure_code_and_links(english, chinese):
    en, zh = PAGES[english], PAGES[chinese]
    assert _headings(en) == _headings(zh), "sections differ"
    assert _shell_commands(en) == _shell_commands(zh), "commands differ"
    for language in ("python", "py", "json"):
        assert [_code_lines(b) for b in _fenced(en, language)] == [
            _code_lines(b) for b in _fenced(zh, language)
        ], language
    assert _links(en) == _links(zh), "links differ"
    assert re.findall(r"<!-- begin table: (\w+) -->", en) == re.findall(
        r"<!-- begin table: (\w+) -->", zh
    )


@pytest.mark.parametrize("page", list(PAGES), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_point_at_files_that_exist(page):
    outside_code = re.sub(r"^```.*?^```", "", PAGES[page], flags=re.S | re.M)
    for target in re.findall(r"\]\(([^)\s]+)\)", outside_code):
        if re.match(r"[a-z]+:", target):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        if path.stem.replace(".zh-CN", "") in NOT_HERE:
            continue
        assert path.exists(), f"{page.name} links to {target}, which does not exist"


def test_the_readmes_link_to_each_other_at_the_top():
    english_top = "\n".join(PAGES[ROOT / "README.md"].splitlines()[:5])
    chinese_top = "\n".join(PAGES[ROOT / "README.zh-CN.md"].splitlines()[:5])
    assert "(README.zh-CN.md)" in english_top and "(README.md)" in chinese_top


def test_the_set_up_commands_are_the_install_and_main_job_then_the_full_suite():
    expected = [
        'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]" && '
        "tf-bigmodels train gpt",
        ".venv/bin/python -m pytest -q -n 2 --dist loadfile",
    ]
    fast_lane = '`.venv/bin/python -m pytest -q -n 2 --dist loadfile -m "not slow"`'
    for name in ("README.md", "README.zh-CN.md"):
        text = PAGES[ROOT / name]
        assert _fenced(text, "bash")[0].splitlines() == expected, name
        assert fast_lane in text, name


def test_the_readmes_are_short():
    for name in ("README.md", "README.zh-CN.md"):
        assert len(PAGES[ROOT / name].splitlines()) < 300, name


def test_the_chinese_readme_lists_the_chinese_guide_first():
    text = PAGES[ROOT / "README.zh-CN.md"]
    documentation = text.split("\n## 文档\n")[1]
    first_link = re.search(r"\]\(([^)]+)\)", documentation).group(1)
    assert first_link == "docs/chinese.zh-CN.md"


def test_the_article_is_named_in_both_readmes():
    for name in ("README.md", "README.zh-CN.md"):
        assert "《大模型的定义与代表性模型》" in PAGES[ROOT / name]


def test_generated_tables_equal_what_benchmarks_md_gives():
    assert tables.out_of_date() == []


def test_the_table_generator_s_examples_run():
    results = doctest.testmod(tables)
    assert results.attempted > 0 and results.failed == 0


def test_generated_tables_notice_a_changed_figure():
    text = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    figures = tables.benchmark_tables(text)
    headers, rows = figures["summary"]
    changed = {**figures, "summary": (headers, [[*rows[0][:1], "0", *rows[0][2:]], *rows[1:]])}
    readme = PAGES[ROOT / "README.md"]
    assert tables.regenerate(readme, changed, "en") != readme
    assert tables.regenerate(readme, figures, "en") == readme


def _outside_generated_tables(text):
    return re.sub(r"<!-- begin table: \w+ -->.*?<!-- end table -->", "", text, flags=re.S)


# Settings and constants that also occur in BENCHMARKS.md but are not measured there.
NOT_MEASURED = {"0.95", "0.99", "0.999", "0.02", "0.15", "2.21", "1.0", "0.0", "0.8", "3.10"}
NOT_MEASURED |= {"10%", "15%", "50%", "80%", "90%", "15 minutes"}
NOT_MEASURED |= {"30 s"}  # Kubernetes' grace period, which the serving guide names
# A measured figure: a number with two or more decimals, a ratio (1.5x), a time, a size, a share.
FIGURE = (
    r"(?<![\w.])\d+\.\d{2,}(?![\w.])|(?<![\w.])\d+(?:\.\d+)?x(?!\w)"
    r"|(?<![\w.])\d[\d,]*(?:\.\d+)? (?:s|minutes|min|MB|GB)\b|(?<![\w.])\d+(?:\.\d+)?%"
)


def test_measured_figures_appear_only_in_benchmarks_md_or_generated_tables():
    benchmarks = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    figures = set(re.findall(FIGURE, benchmarks)) - NOT_MEASURED
    assert {"1.886", "18.8x", "72 s", "6.6 MB", "19%"} <= figures
    for path, text in PAGES.items():
        found = set(re.findall(FIGURE, _outside_generated_tables(text))) & figures
        assert not found, f"{path.relative_to(ROOT)} repeats measured figures {sorted(found)}"


# One word for each idea in the Chinese pages; the variants that drifted in are gone.
BANNED_CHINESE_VARIANTS = ["每字比特数", "格律得分", "格式分", "合格律句", "合格对句", "运行导览"]


@pytest.mark.parametrize(("english", "chinese"), PAIRS, ids=PAIR_IDS)
def test_chinese_pages_use_one_term_each_and_translate_code_comments(english, chinese):
    text = PAGES[chinese]
    for variant in BANNED_CHINESE_VARIANTS:
        assert variant not in text, variant
    english_comments = []
    for language in ("python", "py", "bash"):
        for block in _fenced(text, language):
            for comment in re.findall(r"(?:^|\s)#\s?(.*)$", block, flags=re.M):
                comment = re.sub(r"noqa: \w+", "", comment)
                if re.search(r"[A-Za-z]{3,} [A-Za-z]{3,}", comment) and not re.search(
                    r"[\u4e00-\u9fff]", comment
                ):
                    english_comments.append(comment)
    assert not english_comments, english_comments


@pytest.mark.parametrize("page", list(PAGES), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_the_tests_a_page_names_exist(page):
    # "`test_gpt.py::test_a`, `::test_b`": a bare `::name` belongs to the file named before it.
    missing, current = [], None
    for file, name in re.findall(r"(?:(?:tests/)?(test_\w+\.py|helpers\.py))?::(\w+)", PAGES[page]):
        current = file or current
        source = (ROOT / "tests" / current).read_text(encoding="utf-8")
        if not re.search(rf"^def {name}\(", source, flags=re.M):
            missing.append(f"{current}::{name}")
    assert not missing
