"""An HTTP server for exported SavedModels: `tf-bigmodels serve [NAME=]PATH ...`.

- TF Serving's REST API, same paths and bodies: `GET /v1/models/{name}` (version status),
  `GET /v1/models/{name}/metadata` (signatures), `POST /v1/models/{name}[/versions/{v}]:predict`
  (`instances` or `inputs`, any `signature_name`).
- OpenAI's completions API for GPT exports: `GET /v1/models`, `POST /v1/completions` (streamed
  as server-sent events with `"stream": true`).
- `/` (a page to try the models), `/healthz`, `/readyz`, `/monitoring/prometheus/metrics`.

A newer version that appears in an export directory is loaded, warmed up (TF Serving's warm-up
file, then the decode shapes of common completions) and served without a restart
(`versions.py`); SIGTERM drains: new requests get 503, running ones finish (`lifecycle.py`).

The server loads exports only (`tf.saved_model.load` and `tensorflow_text`); it never imports
the training code, so it runs wherever an export was copied.

Example:

>>> from starlette.testclient import TestClient
>>> from tf_bigmodels.serving import create_app
>>> with TestClient(create_app([])) as client:
...     client.get("/v1/models").json()
{'object': 'list', 'data': []}
"""

from tf_bigmodels.serving.app import ServerSettings, create_app
from tf_bigmodels.serving.models import ServedModel, find_export, load_model

__all__ = ["ServedModel", "ServerSettings", "create_app", "find_export", "load_model"]
