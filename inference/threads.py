"""How many torch threads the scheduler thread uses, chosen by the wall clock of its own steps.

On a small CPU, torch's default (one thread per core) is fastest only while
the cores are free: its OpenMP kernels wait at every barrier for all their
threads, so when the OS gives one core to another process (the web server's
event loop, a test run, a benchmark client) each of the ~300 small operations
of a decoding step can stall for a time slice. Measured on the shared 2-core
machine (docs/performance.md): one stream at 57 tokens/s with one thread
against 5 with two under load, while two threads are about 1.2x faster than
one on a quiet machine. Neither fixed choice is safe, so ``auto`` measures.

:class:`ThreadChooser` starts at one thread and, after its first ``TRIAL``
decoding steps and then every ``EVERY``, tries the other count for
``TRIAL`` steps of the same batch size, keeping whichever had the lower
median step time. A trial step that takes several times the usual one ends
the trial at once, so a collapse costs a step or two, not a whole trial; so
does such a step once more threads than one have won (back to one thread
until the next trial).

The scheduler thread must be the only one with an OpenMP team
(:func:`one_thread`): libgomp counts the threads of every team it has made,
and once they outnumber the cores its workers stop spinning between
parallel regions and sleep, so every small operation waits for a wake-up.
Measured, a lean step at two threads on a thread of its own: 7.7 ms (one
thread: 9.1) while the process's main thread had only ever used one
thread, 20-23 ms once the main thread had run a two-thread operation.
"""

from __future__ import annotations

import logging
import statistics
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

import torch

logger = logging.getLogger(__name__)

# Steps between two trials of the other thread count, and steps per trial.
EVERY = 200
TRIAL = 8
# A trial wins only if clearly faster (step times are noisy).
MARGIN = 0.9
# A trial step this many times the usual step ends the trial.
ABORT = 3.0


class ThreadChooser:
    """Picks between ``counts`` (e.g. (1, 2)) the torch thread count of the next decoding step."""

    def __init__(self, counts: tuple[int, ...]) -> None:
        self.counts = counts
        self.current = counts[0]
        self.trials = 0
        self.switches = 0
        self._recent: deque[float] = deque(maxlen=TRIAL)  # step seconds at the current count
        self._rows = 0
        # The first trial comes after TRIAL steps, so a fresh server finds its count within its first reply.
        self._since_trial = EVERY - TRIAL
        self._trial: list[float] | None = None  # step seconds of the count under trial
        self._applied = 0

    @property
    def trying(self) -> int | None:
        """The count under trial, if any."""
        return self._other() if self._trial is not None else None

    def apply(self) -> None:
        """Set torch's thread count (of the calling thread) for the next step."""
        wanted = self.trying or self.current
        if wanted != self._applied:
            torch.set_num_threads(wanted)
            self._applied = wanted

    def record(self, rows: int, seconds: float) -> None:
        """Record how long the step just run (on ``rows`` rows) took by the wall clock."""
        if rows != self._rows:
            # Step times are comparable only at one batch size: start over.
            self._rows, self._trial = rows, None
            self._recent.clear()
        if self._trial is None:
            if self.current != self.counts[0] and len(self._recent) == TRIAL:
                if seconds > ABORT * statistics.median(self._recent):
                    # More threads than one collapse when a core is taken away: back to one at once.
                    self.current, self._since_trial = self.counts[0], 0
                    self._recent.clear()
                    logger.info("decoding with %d torch thread(s): a step stalled", self.current)
                    return
            self._recent.append(seconds)
            self._since_trial += 1
            if self._since_trial >= EVERY and len(self._recent) == TRIAL and len(self.counts) > 1:
                self._trial, self._since_trial = [], 0
                self.trials += 1
            return
        usual = statistics.median(self._recent)
        self._trial.append(seconds)
        if seconds > ABORT * usual:
            self._trial = None
        elif len(self._trial) == TRIAL:
            if statistics.median(self._trial) < MARGIN * usual:
                self.current = self._other()
                self.switches += 1
                logger.info("decoding with %d torch thread(s): faster by the wall clock now", self.current)
                self._recent = deque(self._trial, maxlen=TRIAL)
            self._trial = None

    def _other(self) -> int:
        return next(count for count in self.counts if count != self.current)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with torch at one thread, the count restored afterwards.

    For work off the scheduler thread, such as loading the model: a second
    OpenMP team would stop the scheduler's from spinning (see above). torch's
    count is also what threads started meanwhile begin with, so start the
    scheduler after the block.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
