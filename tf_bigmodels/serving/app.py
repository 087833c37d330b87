"""The HTTP application: TF Serving's REST API, OpenAI's completions API, health, metrics, a page.

Built on Starlette (a small ASGI toolkit: routing, requests, `StreamingResponse` for server-sent
events) and run by uvicorn, so this module parses no HTTP itself. Model calls are blocking
TensorFlow calls: they run in worker threads, at most `max_concurrency` at once, with at most
`max_queue` requests waiting (beyond that, 503 with `Retry-After`). Completions of a GPT are
batched: every choice of every request is a row of the model's `ContinuousBatcher`
(`tf_bigmodels.export.batching`), which decodes up to `max_batch_size` rows together and lets
rows join and leave at each decode chunk, so a short completion never waits for a long one; at
most `max_queue` rows wait beyond a full batch (then 503). An export without batched decoding is
served one request at a time, one decode chunk per thread call. Either way, a request that times
out or whose client disconnects stops within one chunk.

Life cycle: the registry serves each model's newest version and picks up new ones
(`tf_bigmodels.serving.versions`); a request keeps the version it started with. Stopping drains
(`tf_bigmodels.serving.lifecycle`): the guard answers 503 to new requests while running ones end.

Safety: every error a client causes is a 4xx with one message (TF Serving's `{"error": ...}` on
its routes, OpenAI's error object on OpenAI's); an unexpected failure is a 500 that says only
"internal error" (the traceback goes to the server's log, never to the client), and the server
keeps serving.
"""

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import pathlib
import threading
import time
import uuid

import anyio
import prometheus_client
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tf_bigmodels import _checks
from tf_bigmodels.serving.lifecycle import DRAIN_OPEN_PATHS, Drain
from tf_bigmodels.serving.models import GPT, RequestError
from tf_bigmodels.serving.versions import ModelVersions

log = logging.getLogger("tf_bigmodels.serving")

# Routes a client may call without the API key: probes of an orchestrator, and the page (a
# static file holding no model output and no key; every request it makes carries the key typed
# into it).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/"})
# OpenAI's routes answer with OpenAI's error object; every other route with TF Serving's.
_OPENAI_PATHS = ("/v1/completions", "/v1/chat/completions")
_PAGE = pathlib.Path(__file__).with_name("page.html")
# Completion fields of OpenAI's API that this server implements.
_COMPLETION_FIELDS = {
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "n",
    "stop",
    "stream",
    "stream_options",
    "user",
}
# OpenAI's other completion fields, accepted at their neutral value only.
_NEUTRAL_FIELDS = {
    "echo": (False,),
    "logprobs": (None, 0),
    "best_of": (None, 1),
    "suffix": (None, ""),
    "frequency_penalty": (None, 0),
    "presence_penalty": (None, 0),
    "logit_bias": (None, {}),
}
_MAX_CHOICES = 16  # prompts x n in one request


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """The limits a server applies to every request.

    Args:
        api_key: str or None. When set, every route but the health probes and the page requires
            `Authorization: Bearer <api_key>`. Defaults to None.
        max_body_bytes: int >= 1. Larger request bodies get 413. Defaults to 1 MiB.
        max_tokens_limit: int >= 1. The most tokens one completion may ask for (a model's own
            limit, `max_length - 1`, applies too). Defaults to 1024.
        request_timeout: float > 0. Seconds a request may run; then 504 (a stream ends with an
            error event). Defaults to 60.
        max_concurrency: int >= 1. Model calls running at once. Defaults to 2.
        max_queue: int >= 0. Requests waiting for a model call; one more gets 503. Defaults
            to 16.
        chunk_tokens: int >= 1. Tokens per decode call when generating. Defaults to 16.
        max_batch_size: int >= 1. Completion rows (a prompt's choice each) one GPT decodes
            together. Defaults to 16.
        batch_wait_ms: float >= 0. Milliseconds an idle GPT waits for more requests before it
            starts a batch. Defaults to 0: rows join a running batch at its next chunk anyway,
            so waiting only delays a lone request.

    Example:

    >>> ServerSettings(api_key="secret", max_queue=0).max_queue
    0
    >>> ServerSettings(max_concurrency=0)
    Traceback (most recent call last):
    ...
    ValueError: `max_concurrency` must be an integer >= 1, got 0.
    """

    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    max_tokens_limit: int = 1024
    request_timeout: float = 60.0
    max_concurrency: int = 2
    max_queue: int = 16
    chunk_tokens: int = 16
    max_batch_size: int = 16
    batch_wait_ms: float = 0.0

    def __post_init__(self):
        _checks.non_empty_str("api_key", self.api_key, none_ok=True)
        _checks.integer("max_body_bytes", self.max_body_bytes, low=1)
        _checks.integer("max_tokens_limit", self.max_tokens_limit, low=1)
        _checks.positive_float("request_timeout", self.request_timeout)
        _checks.integer("max_concurrency", self.max_concurrency, low=1)
        _checks.integer("max_queue", self.max_queue, low=0)
        _checks.integer("chunk_tokens", self.chunk_tokens, low=1)
        _checks.integer("max_batch_size", self.max_batch_size, low=1)
        _checks.number("batch_wait_ms", self.batch_wait_ms, low=0)


