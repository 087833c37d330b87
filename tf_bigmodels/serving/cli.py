"""`tf-bigmodels serve`: the command line of the HTTP server (also `python -m tf_bigmodels.serving`).

`add_parser(subparsers)` adds the `serve` subcommand to a parser; `run(args)` runs it. Paths are
checked before TensorFlow loads, so a wrong path answers at once. TensorFlow then loads before the
server starts, its start-up lines hidden unless `--verbose` is given, as for the other commands:
hiding them means pointing the process's stderr elsewhere for a moment, which must not happen
while the server runs and may report an error there (a port already in use).

Example:

    tf-bigmodels serve runs/gpt                       # http://127.0.0.1:8501/
    tf-bigmodels serve gpt=exports/gpt sentiment=runs/sentiment --port 8080 --api-key "$KEY"
"""

import argparse
import contextlib
import ipaddress
import os
import signal
import sys

from tf_bigmodels import _checks
from tf_bigmodels._startup import add_verbose_flag, load_tensorflow

API_KEY_ENV = "TF_BIGMODELS_API_KEY"


def add_parser(subparsers):
    """Adds the `serve` subcommand to `subparsers` (from `ArgumentParser.add_subparsers`).

    Args:
        subparsers: the object `add_subparsers()` returned.

    Returns:
        The `serve` parser (its handler default is `run`).

    Example:

    >>> parser = argparse.ArgumentParser(prog="tf-bigmodels")
    >>> _ = add_parser(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["serve", "gpt=exports/gpt"])
    >>> args.models, args.host, args.port
    (['gpt=exports/gpt'], '127.0.0.1', 8501)
    """
    parser = subparsers.add_parser(
        "serve",
        help="serve exported models over HTTP (TF Serving REST, OpenAI completions, a page)",
        description="Serve SavedModels over HTTP: TF Serving's REST API "
        "(/v1/models/NAME:predict), OpenAI's completions API (/v1/completions, streaming "
        "with server-sent events), a page at /, health (/healthz, /readyz) and Prometheus "
        "metrics (/monitoring/prometheus/metrics). Each PATH is an export directory (numbered "
        "versions; the newest is served, and a newer one that appears is loaded and served "
        "without a restart) or a run directory (its export/, else its litert/model.tflite), "
        "or a LiteRT .tflite file or its directory (run on CPU with ai-edge-litert). SIGTERM "
        "or Ctrl-C drains (running requests finish, new ones get 503) and stops it.",
    )
    parser.add_argument(
        "models",
        nargs="+",
        metavar="[NAME=]PATH",
        help="a model to serve; NAME defaults to the directory's name (runs/poet -> poet)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind; the default answers this machine only. Any other address "
        "without --api-key prints a warning (default: %(default)s)",
    )
    parser.add_argument("--port", type=int, default=8501, help="TCP port (default: %(default)s)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"require `Authorization: Bearer KEY` on every route but /healthz, /readyz and "
        f"the page (default: ${API_KEY_ENV}, else none)",
    )
    parser.add_argument(
        "--max-tokens-limit",
        type=int,
        default=1024,
        help="most tokens one completion may ask for; a model's own limit (its context "
        "length - 1) applies too (default: %(default)s)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=1 << 20,
        help="larger request bodies get 413 (default: %(default)s)",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=60.0,
        help="seconds a request may run before it gets 504 (default: %(default)s)",
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=2,
        help="model calls running at once: TF Serving routes, and completions of a GPT "
        "exported before batching (default: %(default)s)",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=16,
        help="requests waiting for a model call, and completion rows (one per prompt and "
        "choice) waiting beyond a GPT's full batch; one more gets 503 with Retry-After "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--poll-seconds",
        type=float,
        default=1.0,
        help="seconds between scans of each export directory for a new version, as TF "
        "Serving's --file_system_poll_wait_seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=25.0,
        help="on SIGTERM or Ctrl-C, seconds running requests get to finish before they are "
        "cut; below Kubernetes' 30 s grace period (default: %(default)s)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=16,
        help="completion rows one GPT decodes together; rows join and leave the batch at every "
        "decode chunk, so a short completion never waits for a long one (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=0.0,
        help="milliseconds an idle GPT waits for more requests before it starts a batch; a "
        "busy one takes newcomers at its next chunk without waiting, so the default starts "
        "at once (default: %(default)s)",
    )
    add_verbose_flag(parser)
    parser.set_defaults(handler=run)
    return parser


