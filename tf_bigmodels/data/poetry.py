"""Regulated verse: split a poem into title, author and lines, and score its format.

The format score (格式得分, `poem_format_score`) checks the shape of each line only: 5 + 5 or
7 + 7 Han characters with "，" and "。" in their places. It does not check the tonal pattern
(平仄), the rhyme (押韵), parallelism (对仗) or the number of lines, so it is not a score of
格律: a line of the right length and punctuation passes whatever its tones and rhymes.

Pure text functions (no TensorFlow), so they score real poems and generated ones alike.
"""

import dataclasses
import re

# Han characters: CJK Unified Ideographs and Extension A, the compatibility ideographs,
# Extensions B to H, and 〇 (U+3007, the Han numeral zero).
_HAN = "\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
# A regulated couplet: 5 + 5 or 7 + 7 Han characters, "，" after the first half, "。" after the
# second.
_COUPLET = re.compile(f"[{_HAN}]{{5}}，[{_HAN}]{{5}}。|[{_HAN}]{{7}}，[{_HAN}]{{7}}。")


@dataclasses.dataclass(frozen=True)
class Poem:
    """A poem as the bundled 全唐诗 writes it: a title line, an author line, then its lines.

    Args:
        title: str. The first line.
        author: str. The second line.
        lines: list of str. The body: the lines after the author, up to the first blank line.

    Example:

    >>> Poem("静夜思", "李白", ["床前明月光，疑是地上霜。"]).lines[0][:5]
    '床前明月光'
    """

    title: str
    author: str
    lines: list


def split_poem(text):
    """Returns the `Poem` in `text`: title, author and the body lines up to the first blank line.

    Only the first poem counts: whatever follows a blank line (a second poem a model went on to
    write) is not part of it. A text with fewer than two lines has an empty author or title.

    Args:
        text: str. `"title\\nauthor\\nline\\nline..."`, e.g. a document of
            `load_corpus("tangshi")`, or a prompt followed by a model's completion.

    Returns:
        A `Poem`.

    Example:

    >>> split_poem("静夜思\\n李白\\n床前明月光，疑是地上霜。\\n举头望明月，低头思故乡。\\n\\n春晓")
    Poem(title='静夜思', author='李白', lines=['床前明月光，疑是地上霜。', '举头望明月，低头思故乡。'])
    """
    lines = text.split("\n")
    body = lines[2:]
    if "" in body:
        body = body[: body.index("")]
    title = lines[0]
    author = lines[1] if len(lines) > 1 else ""
    return Poem(title, author, body)


def is_regulated_couplet(line):
    """Whether `line` has the format of a couplet of regulated verse.

    Exactly 5 + 5 or 7 + 7 Han characters, "，" after the first half and "。" after the second,
    nothing else (no spaces, no other punctuation). Tones and rhyme are not checked.

    Args:
        line: str. One body line.

    Returns:
        bool.

    Example:

    >>> is_regulated_couplet("床前明月光，疑是地上霜。"), is_regulated_couplet("床前明月光，疑是霜。")
    (True, False)
    """
    return _COUPLET.fullmatch(line) is not None


def poem_format_score(poems):
    """The format score (格式得分): the fraction of body lines that are well-formed couplets.

    Every poem is split with `split_poem` (title and author lines off, the body up to the first
    blank line), and the score is the number of body lines for which `is_regulated_couplet` holds
    divided by the number of body lines of all poems together. The bundled 全唐诗 scores 0.896 by
    this definition (all 56,053 poems); text that has not learned the form scores near 0. Only
    length and punctuation count: tones (平仄) and rhyme (押韵) are not checked.

    Args:
        poems: list of str, each `"title\\nauthor\\nbody..."` (for generated poems: the prompt
            followed by the completion).

    Returns:
        float in [0, 1]; 0.0 when the poems have no body lines at all.

    Example:

    >>> poem_format_score(["静夜思\\n李白\\n床前明月光，疑是地上霜。\\n举头望明月，低头思故乡"])
    0.5
    """
    if isinstance(poems, str):
        raise TypeError("`poems` must be a list of str, got one str; wrap it in a list.")
    lines = [line for poem in poems for line in split_poem(poem).lines]
    if not lines:
        return 0.0
    return sum(map(is_regulated_couplet, lines)) / len(lines)