class _Overloaded(Exception):
    """Every model call slot is busy and the queue is full."""


class _Limiter:
    """At most `running` model calls at once and `waiting` requests queued for one."""

    def __init__(self, running, waiting, gauge):
        self._free, self._max_waiting, self._waiting = running, waiting, 0
        self._gauge = gauge
        self._released = asyncio.Condition()

    async def acquire(self):
        async with self._released:
            if self._free == 0:
                if self._waiting >= self._max_waiting:
                    raise _Overloaded
                self._waiting += 1
                self._gauge.inc()
                try:
                    await self._released.wait_for(lambda: self._free > 0)
                finally:
                    self._waiting -= 1
                    self._gauge.dec()
            self._free -= 1

    async def release(self):
        async with self._released:
            self._free += 1
            self._released.notify()


class _Metrics:
    """The server's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self):
        self.registry = prometheus_client.CollectorRegistry()
        kwargs = {"registry": self.registry, "namespace": "tf_bigmodels"}
        self.requests = prometheus_client.Counter(
            "requests", "HTTP requests by route and status", ["route", "status"], **kwargs
        )
        self.latency = prometheus_client.Histogram(
            "request_seconds", "HTTP request latency (until the last byte)", ["route"], **kwargs
        )
        self.tokens = prometheus_client.Counter(
            "tokens_generated", "Completion tokens generated", ["model"], **kwargs
        )
        self.generations = prometheus_client.Counter(
            "generations",
            "Completions by how they ended: completed, disconnected (the client left), timeout",
            ["model", "outcome"],
            **kwargs,
        )
        self.waiting = prometheus_client.Gauge(
            "queue_waiting", "Requests waiting for a model call slot", **kwargs
        )
        self.batch_rows = prometheus_client.Histogram(
            "batch_rows",
            "Rows decoded together per decode chunk of a batched GPT",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64),
            **kwargs,
        )


class ModelRegistry:
    """The served models by name, loaded (and warmed up) in a background thread, then kept
    up to date: every `poll_seconds` a new version in a model's export directory is loaded,
    warmed up and served (see `tf_bigmodels.serving.versions`).

    Args:
        sources: list of `ServedModel` (already loaded) or `(name, export_dir)` pairs.
        load: callable `(name, export_dir, version) -> ServedModel` (version None: the
            newest). Defaults to None (`tf_bigmodels.serving.models.load_model`).
        on_ready: callable taking a `ServedModel`, called once it is loaded and warmed up
            (each new version too). Defaults to None.
        poll_seconds: float > 0 or None. Seconds between scans of the export directories;
            None scans never. Defaults to None.
        warm_up: callable taking a `ServedModel`, run before it is served. Defaults to None
            (its `warm_up()`).

    Example:

    >>> registry = ModelRegistry([])
    >>> registry.start(); registry.ready.wait(5), registry.models
    (True, {})
    """

    def __init__(self, sources, *, load=None, on_ready=None, poll_seconds=None, warm_up=None):
        self._sources = list(sources)
        self._load, self._on_ready = load, on_ready
        self._warm_up = warm_up or (lambda model: model.warm_up())
        self.poll_seconds = _checks.number(
            "poll_seconds", poll_seconds, low=0, low_open=True, none_ok=True
        )
        self.models = {}
        self.versions = {
            s[0]: ModelVersions(*s, self._load_version, warm_up=self._warm_up)
            for s in self._sources
            if isinstance(s, tuple)
        }
        self.pending = {s[0] if isinstance(s, tuple) else s.name for s in self._sources}
        self.ready = threading.Event()
        self.error = None
        self._thread = None
        self._stopped = threading.Event()

    def start(self):
        """Starts loading in a daemon thread (a stopping server never waits for a load)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="loader")
            self._thread.start()

    def stop(self):
        """Ends the scans for new versions."""
        self._stopped.set()

    def _load_version(self, name, export_dir, version):
        if self._load is None:
            from tf_bigmodels.serving.models import load_model

            self._load = load_model
        return self._load(name, export_dir, version)

    def _serve(self, model):
        self.models[model.name] = model
        self.pending.discard(model.name)
        if self._on_ready:
            self._on_ready(model)

    def _run(self):
        try:
            for source in self._sources:
                if isinstance(source, tuple):
                    model = self.versions[source[0]].load_newest()
                else:
                    model = source
                    self._warm_up(model)
                self._serve(model)
            self.ready.set()
        except Exception as error:  # noqa: BLE001 (any load failure ends the server)
            log.exception("loading the models failed")
            self.error = error
            return
        while self.poll_seconds is not None and not self._stopped.wait(self.poll_seconds):
            self.poll()

    def poll(self):
        """Scans every export directory once; serves each new version that loads."""
        for versions in self.versions.values():
            model = versions.poll()
            if model is not None:
                self._serve(model)


