"""Continuous batching: the texts of many requests decoded together, joining and leaving freely.

`ContinuousBatcher` owns one GPT (an export from `export_gpt`, or a `GPTModel`) and one thread
that decodes every submitted text as a row of one batch, chunk by chunk (`chunk_tokens` steps
per call of the compiled loop, `tf_bigmodels.models.generation.batch_steps_function`):

- *Iteration-level scheduling* (the idea of Orca and vLLM): the batch is re-formed at every chunk
  boundary. A row whose text ended (end token, its own `max_new_tokens`, or its request
  cancelled) leaves; waiting rows join, up to `max_batch_size`. So a short request is done after
  its own chunks, never after the longest text it shared a batch with, and a new request waits
  for one chunk at most (plus its prompt pass) while the batch is not full.
- *Joining*: a new row runs its prompt alone through the export's `decode_start` (the same
  prompt pass, truncation and random key as `stream_text`), then `merge_batch_states` moves every
  row's cache so that they all end at one shared slot, the batch's clock. Rows keep their own
  positions, masks, step counters and settings (temperature, top-k, top-p, seed, max tokens), so
  the loop samples each row as it would sample it alone; randomness follows the row's own step.
  The batch and the cache take a few fixed sizes (powers of two), so XLA compiles a few times.
- *Waiting*: when the batcher is idle, the first request waits up to `batch_wait` seconds for
  others, so that a burst starts as one batch; once rows are decoding, newcomers join at the next
  boundary without any wait. Rows waiting or decoding are bounded by `max_batch_size +
  max_queue`; `submit` refuses beyond (`BatcherFull`), so overload is answered at once.

Exports written before the batched loop existed have no `decode_batch_steps`; they cannot be
batched (`ContinuousBatcher` raises a ValueError; the server then decodes their requests one at a
time with `stream_text`). Export the model again to batch it.
"""

import collections
import dataclasses
import logging
import threading
import time

import tensorflow as tf

from tf_bigmodels import _checks
from tf_bigmodels.export import streaming
from tf_bigmodels.models import generation

log = logging.getLogger("tf_bigmodels.export.batching")


class BatcherFull(Exception):
    """`ContinuousBatcher.submit` refused: the batch and the queue are full."""


@dataclasses.dataclass(eq=False)
class _Row:
    ticket: "Ticket"
    index: int
    prompt: str
    settings: generation.GenerationSettings
    texts: object = None
    new_tokens: int = 0


class Ticket:
    """The rows of one `ContinuousBatcher.submit` call; `cancel` makes them leave the batch.

    Args:
        on_update: the callable given to `submit`.

    Example:

    >>> ticket = Ticket(print)
    >>> ticket.cancel(); ticket.cancelled(0), ticket.end(0)
    (True, None)
    """

    def __init__(self, on_update):
        self._on_update = on_update
        self._cancelled = set()
        self._all = False
        self._ends = {}

    def end(self, index):
        """How row `index` ended, once its last update is sent: `(new_tokens, ended)`, the
        tokens generated (the end-of-text token not counted) and whether the end-of-text token
        ended it, as `stream_text` returns them; None before (or for a row that failed)."""
        return self._ends.get(index)

    def cancel(self, index=None):
        """Stops row `index` (None: every row) at the next chunk boundary; it gets no more updates."""
        if index is None:
            self._all = True
        else:
            self._cancelled.add(index)

    def cancelled(self, index):
        """Whether row `index` was cancelled."""
        return self._all or index in self._cancelled

    def _update(self, index, piece, finished, error=None):
        if not self.cancelled(index):
            self._on_update(index, piece, finished, error)


