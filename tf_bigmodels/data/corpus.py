"""The bundled corpus and the user's text files, as lists of documents."""

import glob
import importlib.resources
import os

SHAKESPEARE = "shakespeare"
# Tiny Shakespeare has no document boundaries of its own; it is cut into this many documents.
SHAKESPEARE_DOCUMENTS = 100
_GLOB_CHARS = "*?["


def load_corpus(source, *, document_separator=None, errors="strict"):
    """Returns a corpus as a list of document strings.

    What a document is:
    - `"shakespeare"`, the bundled tiny Shakespeare (1.1 MB, public domain): the text has no
      document boundaries, so it is cut at blank lines (between speeches) into 100 documents of
      consecutive speeches, each about 1% of the text (about 11,000 characters, a scene's worth).
      Joining them with `"\\n\\n"` gives back the file exactly.
    - files: one document per file, in the order given (glob matches sorted by name), unless
      `document_separator` is set, which splits each file into several documents.

    BERT's next-sentence task takes its "not next" segments from another document, so it needs at
    least two documents; GPT's pipeline writes an end-of-text token after each document.

    Args:
        source: `"shakespeare"`, or a file path, a glob pattern (`"texts/*.txt"`), or a list of
            paths and patterns. Paths may be str or `os.PathLike`.
        document_separator: str. Splits each file into documents wherever it occurs (e.g.
            `"\\n\\n"` for one document per paragraph). Defaults to `None` (one per file).
        errors: `"strict"` or `"replace"`. How bytes that are not UTF-8 are treated: `"strict"`
            raises a `ValueError` naming the file and offset; `"replace"` puts U+FFFD in their
            place. Defaults to `"strict"`.

    Returns:
        list of str, the non-blank documents.

    Example:

    >>> docs = load_corpus("shakespeare")
    >>> len(docs), docs[0][:14]
    (100, 'First Citizen:')
    >>> my_docs = load_corpus("my_texts/*.txt")  # doctest: +SKIP
    """
    if errors not in ("strict", "replace"):
        raise ValueError(f"errors={errors!r} is not allowed; use 'strict' or 'replace'.")
    if document_separator is not None and (
        not isinstance(document_separator, str) or not document_separator
    ):
        raise ValueError(
            f"document_separator={document_separator!r} is not allowed; use a "
            f"non-empty str or None."
        )
    if isinstance(source, str) and source == SHAKESPEARE:
        return _shakespeare_documents()
    documents = []
    for path in corpus_files(source, "source"):
        text = _read_utf8(path, errors)
        documents.extend(text.split(document_separator) if document_separator else [text])
    documents = [d for d in documents if d.strip()]
    if not documents:
        raise ValueError(
            f"source={source!r} holds no text (every file is empty or blank); give "
            f"files with some UTF-8 text."
        )
    return documents


def corpus_files(source, argument):
    """Returns the files named by a path, a glob, or a list of them; errors name `argument`.

    Example:

    >>> corpus_files("texts/*.txt", "corpus")  # doctest: +SKIP
    ['texts/a.txt', 'texts/b.txt']
    """
    items = [source] if isinstance(source, (str, os.PathLike)) else source
    if (
        not isinstance(items, (list, tuple))
        or not items
        or not all(isinstance(item, (str, os.PathLike)) for item in items)
    ):
        raise TypeError(
            f"{argument}={source!r} is not allowed; give '{SHAKESPEARE}', a file path, "
            f"a glob pattern, or a non-empty list of paths."
        )
    files = []
    for item in items:
        item = os.fspath(item)
        if any(c in item for c in _GLOB_CHARS):
            matches = sorted(p for p in glob.glob(item) if os.path.isfile(p))
            if not matches:
                raise ValueError(f"{argument}: the glob {item!r} matches no file.")
            files.extend(matches)
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise ValueError(
                f"{argument}: {item!r} is not an existing file (nor "
                f"'{SHAKESPEARE}' or a glob pattern)."
            )
    return files


def _read_utf8(path, errors):
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise ValueError(
            f"source: file {path!r} is not valid UTF-8 (byte {data[e.start]:#04x} at offset "
            f"{e.start}); convert it (e.g. `iconv -f GBK -t UTF-8`) or pass errors='replace'."
        ) from None


def _shakespeare_documents():
    text = (
        importlib.resources.files(__package__)
        .joinpath("tinyshakespeare.txt")
        .read_text(encoding="utf-8")
    )
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