def create_app(
    sources, settings=None, *, load=None, on_ready=None, on_error=None, poll_seconds=None
):
    """The Starlette application serving `sources`.

    Models load in the background when the app starts (its lifespan): `/healthz` answers at
    once, `/readyz` says 200 once every model is loaded and warmed up, and 503 again once
    `app.state.drain` drains (the server is stopping; see `tf_bigmodels.serving.lifecycle`).

    Args:
        sources: list of `ServedModel` or `(name, export_dir)` pairs.
        settings: `ServerSettings` or None (the defaults).
        load, on_ready, poll_seconds: as in `ModelRegistry`.
        on_error: callable taking the exception when loading fails. Defaults to None.

    Returns:
        a `starlette.applications.Starlette` (an ASGI app; `app.state.registry` holds the
        models, `app.state.metrics` the metrics, `app.state.drain` the requests running).

    Example:

    >>> from starlette.testclient import TestClient
    >>> with TestClient(create_app([])) as client:
    ...     client.get("/healthz").json()
    {'status': 'ok'}
    """
    settings = settings or ServerSettings()
    metrics = _Metrics()
    # A GPT's warm-up compiles the batched loop at the batch sizes and chunk width it will run.
    batching = dict(max_batch_size=settings.max_batch_size, chunk_tokens=settings.chunk_tokens)
    registry = ModelRegistry(
        sources,
        load=load,
        on_ready=on_ready,
        poll_seconds=poll_seconds,
        warm_up=lambda model: model.warm_up(**batching),
    )
    limiter = _Limiter(settings.max_concurrency, settings.max_queue, metrics.waiting)
    drain = Drain()
    handlers = _Handlers(registry, settings, metrics, limiter, drain)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        registry.start()
        if on_error is not None:
            asyncio.get_running_loop().run_in_executor(None, _report_error, registry, on_error)
        try:
            yield
        finally:
            registry.stop()

    routes = [
        Route("/", handlers.page),
        Route("/healthz", handlers.healthz),
        Route("/readyz", handlers.readyz),
        Route("/monitoring/prometheus/metrics", handlers.prometheus),
        Route("/v1/models", handlers.list_models),
        Route("/v1/completions", handlers.completions, methods=["POST"]),
        Route("/v1/chat/completions", handlers.chat_completions, methods=["POST"]),
        Route("/v1/models/{name}:predict", handlers.predict, methods=["POST"]),
        Route("/v1/models/{name}/versions/{version}:predict", handlers.predict, methods=["POST"]),
        Route("/v1/models/{name}/metadata", handlers.metadata),
        Route("/v1/models/{name}/versions/{version}/metadata", handlers.metadata),
        Route("/v1/models/{name}", handlers.status),
        Route("/v1/models/{name}/versions/{version}", handlers.status),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
    app.state.registry, app.state.metrics, app.state.settings = registry, metrics, settings
    app.state.drain = drain
    app.add_middleware(_Guard, settings=settings, metrics=metrics, drain=drain)
    return app


def _report_error(registry, on_error):
    while not registry.ready.wait(0.2):
        if registry.error is not None:
            on_error(registry.error)
            return


def error_response(path, status, message, *, param=None, code=None, headers=None):
    """The error answer for `path`: OpenAI's error object on OpenAI's routes, TF Serving's
    `{"error": message}` elsewhere.

    Example:

    >>> error_response("/v1/models/gpt:predict", 400, "bad").body
    b'{"error":"bad"}'
    """
    if path in _OPENAI_PATHS or path == "/v1/models":
        kind = "invalid_request_error" if status < 500 else "server_error"
        body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    else:
        body = {"error": message}
    return JSONResponse(body, status_code=status, headers=headers)


async def _http_error(request, error):
    messages = {404: f"no route {request.url.path}", 405: f"method {request.method} not allowed"}
    message = messages.get(error.status_code, str(error.detail))
    return error_response(request.url.path, error.status_code, message)


async def _internal_error(request, error):
    log.error("internal error on %s", request.url.path, exc_info=error)
    return error_response(request.url.path, 500, "internal error (see the server's log)")


class _Guard:
    """ASGI middleware: the API key, the requests running (503 once draining), and request
    counts and latency by route and status."""

    def __init__(self, app, settings, metrics, drain):
        self.app, self.settings, self.metrics, self.drain = app, settings, metrics, drain
        key = settings.api_key
        self._expected = f"Bearer {key}".encode() if key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]
        counted = scope["path"] not in DRAIN_OPEN_PATHS

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        if counted:
            self.drain.enter()
        try:
            if counted and self.drain.draining:
                response = error_response(
                    scope["path"],
                    503,
                    "the server is stopping; send the request again (to another replica)",
                    headers={"Retry-After": "1", "Connection": "close"},
                )
                return await response(scope, receive, send_status)
            if self._expected and scope["path"] not in PUBLIC_PATHS:
                given = dict(scope["headers"]).get(b"authorization", b"")
                if not hmac.compare_digest(given, self._expected):
                    response = error_response(
                        scope["path"],
                        401,
                        "this server needs `Authorization: Bearer <api key>`; the key given is "
                        "missing or wrong",
                        code="invalid_api_key",
                        headers={"WWW-Authenticate": "Bearer"},
                    )
                    return await response(scope, receive, send_status)
            await self.app(scope, receive, send_status)
        finally:
            if counted:
                self.drain.exit()
            route = scope.get("route")
            label = route.path if route is not None else "unmatched"
            self.metrics.requests.labels(label, str(status[0])).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - start)


