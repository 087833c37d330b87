"""The READMEs' Python examples run as written, and the English and Chinese READMEs stay in step."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
READMES = {
    name: (ROOT / name).read_text(encoding="utf-8") for name in ("README.md", "README.zh-CN.md")
}
# Each distinct ```python block of either README, run once (the Chinese file repeats the code
# of the English one; only its comments may be translated).
BLOCKS = {}
for _name, _text in READMES.items():
    for _index, _block in enumerate(re.findall(r"```python\n(.*?)```", _text, flags=re.S)):
        BLOCKS.setdefault(_block, f"{_name}-{_index}")


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


def _shell_commands(text):
    """Every command line of every ```bash block."""
    return [line for block in _fenced(text, "bash") for line in _code_lines(block)]


@pytest.mark.parametrize("block", list(BLOCKS), ids=list(BLOCKS.values()))
def test_readme_example_runs(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(block.replace("/tmp/", f"{tmp_path}/"), BLOCKS[block], "exec"), namespace)
    assert namespace, "the example defined nothing"


def test_both_readmes_have_python_examples():
    counts = {name: len(_fenced(text, "python")) for name, text in READMES.items()}
    assert counts["README.md"] > 0 and counts["README.zh-CN.md"] == counts["README.md"], counts


def test_the_readmes_have_the_same_sections_commands_and_code():
    english, chinese = READMES["README.md"], READMES["README.zh-CN.md"]
    sections = {name: re.findall(r"^## ", text, flags=re.M) for name, text in READMES.items()}
    assert len(sections["README.md"]) == len(sections["README.zh-CN.md"])
    assert _shell_commands(english) == _shell_commands(chinese)
    for language in ("python", "py", "json"):
        code = {name: [_code_lines(b) for b in _fenced(t, language)] for name, t in READMES.items()}
        assert code["README.md"] == code["README.zh-CN.md"], language


def test_the_readmes_link_to_each_other_at_the_top():
    english_top = "\n".join(READMES["README.md"].splitlines()[:5])
    chinese_top = "\n".join(READMES["README.zh-CN.md"].splitlines()[:5])
    assert "(README.zh-CN.md)" in english_top and "(README.md)" in chinese_top


def test_the_article_is_named_in_both():
    for text in READMES.values():
        assert "《大模型的定义与代表性模型》" in text
