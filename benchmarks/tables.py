"""Copy measured tables from BENCHMARKS.md into the guides, so each figure is written once.

BENCHMARKS.md marks a table with `<!-- table: NAME -->` on the line before it. A guide asks for it
between `<!-- begin table: NAME -->` and `<!-- end table -->`; this script writes the table there,
with the columns the guide needs and, in a `*.zh-CN.md` page, the headers and row labels in
Chinese. Run it after changing a figure in BENCHMARKS.md:

    python benchmarks/tables.py           # rewrite every guide's generated tables
    python benchmarks/tables.py --check   # exit status 1 if a guide's table is out of date
"""

import argparse
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "BENCHMARKS.md"
PAGES = ("README.md", "README.zh-CN.md", "docs/*.md")

# name -> the columns taken from the BENCHMARKS.md table (by position) and, per language, the
# headers and row labels written in place of BENCHMARKS.md's (None: keep BENCHMARKS.md's).
SPECS = {
    "summary": {
        "columns": [0, 1, 2, 3],
        "en": None,
        "zh": {
            "headers": ["测的是什么", "本项目", "同一次运行里的对照", "比值"],
            "rows": [
                "生成，nanoGPT 形状，批大小 1 / 16（每秒新 token 数）",
                "生成，GPT-2 124M 形状，批大小 1 / 16",
                "GPT 训练，nanoGPT 的 CPU 配置（每秒 token 数）",
                "GPT-2 124M 形状训练，float32 / mixed_bfloat16",
                "BERT 预训练，2 层，宽度 128（每秒 token 数）",
                "主命令 2000 步后的验证损失",
                "达到 nanoGPT 2000 步验证损失所需的训练秒数（3 个种子的中位数）",
                "服务，GPT-2 124M 形状，16 个并发客户端（每秒新 token 数）",
                "服务，nanoGPT 形状，64 个并发客户端，批处理（每秒新 token 数）",
                "LiteRT int8 解码，GPT-2 124M 形状，批大小 1（每秒 token 数）",
            ],
            "cells": {
                "nanoGPT's published": "nanoGPT 公布的",
                "not reached": "未达到",
                "1 client": "1 个客户端",
                "one at a time": "逐个处理",
            },
        },
    },
    "poetry": {
        "columns": [0, 6, 7, 8],
        "en": None,
        "zh": {
            "headers": ["分词器", "每字符比特数（留出集）", "格式得分", "每首诗的正文行数"],
            "rows": [
                "字节",
                "SentencePiece",
                "SentencePiece，同样设置再跑一次",
                "留出的真实诗作（100 首作提示 / 全部 5,542 首）",
            ],
        },
    },
    "poet_seeds": {
        "columns": [0, 2, 3, 5],
        "en": None,
        "zh": {
            "headers": ["运行", "每字符比特数（留出集）", "格式得分", "每首诗的行数"],
            "rows": [
                "种子 0",
                "种子 1",
                "种子 2",
                "3 个种子的中位数（范围）",
                "目标",
                "留出的真实诗作（全部 5,542 首）",
            ],
            "cells": {"below bytes'": "低于字节级的", "median": "中位数", "worst": "最差"},
        },
    },
    "sentiment_seeds": {
        "columns": [0, 1, 2, 3, 4, 5],
        "en": None,
        "zh": {
            "headers": [
                "模型",
                "测试准确率，种子 0",
                "种子 1",
                "种子 2",
                "准确率中位数（范围）",
                "macro-F1 中位数（范围）",
            ],
            "rows": ["多数类基线", "字符 1–2 元语法逻辑回归", "BERT，全参数微调"],
        },
    },
    "finetune_gpt": {
        "columns": [0, 1, 2, 3, 4],
        "en": None,
        "zh": {
            "headers": ["方法", "留出集每字符比特数（微调前）", "微调后", "训练的参数量", "耗时"],
            "rows": [
                "全参数微调，学习率 3e-4",
                "LoRA，秩 8，加在注意力和前馈层上，学习率 2e-3",
            ],
        },
    },
    "walkthrough_causal": {
        "columns": [0, 1, 2, 3],
        "en": None,
        "zh": {
            "headers": [
                "",
                "教师强制损失（下一个 token 可见）",
                "只看前缀的损失（生成时的情形）",
                "贪心预测下一个 token 的正确率",
            ],
            "rows": ["本项目的 GPTModel 关掉因果掩码（文章缺的就是它）", "`GPTModel`（因果）"],
        },
    },
}


