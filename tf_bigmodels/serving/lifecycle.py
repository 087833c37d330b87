"""How a server stops: it drains, as an orchestrator expects of a replica being replaced.

On SIGTERM (or Ctrl-C) `/readyz` turns not-ready at once, so a load balancer stops sending
requests; a request that still arrives gets 503 with `Retry-After` (another replica will take
it); requests already running go on to their end. The server exits (status 0) as soon as none
is left, or when the drain time is over: whatever still runs then is cut. A second signal
stops at once.
"""

import threading
import time

# Routes that keep answering while the server drains: liveness and metrics (the process is
# alive and can be watched as it stops); `/readyz` answers too, with "stopping".
DRAIN_OPEN_PATHS = frozenset({"/healthz", "/readyz", "/monitoring/prometheus/metrics"})


class Drain:
    """The requests running, and whether (and until when) the server is draining.

    Args:
        clock: callable returning seconds (monotonic). Defaults to `time.monotonic`.

    Example:

    >>> now = [0.0]
    >>> drain = Drain(clock=lambda: now[0])
    >>> drain.enter(); drain.begin(10); drain.draining, drain.over()
    (True, False)
    >>> now[0] = 10.0; drain.over()  # the drain time is over, one request still running
    True
    >>> drain.exit(); Drain().over()  # not draining: never over
    False
    """

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self.running = 0
        self.draining = False
        self._deadline = None

    def enter(self):
        """Counts a request that starts."""
        with self._lock:
            self.running += 1

    def exit(self):
        """Counts a request that ended."""
        with self._lock:
            self.running -= 1

    def begin(self, seconds):
        """Starts draining (once): new requests get 503; running ones get `seconds` to end."""
        with self._lock:
            if not self.draining:
                self.draining, self._deadline = True, self._clock() + seconds

    def over(self):
        """Whether the server may stop: draining, and no request left or the time is up."""
        with self._lock:
            return self.draining and (self.running == 0 or self._clock() >= self._deadline)