class _EventStream(StreamingResponse):
    """Server-sent events whose source is closed, and `on_close` called, however they end (the
    last event sent, or the client gone)."""

    def __init__(self, events, on_close):
        super().__init__(
            events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
        self._on_close = on_close

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
            await self._on_close()


@dataclasses.dataclass
class _Choice:
    """One generated text: what was produced, what is shown (cut at a stop string), how it ended."""

    index: int
    prompt: str
    seed: int | None
    raw: str = ""
    shown: str = ""
    pending: str = ""  # text held back: it may be the start of a stop string
    stopped: bool = False
    end: tuple | None = None  # (new_tokens, ended) once its generation ran to its end


class _Handlers:
    """The route handlers, sharing the registry, the settings, the metrics and the limiter."""

    def __init__(self, registry, settings, metrics, limiter, drain):
        self.registry, self.settings, self.metrics = registry, settings, metrics
        self.limiter, self.drain = limiter, drain

    # Health, metrics, page.

    async def page(self, request):
        return HTMLResponse(_PAGE.read_text(encoding="utf-8"))

    async def healthz(self, request):
        return JSONResponse({"status": "ok"})

    async def readyz(self, request):
        if self.drain.draining:
            return JSONResponse({"status": "stopping"}, status_code=503)
        if self.registry.ready.is_set():
            return JSONResponse({"status": "ready", "models": sorted(self.registry.models)})
        if self.registry.error is not None:
            return JSONResponse({"status": "failed", "error": "loading failed"}, status_code=503)
        return JSONResponse(
            {"status": "loading", "pending": sorted(self.registry.pending)}, status_code=503
        )

    async def prometheus(self, request):
        return Response(
            prometheus_client.generate_latest(self.metrics.registry),
            media_type=prometheus_client.CONTENT_TYPE_LATEST,
        )

    # TF Serving.

    def _model(self, request):
        """The model a TF Serving route names, checked against its version."""
        name = request.path_params["name"]
        model = self.registry.models.get(name)
        if model is None:
            if name in self.registry.pending:
                raise RequestError(f"model {name!r} is still loading", status=503)
            raise RequestError(
                f"no model {name!r}; this server has {sorted(self.registry.models)}", status=404
            )
        version = request.path_params.get("version")
        if version is not None and version != str(model.version):
            raise RequestError(
                f"model {name!r} has no version {version!r}; it serves version {model.version}",
                status=404,
            )
        return model

    async def status(self, request):
        """TF Serving's version status: every version seen (served, loading, replaced,
        refused with its error), newest first."""
        name, version = request.path_params["name"], request.path_params.get("version")
        versions = self.registry.versions.get(name)
        if versions is None:  # a model given loaded: its one version
            try:
                model = self._model(request)
            except RequestError as error:
                return error_response(request.url.path, error.status, str(error))
            ok = {"error_code": "OK", "error_message": ""}
            entries = [{"version": str(model.version), "state": "AVAILABLE", "status": ok}]
        else:
            entries = versions.status(version)
            if not entries:
                return error_response(
                    request.url.path,
                    404 if version is not None else 503,
                    f"model {name!r} has no version {version!r}"
                    if version is not None
                    else f"model {name!r} is still loading",
                )
        return JSONResponse({"model_version_status": entries})

    async def metadata(self, request):
        try:
            model = self._model(request)
        except RequestError as error:
            return error_response(request.url.path, error.status, str(error))
        return JSONResponse(model.metadata())

    async def predict(self, request):
        path = request.url.path
        try:
            model = self._model(request)
            body = await self._json(request)
            allowed = {"signature_name", "instances", "inputs"}
            _no_unknown_fields(body, allowed)
            signature = body.get("signature_name", "serving_default")
            if not isinstance(signature, str):
                raise RequestError(f"`signature_name` must be a string, got {signature!r}.")
            names = model.input_names(signature)
            if ("instances" in body) == ("inputs" in body):
                raise RequestError(
                    "the body must hold exactly one of `instances` (row format) and `inputs` "
                    "(columnar format)."
                )
            row_format = "instances" in body
            inputs = _rows_to_columns(body["instances"], names) if row_format else body["inputs"]
            named = isinstance(inputs, dict) and "b64" not in inputs
            if not named and len(names) == 1:  # a signature's only input may go unnamed
                inputs, named = {names[0]: inputs}, True
            if not named:
                raise RequestError(
                    f"`inputs` must be an object naming the inputs {names}, got {inputs!r}"[:200]
                )
            outputs = await self._call(model.predict, signature, inputs)
            return JSONResponse(
                _predictions(outputs) if row_format else _outputs(outputs),
                headers={"X-Model-Version": str(model.version)},
            )
        except RequestError as error:
            headers = {"Retry-After": "1"} if error.status == 503 else None
            return error_response(path, error.status, str(error), headers=headers)

    # OpenAI.

    async def list_models(self, request):
        models = [self.registry.models[name].describe() for name in sorted(self.registry.models)]
        return JSONResponse({"object": "list", "data": models})

    async def chat_completions(self, request):
        return error_response(
            request.url.path,
            400,
            "this server has no chat models: its GPTs continue text. Send the conversation as "
            "a `prompt` to POST /v1/completions.",
            code="unsupported_endpoint",
        )

    async def completions(self, request):
        path = request.url.path
        try:
            body = await self._json(request)
            model, prompts, params = self._completion_request(body)
            choices = [
                _Choice(p * params["n"] + i, prompt, _choice_seed(params["seed"], i))
                for p, prompt in enumerate(prompts)
                for i in range(params["n"])
            ]
            batched = self._submit(model, choices, params)
            if batched is None:
                await self._acquire()
        except RequestError as error:
            headers = {"Retry-After": "1"} if error.status == 503 else None
            code = "model_not_found" if error.param == "model" and error.status == 404 else None
            return error_response(
                path, error.status, str(error), param=error.param, code=code, headers=headers
            )
        request_id = f"cmpl-{uuid.uuid4().hex}"
        state = {"outcome": None}
        if batched is None:
            events = self._generate(request, model, choices, params, state)
        else:
            events = self._generate_batched(request, choices, params, state, *batched)

        async def finish():
            await events.aclose()
            if batched is None:
                release = lambda: asyncio.ensure_future(self.limiter.release())  # noqa: E731
                _after(state.get("running"), release)
            outcome = state["outcome"] or "disconnected"
            self.metrics.generations.labels(model.name, outcome).inc(len(choices))
            tokens = sum(_generated_tokens(model, c, params["max_tokens"]) for c in choices)
            self.metrics.tokens.labels(model.name).inc(tokens)

        # OpenAI's field for "the configuration the answer was made with": the version.
        head = {
            "id": request_id,
            "object": "text_completion",
            "model": model.name,
            "system_fingerprint": f"{model.name}/versions/{model.version}",
        }
        if params["stream"]:
            return _EventStream(
                self._sse(events, head, model, prompts, choices, params, state), finish
            )
        try:
            async for _ in events:
                pass
        finally:
            await finish()
        if state["outcome"] == "timeout":
            return error_response(path, 504, self._timeout_message(), code="timeout")
        if state["outcome"] == "disconnected":
            return Response(status_code=499)
        return JSONResponse(
            {
                **head,
                "created": int(time.time()),
                "choices": [_final_choice(c) for c in choices],
                "usage": _usage(model, prompts, choices, params["max_tokens"]),
            }
        )

    async def _sse(self, events, head, model, prompts, choices, params, state):
        def event(data):
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        created = int(time.time())
        async for choice, piece in events:
            text = {"text": piece, "index": choice.index, "logprobs": None, "finish_reason": None}
            yield event({**head, "created": created, "choices": [text]})
        if state["outcome"] == "timeout":
            error = {"message": self._timeout_message(), "type": "server_error", "code": "timeout"}
            yield event({"error": {**error, "param": None}})
        else:
            for choice in choices:
                final = {**_final_choice(choice), "text": ""}
                yield event({**head, "created": created, "choices": [final]})
            if (params["stream_options"] or {}).get("include_usage"):
                usage = _usage(model, prompts, choices, params["max_tokens"])
                yield event({**head, "created": created, "choices": [], "usage": usage})
        yield "data: [DONE]\n\n"

    async def _generate(self, request, model, choices, params, state):
        """Yields `(choice, new text)` as the choices are generated, one after the other.

        Sets `state["outcome"]`: completed, timeout or disconnected (the client left), and
        `state["running"]` to the decode chunk in flight. A chunk runs in a worker thread and
        cannot be interrupted; the request stops waiting for it at the deadline or when the
        client leaves, and the chunk's end closes the generator (`_after`).
        """
        deadline = time.monotonic() + self.settings.request_timeout
        for choice in choices:
            pieces = model.stream(
                choice.prompt,
                params["max_tokens"],
                temperature=params["temperature"],
                top_p=params["top_p"],
                top_k=params["top_k"],
                seed=choice.seed,
                chunk_tokens=self.settings.chunk_tokens,
            )
            try:
                while not choice.stopped:
                    if await request.is_disconnected():
                        state["outcome"] = "disconnected"
                        return
                    chunk = asyncio.ensure_future(anyio.to_thread.run_sync(_next_piece, pieces))
                    state["running"] = chunk
                    remaining = max(deadline - time.monotonic(), 0)
                    try:
                        piece = await asyncio.wait_for(asyncio.shield(chunk), remaining)
                    except asyncio.TimeoutError:
                        state["outcome"] = "timeout"
                        return
                    if not isinstance(piece, str):  # the stream's end: (new_tokens, ended)
                        choice.end = piece
                        break
                    choice.raw += piece
                    shown = _cut_at_stop(choice, piece, params["stop"])
                    if shown:
                        yield choice, shown
                if not choice.stopped and choice.pending:
                    choice.shown += choice.pending
                    yield choice, choice.pending
            finally:
                _after(state.get("running"), pieces.close)
        state["outcome"] = "completed"

    def _submit(self, model, choices, params):
        """Queues the choices as rows of the model's batcher: `(ticket, updates)`, or None when
        the model decodes one request at a time (an export without batched decoding).

        `updates` is an `asyncio.Queue` of the batcher's `(index, piece, finished, error)`.
        A full batcher answers 503 at once (`ServedModel.submit` raises it).
        """
        start = getattr(model, "start_batching", None)
        if start is None or not start(
            max_batch_size=self.settings.max_batch_size,
            max_queue=self.settings.max_queue,
            batch_wait=self.settings.batch_wait_ms / 1000,
            chunk_tokens=self.settings.chunk_tokens,
            on_chunk=self.metrics.batch_rows.labels(model.name).observe,
        ):
            return None
        loop, updates = asyncio.get_running_loop(), asyncio.Queue()
        settings = {name: params[name] for name in ("temperature", "top_p", "top_k")}
        ticket = model.submit(
            [(choice.prompt, choice.seed) for choice in choices],
            params["max_tokens"],
            on_update=lambda *update: loop.call_soon_threadsafe(updates.put_nowait, update),
            **settings,
        )
        return ticket, updates

    async def _generate_batched(self, request, choices, params, state, ticket, updates):
        """Yields `(choice, new text)` as the batcher decodes the choices, interleaved.

        Sets `state["outcome"]` as `_generate` does. The choices leave the batch (at its next
        chunk boundary) when they end, when a stop string ends them, and when the request ends
        for any reason (timeout, client gone).
        """
        deadline = time.monotonic() + self.settings.request_timeout
        running = set(range(len(choices)))
        try:
            while running:
                if await request.is_disconnected():
                    state["outcome"] = "disconnected"
                    return
                remaining = max(deadline - time.monotonic(), 0)
                try:
                    index, piece, finished, error = await asyncio.wait_for(updates.get(), remaining)
                except asyncio.TimeoutError:
                    state["outcome"] = "timeout"
                    return
                if error is not None:
                    raise error
                if index not in running:  # sent before a stop string ended it
                    continue
                choice = choices[index]
                choice.raw += piece
                shown = _cut_at_stop(choice, piece, params["stop"])
                if shown:
                    yield choice, shown
                if choice.stopped:
                    ticket.cancel(index)
                    running.discard(index)
                elif finished:
                    choice.end = ticket.end(index)
                    running.discard(index)
                    if choice.pending:
                        choice.shown += choice.pending
                        yield choice, choice.pending
            state["outcome"] = "completed"
        finally:
            ticket.cancel()

    def _timeout_message(self):
        return (
            f"the request ran longer than the server's timeout of {self.settings.request_timeout:g} "
            "s (ask for fewer tokens, or start the server with a larger --request-timeout)"
        )

    def _completion_request(self, body):
        """The model, the prompts and the checked settings of a completion request."""
        _no_unknown_fields(body, _COMPLETION_FIELDS | set(_NEUTRAL_FIELDS))
        for name, neutral in _NEUTRAL_FIELDS.items():
            value = body.get(name, neutral[0])
            if not any(type(value) is type(v) and value == v for v in neutral):
                raise RequestError(
                    f"`{name}` is not supported by this server (only {neutral[0]!r}), got "
                    f"{body[name]!r}.",
                    param=name,
                )
        name = body.get("model")
        if not isinstance(name, str):
            raise RequestError(
                f"`model` must be a model name (a string), got {name!r}.", param="model"
            )
        model = self.registry.models.get(name)
        if model is None:
            status = 503 if name in self.registry.pending else 404
            raise RequestError(
                f"the model {name!r} does not exist; this server has "
                f"{sorted(self.registry.models)}",
                status=status,
                param="model",
            )
        if model.kind != GPT:
            raise RequestError(
                f"the model {name!r} is a {model.kind}, which does not generate text; call it "
                f"with POST /v1/models/{name}:predict",
                param="model",
            )
        prompt = body.get("prompt", "")
        prompts = prompt if isinstance(prompt, list) else [prompt]
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise RequestError(
                f"`prompt` must be a string or a non-empty list of strings, got {prompt!r}"[:200]
                + ".",
                param="prompt",
            )
        limit = min(model.max_tokens, self.settings.max_tokens_limit)
        stop = body.get("stop")
        stop = [stop] if isinstance(stop, str) else stop
        if stop is not None and not (
            isinstance(stop, list)
            and len(stop) <= 4
            and all(isinstance(s, str) and s for s in stop)
        ):
            raise RequestError(
                f"`stop` must be a non-empty string or a list of at most 4 of them, got "
                f"{body.get('stop')!r}.",
                param="stop",
            )
        options = body.get("stream_options")
        if options is not None and not (
            isinstance(options, dict)
            and set(options) <= {"include_usage"}
            and isinstance(options.get("include_usage", False), bool)
        ):
            raise RequestError(
                f'`stream_options` must be null or {{"include_usage": true|false}}, got {options!r}.',
                param="stream_options",
            )
        user = body.get("user")
        if user is not None and not isinstance(user, str):
            raise RequestError(f"`user` must be a string, got {user!r}.", param="user")
        checks = {
            "max_tokens": lambda v: _checks.integer("max_tokens", v, low=0, high=limit),
            "temperature": lambda v: _checks.number("temperature", v, low=0, high=2),
            "top_p": lambda v: _checks.number("top_p", v, low=0, high=1, low_open=True),
            "top_k": lambda v: _checks.integer("top_k", v, low=0),
            "seed": lambda v: _checks.integer("seed", v, low=0, high=2**31 - 1, none_ok=True),
            "n": lambda v: _checks.integer("n", v, low=1, high=_MAX_CHOICES),
            "stream": lambda v: _checks.boolean("stream", v),
        }
        defaults = {"max_tokens": 16, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "seed": None}
        defaults.update(n=1, stream=False)
        params = {"stop": stop or [], "stream_options": options}
        for field, check in checks.items():
            value = body.get(field)
            try:
                params[field] = defaults[field] if value is None else check(value)
            except ValueError as error:
                message = str(error)
                if field == "max_tokens":
                    message += (
                        f" (the limit is the smaller of the model's {model.max_tokens} and the "
                        f"server's --max-tokens-limit {self.settings.max_tokens_limit})"
                    )
                raise RequestError(message, param=field) from None
        if len(prompts) * params["n"] > _MAX_CHOICES:
            raise RequestError(
                f"prompts x `n` must be at most {_MAX_CHOICES} completions per request, got "
                f"{len(prompts)} x {params['n']}.",
                param="n",
            )
        return model, prompts, params

    # Shared by the model routes.

    async def _json(self, request):
        """The request body as a JSON object; RequestError 413 past the size limit, 400 if it
        is not a JSON object."""
        limit = self.settings.max_body_bytes
        too_large = RequestError(
            f"the request body is larger than the server's limit of {limit} bytes", status=413
        )
        declared = request.headers.get("content-length", "")
        if declared.isascii() and declared.isdecimal() and int(declared) > limit:
            raise too_large
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
        try:
            value = json.loads(body)
        except (ValueError, RecursionError) as error:
            raise RequestError(f"the request body is not valid JSON: {error}") from None
        if not isinstance(value, dict):
            raise RequestError(
                f"the request body must be a JSON object, got {type(value).__name__}."
            )
        return value

    async def _acquire(self):
        try:
            await self.limiter.acquire()
        except _Overloaded:
            raise RequestError(
                "the server is busy (every model slot taken and the queue full); retry later",
                status=503,
            ) from None

    async def _call(self, function, *args):
        """`function(*args)` in a worker thread, within a model slot and the request timeout.

        On timeout the answer is 504 at once; the slot stays taken until the call returns (a
        TensorFlow call cannot be interrupted), so a flood of slow calls cannot pile up.
        """
        await self._acquire()
        task = asyncio.ensure_future(anyio.to_thread.run_sync(function, *args))
        _after(task, lambda: asyncio.ensure_future(self.limiter.release()))
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.settings.request_timeout)
        except asyncio.TimeoutError:
            task.add_done_callback(lambda t: t.exception())  # retrieved: not logged as lost
            raise RequestError(self._timeout_message(), status=504) from None


