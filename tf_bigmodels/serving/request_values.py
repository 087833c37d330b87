"""What the server's models share about requests: the model kinds, the error a client gets,
and JSON values checked leaf by leaf (TF Serving's forms: strings, `{"b64": ...}` bytes,
integers, numbers).

Both kinds of served model (a SavedModel's `ServedModel`, a `.tflite` file's
`LiteRTServedModel`) read requests with these, so neither imports the other's module.
"""

import base64
import json
import os

GPT, BERT_PRETRAINER, BERT_CLASSIFIER = "gpt", "bert_pretrainer", "bert_classifier"
OTHER = "saved_model"  # any other SavedModel: its signatures over TF Serving's routes


def sampling_settings(temperature, top_p, top_k, seed):
    """A completion's sampling fields in the decoders' terms: OpenAI's `top_p` of 1 and our
    `top_k` of 0 mean "off", which the decoders write as None.

    Example:

    >>> sampling_settings(0.8, 1.0, 0, 7)
    {'temperature': 0.8, 'top_k': None, 'top_p': None, 'seed': 7}
    """
    return dict(
        temperature=temperature,
        top_k=top_k or None,
        top_p=None if top_p == 1 else top_p,
        seed=seed,
    )


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


def describe(model, **extra):
    """What the OpenAI model list and the page show about a served model (a JSON-ready dict).

    Args:
        model: a served model (`name`, `path`, `kind`, `version`, `signatures`, `max_tokens`).
        **extra: further fields (a `.tflite` model adds its format and weights).

    Example:

    >>> import types
    >>> model = types.SimpleNamespace(name="gpt", path=".", kind=GPT, version=2,
    ...                               signatures={"generate": None}, max_tokens=63)
    >>> described = describe(model, class_names=None)
    >>> described["id"], described["version"], described["signatures"]
    ('gpt', '2', ['generate'])
    """
    return {
        "id": model.name,
        "object": "model",
        "created": int(os.path.getmtime(model.path)),
        "owned_by": "tf-bigmodels",
        "kind": model.kind,
        "version": str(model.version),
        "signatures": sorted(model.signatures),
        "max_tokens": model.max_tokens,
        **extra,
    }


def signature_metadata(name, version, signatures):
    """TF Serving's `GET /v1/models/{name}/metadata` answer.

    Args:
        name: str. The model's name.
        version: int. The version served.
        signatures: dict of signature name to `(inputs, outputs)`, each a dict of tensor key
            to `(dtype name, dims)` or `(dtype name, dims, tensor name)`: dims a list of ints
            (-1 for any size) or None (any rank); the tensor name defaults to the key.

    Example:

    >>> answer = signature_metadata("gpt", 1, {"logits": ({"token_ids": ("DT_INT32", None)},
    ...                                                     {"logits": ("DT_FLOAT", [-1, 8])})})
    >>> answer["metadata"]["signature_def"]["signature_def"]["logits"]["outputs"]["logits"]
    {'dtype': 'DT_FLOAT', 'tensor_shape': {'dim': [{'size': '-1'}, {'size': '8'}]}, 'name': 'logits'}
    """

    def tensor_info(key, spec):
        dtype, dims, tensor = (*spec, key)[:3]
        if dims is None:
            shape = {"unknown_rank": True}
        else:
            shape = {"dim": [{"size": str(size)} for size in dims]}
        return {"dtype": dtype, "tensor_shape": shape, "name": tensor}

    definitions = {
        signature: {
            "inputs": {k: tensor_info(k, v) for k, v in sorted(inputs.items())},
            "outputs": {k: tensor_info(k, v) for k, v in sorted(outputs.items())},
            "method_name": "tensorflow/serving/predict",
        }
        for signature, (inputs, outputs) in sorted(signatures.items())
    }
    return {
        "model_spec": {"name": name, "signature_name": "", "version": str(version)},
        "metadata": {"signature_def": {"signature_def": definitions}},
    }