def is_loopback(host):
    """Whether binding `host` answers this machine only.

    Example:

    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
    (True, True, False)
    """
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run(args):
    """Runs the server until SIGINT or SIGTERM; returns the exit status (0, or 2 if a model
    fails to load).

    Args:
        args: the `argparse.Namespace` of the `serve` parser.

    Example:

    >>> run(parser.parse_args(["serve", "runs/gpt"]))  # doctest: +SKIP
    """
    from tf_bigmodels.serving.models import find_export

    sources = [find_export(spec) for spec in args.models]
    names = [name for name, _ in sources]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(
            f"`NAME` must differ between models, got {duplicates[0]!r} twice (write "
            "NAME=PATH to name them apart)."
        )
    import uvicorn

    from tf_bigmodels.serving.app import ServerSettings, create_app

    settings = ServerSettings(
        api_key=args.api_key or None,
        max_body_bytes=args.max_body_bytes,
        max_tokens_limit=args.max_tokens_limit,
        request_timeout=args.request_timeout,
        max_concurrency=args.max_concurrency,
        max_queue=args.max_queue,
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
    )
    if not is_loopback(args.host) and settings.api_key is None:
        print(
            f"WARNING: serving on {args.host}, reachable from other machines, without an API "
            f"key: anyone who can connect can use the models. Pass --api-key or set "
            f"{API_KEY_ENV}.",
            file=sys.stderr,
            flush=True,
        )
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{args.port}/"
    state = {"failed": False}

    loaded = []

    def ready(model):
        signatures = ", ".join(sorted(model.signatures))
        print(f"{model.name}: version {model.version} ({model.kind}), signatures {signatures}")
        loaded.append(model.name)
        if len(loaded) == len(sources):
            print(f"Ready: {url}", flush=True)

    def failed(error):
        print(f"tf-bigmodels serve: error: cannot load the models: {error}", file=sys.stderr)
        state["failed"] = True
        server.should_exit = True

    drain_seconds = _checks.number("--drain-seconds", args.drain_seconds, low=0)
    poll_seconds = _checks.number("--poll-seconds", args.poll_seconds, low=0, low_open=True)
    load_tensorflow(args.show_tf)  # SavedModels and LiteRT files alike are served with it
    app = create_app(sources, settings, on_ready=ready, on_error=failed, poll_seconds=poll_seconds)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        # The drain has given running requests their time; what is left is cut at once.
        timeout_graceful_shutdown=1,
        lifespan="on",
    )
    server = _draining(uvicorn.Server)(config, app.state.drain, drain_seconds)
    print(f"Loading {', '.join(names)}; serving at {url}", flush=True)
    server.run()
    return 2 if state["failed"] else 0


def _draining(server_class):
    """`server_class` (uvicorn's `Server`) that drains on SIGINT or SIGTERM, then ends `run`
    normally.

    The first signal starts the drain (`tf_bigmodels.serving.lifecycle.Drain`): the server
    keeps running, answering 503 to new requests, until no request runs or `drain_seconds`
    pass; then uvicorn's own shutdown cuts what is left. A second signal stops at once.
    uvicorn would raise the signal again once stopped, so that the default handler ends the
    process (status 130 or -15); a server stopped on purpose has done its job, so the command
    exits 0 instead.
    """

    class Server(server_class):
        def __init__(self, config, drain, drain_seconds):
            super().__init__(config)
            self.drain, self.drain_seconds = drain, drain_seconds

        def handle_exit(self, sig, frame):
            if self.drain.draining:
                self.should_exit = True
            else:
                self.drain.begin(self.drain_seconds)

        async def on_tick(self, counter):
            return self.drain.over() or await super().on_tick(counter)

        @contextlib.contextmanager
        def capture_signals(self):
            stops = (signal.SIGINT, signal.SIGTERM)
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in stops}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server


def main(argv=None):
    """`python -m tf_bigmodels.serving [NAME=]PATH ...`: `tf-bigmodels serve` on its own.

    Example:

    >>> main(["--help"])  # doctest: +SKIP
    """
    parser = argparse.ArgumentParser(prog="tf-bigmodels")  # help reads as the same command
    serve = add_parser(parser.add_subparsers(dest="command"))
    args = serve.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except (ValueError, OSError) as error:
        print(
            f"tf-bigmodels serve: error: {_checks.in_flag_words(str(error), serve)}",
            file=sys.stderr,
        )
        return 2