def _after(task, function):
    """Calls `function()` once `task` (None: nothing) is done: now, or when it ends."""
    if task is None or task.done():
        function()
    else:
        task.add_done_callback(lambda _: function())


def _no_unknown_fields(body, allowed):
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise RequestError(
            f"unknown field `{unknown[0]}` in the request body; allowed: {sorted(allowed)}.",
            param=unknown[0],
        )


def _rows_to_columns(instances, names):
    """TF Serving's row format (`instances`: one value or object per example) as columns."""
    if not isinstance(instances, list) or not instances:
        raise RequestError("`instances` must be a non-empty list (one entry per example).")
    if all(isinstance(row, dict) and "b64" not in row for row in instances):
        keys = set(instances[0])
        if any(set(row) != keys for row in instances):
            raise RequestError("every object in `instances` must name the same inputs.")
        return {name: [row[name] for row in instances] for name in keys}
    if len(names) != 1:
        raise RequestError(
            f"`instances` must be objects naming the inputs {names} (the signature has "
            f"{len(names)} inputs)."
        )
    return {names[0]: instances}


def _predictions(outputs):
    """Row format's answer: one value (one output) or one object (several) per example."""
    names = sorted(outputs)
    if len(names) == 1:
        return {"predictions": outputs[names[0]]}
    rows = {len(outputs[name]) for name in names if isinstance(outputs[name], list)}
    if len(rows) != 1:
        raise RequestError(
            "the outputs do not share a batch size, so they cannot be rows; send `inputs` "
            "(columnar format) instead of `instances`."
        )
    return {"predictions": [{n: outputs[n][i] for n in names} for i in range(rows.pop())]}


