"""TF Serving's warm-up file: the requests a server replays when it loads a version.

TF Serving reads `assets.extra/tf_serving_warmup_requests` in a SavedModel (a TFRecord file of
`tensorflow.serving.PredictionLog` protos, at most 1000) and runs each request before it marks
the version AVAILABLE, so that the first client does not pay for building and compiling the
graphs. Every export of this package writes one request per signature a client calls;
`tf-bigmodels serve` replays the same file (`read_warmup_requests`).

The protos come from the `tensorflow-serving-api` package (`tensorflow_serving.apis`).
"""

import os

import tensorflow as tf

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


def write_warmup_requests(saved_model_dir, requests):
    """Writes `requests` as TF Serving's warm-up file of `saved_model_dir`.

    Args:
        saved_model_dir: str or path-like. A SavedModel directory.
        requests: dict of signature name to a dict of input name to an array-like (what
            `tf.make_tensor_proto` takes: nested lists, NumPy arrays, bytes or str).

    Returns:
        The path of the file written (str).

    Example:

    >>> os.makedirs("model")
    >>> path = write_warmup_requests("model", {"serving_default": {"text": ["hello"]}})
    >>> path, [(name, inputs["text"].numpy()) for name, inputs in read_warmup_requests("model")]
    ('model/assets.extra/tf_serving_warmup_requests', [('serving_default', array([b'hello'], dtype=object))])
    """
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    path = os.path.join(os.fspath(saved_model_dir), WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature_name, inputs in requests.items():
            request = predict_pb2.PredictRequest()
            request.model_spec.signature_name = signature_name
            for name, value in inputs.items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(saved_model_dir):
    """The requests of the warm-up file of `saved_model_dir` (empty if it has none).

    Args:
        saved_model_dir: str or path-like. A SavedModel directory.

    Returns:
        list of `(signature_name, {input name: tf.Tensor})`, in the file's order.

    Example (`write_warmup_requests` writes one and reads it back):

    >>> read_warmup_requests("no-such-model")
    []
    """
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(os.fspath(saved_model_dir), WARMUP_FILE)
    if not os.path.exists(path):
        return []
    requests = []
    for record in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        inputs = {
            name: tf.constant(tf.make_ndarray(proto)) for name, proto in request.inputs.items()
        }
        requests.append((request.model_spec.signature_name, inputs))
    return requests


def save(module, path, signatures):
    """`tf.saved_model.save(module, path, signatures=signatures)`, then the warm-up file with
    `module.warmup_requests()` (one request for each signature).

    Args:
        module: a `tf.Module` with a `warmup_requests()` method returning what
            `write_warmup_requests` takes.
        path: str. The SavedModel directory to write.
        signatures: dict of signature name to function.

    Example:

    >>> class Double(tf.Module):
    ...     @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    ...     def serving_default(self, x):
    ...         return {"y": 2 * x}
    ...     def warmup_requests(self):
    ...         return {"serving_default": {"x": [1.0, 2.0]}}
    >>> module = Double()
    >>> save(module, "double", {"serving_default": module.serving_default})
    >>> [name for name, _ in read_warmup_requests("double")]
    ['serving_default']
    """
    requests = module.warmup_requests()
    if set(requests) != set(signatures):
        raise ValueError(
            f"`module.warmup_requests()` must hold one request for each signature of "
            f"{sorted(signatures)}, got {sorted(requests)}."
        )
    tf.saved_model.save(module, path, signatures=signatures)
    write_warmup_requests(path, requests)


def decode_shapes(max_length, *, min_bucket=16):
    """`(prompt_tokens, max_tokens)` pairs whose streams compile the decode shapes of common
    completions, for a GPT of context `max_length`.

    Generation compiles one program per shape: the prompt padded to a power of two >= 16
    tokens, and the new tokens likewise (`tf_bigmodels.models.generation`). Compiling every
    pair would take minutes for a long context, so warm-up covers a cross: a short prompt
    (<= 16 tokens) with every `max_tokens` bucket, and every prompt bucket with up to 16 new
    tokens (OpenAI's default `max_tokens`). Another pair compiles once, on first use.

    Args:
        max_length: int >= 2. The model's context.
        min_bucket: int. The smallest bucket. Defaults to 16, generation's.

    Returns:
        list of `(prompt_tokens, max_tokens)`.

    Example:

    >>> decode_shapes(64)
    [(1, 16), (1, 32), (1, 63), (32, 16), (48, 16)]
    >>> decode_shapes(32)
    [(1, 16), (1, 31), (24, 8)]
    """
    buckets = [min_bucket]
    while buckets[-1] < max_length - 1:
        buckets.append(2 * buckets[-1])
    shapes = [(1, min(b, max_length - 1)) for b in buckets]
    for bucket in buckets[1:]:
        # A prompt in this bucket has more than bucket // 2 tokens, and generation keeps at
        # most max_length - max_tokens of it: half the room left goes to new tokens, so the
        # prompt lies well inside the bucket.
        max_tokens = min(min_bucket, (max_length - bucket // 2) // 2)
        if max_tokens >= 1:
            shapes.append((min(bucket, max_length - max_tokens), max_tokens))
    return shapes