def _cells(line):
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def benchmark_tables(text):
    """Every marked table of BENCHMARKS.md as {name: (headers, rows)}, rows being lists of cells.

    Args:
        text: str. The text of BENCHMARKS.md.

    Example:
        >>> benchmark_tables("<!-- table: t -->\\n| a | b |\\n|---|---:|\\n| x | 1 |\\n")
        {'t': (['a', 'b'], [['x', '1']])}
    """
    tables = {}
    for match in re.finditer(r"^<!-- table: (\w+) -->\n((?:\|.*\n?)+)", text, flags=re.M):
        lines = match.group(2).strip().splitlines()
        tables[match.group(1)] = (_cells(lines[0]), [_cells(line) for line in lines[2:]])
    return tables


def render(name, tables, language):
    """The markdown table NAME as a guide in LANGUAGE ("en" or "zh") shows it.

    Args:
        name: str. A key of `SPECS`.
        tables: dict. `benchmark_tables(...)`'s result.
        language: str. "en" or "zh".

    Example:
        >>> t = {"finetune_gpt": (list("abcde"), [list("12345"), list("67890"), list("vwxyz")])}
        >>> print(render("finetune_gpt", t, "en").splitlines()[2])
        | 1 | 2 | 3 | 4 | 5 |
    """
    spec = SPECS[name]
    headers, rows = tables[name]
    columns = spec["columns"]
    translation = spec[language]
    headers = [headers[c] for c in columns]
    rows = [[row[c] for c in columns] for row in rows]
    if translation is not None:
        headers = translation["headers"]
        rows = [[label, *row[1:]] for label, row in zip(translation["rows"], rows, strict=True)]
        for english, chinese in translation.get("cells", {}).items():
            rows = [[cell.replace(english, chinese) for cell in row] for row in rows]
    align = ["---"] + ["---:"] * (len(headers) - 1)
    lines = [headers, align, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines) + "\n"


def regenerate(text, tables, language):
    """TEXT with every `<!-- begin table: NAME -->` ... `<!-- end table -->` block rewritten.

    Args:
        text: str. A guide's text.
        tables: dict. `benchmark_tables(...)`'s result.
        language: str. "en" or "zh".

    Example:
        >>> t = {"finetune_gpt": (list("abcde"), [list("12345")] * 3)}
        >>> guide = "<!-- begin table: finetune_gpt -->\\nold\\n<!-- end table -->\\n"
        >>> print(regenerate(guide, t, "en").splitlines()[1])
        | a | b | c | d | e |

        Two empty blocks with text between them: the text stays.

        >>> two = "<!-- begin table: finetune_gpt -->\\n<!-- end table -->\\n"
        >>> regenerate(two + "text\\n" + two, t, "en").count("text")
        1
    """

    def block(match):
        return match.group(1) + render(match.group(2), tables, language) + match.group(3)

    # The lines between the markers are replaced; none of them may be a marker itself.
    pattern = r"^(<!-- begin table: (\w+) -->\n)(?:(?!<!-- ).*\n)*?(<!-- end table -->)$"
    return re.sub(pattern, block, text, flags=re.M)


def pages():
    """The README and docs pages that may hold generated tables, each with its language.

    Example:
        >>> ("README.md", "en") in [(p.name, language) for p, language in pages()]
        True
    """
    found = []
    for pattern in PAGES:
        for path in sorted(ROOT.glob(pattern)):
            found.append((path, "zh" if path.name.endswith(".zh-CN.md") else "en"))
    return found


def out_of_date():
    """The pages whose generated tables differ from what BENCHMARKS.md gives, as paths.

    Example:
        >>> isinstance(out_of_date(), list)
        True
    """
    tables = benchmark_tables(BENCHMARKS.read_text(encoding="utf-8"))
    stale = []
    for path, language in pages():
        text = path.read_text(encoding="utf-8")
        if regenerate(text, tables, language) != text:
            stale.append(path)
    return stale


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report out-of-date pages")
    args = parser.parse_args(argv)
    stale = out_of_date()
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)}: generated table out of date", file=sys.stderr)
        return 1 if stale else 0
    tables = benchmark_tables(BENCHMARKS.read_text(encoding="utf-8"))
    for path, language in pages():
        text = path.read_text(encoding="utf-8")
        path.write_text(regenerate(text, tables, language), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