class ContinuousBatcher:
    """Decodes many texts of one GPT at once: rows join and leave the batch at chunk boundaries.

    See the module docstring for the design. A text decoded here is the text `stream_text` gives
    for the same prompt and settings alone: the same prompt pass and random key, and a loop that
    samples each row with its own settings and step.

    Args:
        source: as `stream_text`'s `source`: a `GPTModel`, an export directory, or the
            `(generator, tokenizer)` pair of `load_generator`.
        max_batch_size: int >= 1. Rows decoded together at most. Defaults to 16.
        max_queue: int >= 0. Rows that may wait beyond a full batch. Defaults to 16.
        batch_wait: float >= 0. Seconds an idle batcher waits for more requests before it starts.
            Defaults to 0 (start at once; newcomers join at the next chunk boundary).
        chunk_tokens: int >= 1. Decode steps between two boundaries. Defaults to 16.
        on_chunk: callable taking the number of rows of each decode chunk, or None. Defaults to
            None.

    Example:

    >>> from tf_bigmodels.models import GPTModel
    >>> batcher = ContinuousBatcher(GPTModel(258, 16, 2, 32, 1, max_length=32), chunk_tokens=4)
    >>> texts, done = {}, threading.Event()
    >>> def on_update(index, piece, finished, error):
    ...     texts[index] = texts.get(index, "") + piece
    ...     if finished and len(texts) == 2:
    ...         done.set()
    >>> settings = generation.GenerationSettings(6, temperature=0.0)
    >>> _ = batcher.submit([("To be", settings), ("你好", settings)], on_update)
    >>> done.wait(60), sorted(texts)
    (True, [0, 1])
    >>> batcher.close()
    """

    def __init__(
        self,
        source,
        *,
        max_batch_size=16,
        max_queue=16,
        batch_wait=0.0,
        chunk_tokens=16,
        on_chunk=None,
    ):
        self._max_batch = _checks.integer("max_batch_size", max_batch_size, low=1)
        self._max_queue = _checks.integer("max_queue", max_queue, low=0)
        self._batch_wait = _checks.number("batch_wait", batch_wait, low=0)
        self._chunk = _checks.integer("chunk_tokens", chunk_tokens, low=1)
        self._decoder = streaming._decoder(source, None)
        if self._decoder.batch_steps is None:
            raise ValueError(
                "`source` is an export without `decode_batch_steps` (written before batching "
                "existed); export the GPT again to batch its requests."
            )
        self._on_chunk = on_chunk
        self._changed = threading.Condition()
        self._queue = collections.deque()  # rows waiting to join
        self._decoding = 0  # rows in the batch (read by `submit` under the lock)
        self._closed = False
        self._rows, self._state = [], None  # the batch: only the decoding thread touches them
        self._thread = threading.Thread(target=self._run, daemon=True, name="batcher")
        self._thread.start()

    @property
    def batch_sizes(self):
        """Every batch size this batcher decodes at, smallest first: `rows` decoding rows take
        the next power of two, at most `max_batch_size`. XLA compiles the decode loop once per
        batch size (and cache length), so a warm-up runs each of these once.

        Example:

        >>> from tf_bigmodels.models import GPTModel
        >>> model = GPTModel(258, 16, 2, 32, 1, max_length=32)
        >>> batcher = ContinuousBatcher(model, max_batch_size=6)
        >>> batcher.batch_sizes
        [1, 2, 4, 6]
        >>> batcher.close()
        """
        return sorted({self._batch_size(rows) for rows in range(1, self._max_batch + 1)})

    def _batch_size(self, rows):
        return min(1 << (rows - 1).bit_length(), self._max_batch)

    def submit(self, requests, on_update):
        """Queues texts to decode; returns their `Ticket`.

        Args:
            requests: list of `(prompt, settings)`: str and `GenerationSettings` (its `end_id`
                and `pad_id` are the model's own, whatever is given).
            on_update: callable `(index, piece, finished, error)`, called from the batcher's
                thread after every chunk of row `index` (its position in `requests`): `piece`
                the new text (complete characters; may be empty), `finished` True on its last
                call (`Ticket.end` then says how the row ended); on a failure, `error` is the
                exception (and `finished` True).

        Raises:
            BatcherFull: the rows would exceed `max_batch_size + max_queue`.
            ValueError: a setting the model cannot decode (`max_new_tokens` too large).
        """
        ticket = Ticket(on_update)
        limit = self._decoder.max_length - 1
        rows = []
        for index, (prompt, settings) in enumerate(requests):
            _checks.integer("max_new_tokens", settings.max_new_tokens, low=0, high=limit)
            rows.append(_Row(ticket, index, prompt, settings))
        with self._changed:
            if self._closed:
                raise BatcherFull("the batcher is closed")
            queued = self._decoding + len(self._queue) + len(rows)
            if queued > self._max_batch + self._max_queue:
                raise BatcherFull(
                    f"{self._decoding} rows decoding and {len(self._queue)} waiting, the most "
                    f"are {self._max_batch} + {self._max_queue}"
                )
            for row in rows:
                if row.settings.max_new_tokens == 0:
                    ticket._ends[row.index] = (0, False)
                    ticket._update(row.index, "", True)
                else:
                    self._queue.append(row)
            self._changed.notify_all()
        return ticket

    def close(self):
        """Stops the thread after its chunk; rows still waiting or decoding get an error."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _run(self):
        while True:
            joiners = self._joiners()
            if joiners is None:
                break
            try:
                self._decode_chunk(joiners)
            except Exception as error:  # noqa: BLE001 (every row in flight is told)
                log.exception("batched decoding failed")
                for row in self._rows + [r for r in joiners if r not in self._rows]:
                    row.ticket._update(row.index, "", True, error)
                self._rows, self._state = [], None
                self._set_decoding(0)
        closed = RuntimeError("the batcher was closed")
        with self._changed:
            waiting, self._queue = list(self._queue), collections.deque()
        for row in self._rows + waiting:
            row.ticket._update(row.index, "", True, closed)

    def _joiners(self):
        """The rows that join at this boundary (waiting when idle); None once closed."""
        with self._changed:
            while not (self._closed or self._queue or self._rows):
                self._changed.wait()
            if self._closed:
                return None
            if not self._rows and self._batch_wait > 0:
                deadline = time.monotonic() + self._batch_wait
                while len(self._queue) < self._max_batch and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._changed.wait(remaining)
            staying = sum(not row.ticket.cancelled(row.index) for row in self._rows)
            joiners = []
            while self._queue and staying + len(joiners) < self._max_batch:
                row = self._queue.popleft()
                if not row.ticket.cancelled(row.index):
                    joiners.append(row)
            return joiners

    def _set_decoding(self, count):
        with self._changed:
            self._decoding = count

    def _decode_chunk(self, joiners):
        decoder = self._decoder
        keep = [b for b, row in enumerate(self._rows) if not row.ticket.cancelled(row.index)]
        if joiners or len(keep) < len(self._rows):
            parts = [(self._state, keep)] if keep else []
            rows = [self._rows[b] for b in keep]
            for row in joiners:
                settings = dataclasses.replace(
                    row.settings, end_id=decoder.end_id, pad_id=decoder.pad_id
                ).as_tensors()
                with streaming._in_graph_checks():
                    start = decoder.start([decoder.tokenize(row.prompt)], settings, 0)
                parts.append((generation.batch_state(start, settings), [0]))
                row.texts = streaming._Texts(decoder, 1, None)
                rows.append(row)
            self._rows = rows
            self._set_decoding(len(rows))
            if not rows:
                self._state = None
                return
            self._state = generation.merge_batch_states(parts, self._batch_size(len(rows)))
        buffer = tf.zeros([self._state["done"].shape[0], self._chunk], tf.int32)
        self._state, tokens, counts = decoder.batch_steps(self._state, buffer)
        if self._on_chunk is not None:
            self._on_chunk(len(self._rows))
        tokens, counts, done = tokens.numpy(), counts.numpy(), self._state["done"].numpy()
        finished = []
        for b, row in enumerate(self._rows):
            ids = tokens[b, : counts[b]].tolist()
            ended = bool(ids) and ids[-1] == decoder.end_id
            row.new_tokens += len(ids) - ended
            piece = row.texts.add([ids[:-1] if ended else ids], [ended])[0]
            if done[b]:
                piece += row.texts.finish()[0]
                finished.append(b)
                row.ticket._ends[row.index] = (row.new_tokens, ended)
            row.ticket._update(row.index, piece, bool(done[b]))
        if finished:  # they leave at the next boundary: a merge without them
            for b in finished:
                self._rows[b].ticket.cancel(self._rows[b].index)
