"""What the server's models share about requests: the model kinds, the error a client gets,
and JSON values checked leaf by leaf (TF Serving's forms: strings, `{"b64": ...}` bytes,
integers, numbers).

Both kinds of served model (a SavedModel's `ServedModel`, a `.tflite` file's
`LiteRTServedModel`) read requests with these, so neither imports the other's module.
"""

import base64
import json

GPT, BERT_PRETRAINER, BERT_CLASSIFIER = "gpt", "bert_pretrainer", "bert_classifier"
OTHER = "saved_model"  # any other SavedModel: its signatures over TF Serving's routes


class RequestError(ValueError):
    """A request the model cannot serve, with the HTTP status that says why.

    Args:
        message: str. What is wrong, for the client.
        status: int. 400 (bad input) or 404 (unknown signature or version). Defaults to 400.
        param: str or None. The request field at fault. Defaults to None.

    Example:

    >>> error = RequestError("`n` must be an integer >= 1, got 0.", param="n")
    >>> error.status, error.param
    (400, 'n')
    """

    def __init__(self, message, status=400, param=None):
        super().__init__(message)
        self.status = status
        self.param = param


class _Invalid(ValueError):
    """A JSON leaf of the wrong type."""


def _map_leaves(value, function):
    if isinstance(value, list):
        return [_map_leaves(item, function) for item in value]
    return function(value)


def _string_leaf(leaf):
    if isinstance(leaf, str):
        return leaf.encode("utf-8")
    if isinstance(leaf, dict) and set(leaf) == {"b64"} and isinstance(leaf["b64"], str):
        try:
            return base64.b64decode(leaf["b64"], validate=True)
        except ValueError:
            raise _Invalid("a b64 value is not base64") from None
    raise _Invalid(f"got {json.dumps(leaf)[:40]}")


def _integer_leaf(leaf):
    if isinstance(leaf, bool) or not isinstance(leaf, int):
        raise _Invalid(f"got {json.dumps(leaf)[:40]}")
    return leaf


def _number_leaf(leaf):
    if isinstance(leaf, bool) or not isinstance(leaf, (int, float)):
        raise _Invalid(f"got {json.dumps(leaf)[:40]}")
    return leaf


def _json_value(array):
    """A NumPy output as JSON values: bytes become text (invalid UTF-8 replaced)."""
    if array.dtype == object:
        return _map_leaves(
            array.tolist(), lambda b: b.decode("utf-8", "replace") if isinstance(b, bytes) else b
        )
    return array.tolist()