def _outputs(outputs):
    """Columnar format's answer: the output (one) or an object of outputs (several)."""
    return {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}


def _choice_seed(seed, index):
    """Choice `index`'s seed: the request's seed plus the index (wrapping), None for random."""
    return None if seed is None else (seed + index) % 2**31


def _cut_at_stop(choice, piece, stops):
    """Adds `piece` to `choice`; returns the text that may be shown now. Text that could begin
    a stop string waits in `choice.pending`; a stop string ends the choice (and is not shown)."""
    text = choice.pending + piece
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    if found:
        shown, choice.pending, choice.stopped = text[: min(found)], "", True
    else:
        hold = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        shown, choice.pending = text[: len(text) - hold], text[len(text) - hold :]
    choice.shown += shown
    return shown


def _final_choice(choice):
    """A choice as OpenAI's answer lists it: "stop" when a stop string or the end-of-text token
    ended it, "length" when `max_tokens` did."""
    ended = choice.stopped or (choice.end is not None and choice.end[1])
    return {
        "text": choice.shown,
        "index": choice.index,
        "logprobs": None,
        "finish_reason": "stop" if ended else "length",
    }


def _next_piece(pieces):
    """The next piece of a model's stream, or what the stream returned once it is exhausted
    (`(new_tokens, ended)`)."""
    try:
        return next(pieces)
    except StopIteration as end:
        return end.value


def _generated_tokens(model, choice, max_tokens):
    """The tokens generated for `choice`: as decoded when its generation ran to its end; for a
    choice cut short (a stop string, a timeout, a client gone), the tokens of the text it had
    received, tokenized again (a byte that is not valid UTF-8 reads back as U+FFFD, 3 bytes:
    at most `max_tokens`)."""
    if choice.end is not None:
        return choice.end[0]
    return min(model.count_tokens(choice.raw), max_tokens) if choice.raw else 0


def _usage(model, prompts, choices, max_tokens):
    """Token counts: the prompts' tokens and each choice's generated tokens."""
    prompt_tokens = sum(model.count_tokens(p) for p in prompts)
    completion_tokens = sum(_generated_tokens(model, c, max_tokens) for c in choices)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
