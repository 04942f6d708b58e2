"""When a launch stops, evaluates, snapshots and logs.

- :class:`ChunkStopTrigger`: the end of the run or of this launch's chunk
  (``--stop-after-epochs/--stop-after-iters``), whichever comes first;
  :func:`chunk_iters` turns those flags into iterations.
- :func:`points` and :class:`PointsTrigger`: fixed iterations (evaluation and
  snapshot points) plus the end of the chunk; :class:`EveryOrAt`: the log's.
- :func:`at_end`: whether the current iteration ends the launch.

Every trigger here is stateless (nothing to resume) and gives the same answer
on every rank, so collective extensions fire together.
"""


class ChunkStopTrigger:
    """Stop trigger for a run done in wall-time-sized chunks.

    Stops at `total_iters`, or `chunk_iters` iterations after the iteration
    this launch started from (after any resume), whichever comes first. It
    keeps no serialized state, so a re-launch starts a fresh chunk.
    """

    def __init__(self, total_iters, chunk_iters=None):
        if chunk_iters is not None and chunk_iters < 1:
            raise ValueError('chunk_iters must be >= 1, got {}'.format(chunk_iters))
        self.total_iters = total_iters
        self.chunk_iters = chunk_iters
        self.end = None

    def __call__(self, trainer):
        iteration = trainer.updater.iteration
        if self.end is None:
            # First call: after extensions were initialised (and a snapshot
            # possibly autoloaded), before the first update of this launch.
            self.end = self.total_iters if self.chunk_iters is None else min(
                self.total_iters, iteration + self.chunk_iters)
        return iteration >= self.end

    def get_training_length(self):
        return self.total_iters, 'iteration'


def points(interval_iters, total_iters):
    """Iterations ``k * interval_iters`` (rounded) up to ``total_iters``, and ``total_iters``.

    ``interval_iters`` may be fractional (an epoch is 39.1 iterations in the
    paper) and is at least one iteration.
    """
    interval = max(interval_iters, 1.0)
    found = sorted({int(round(k * interval))
                    for k in range(1, int(total_iters // interval) + 1)}
                   | {total_iters})
    return [p for p in found if 0 < p <= total_iters]


class PointsTrigger:
    """Fires at the given iterations (and at the end of the current chunk).

    Stateless, unlike Chainer's interval and schedule triggers, so one
    instance can be shared by several extensions (the BN-statistics allreduce
    and the evaluator must fire together) and nothing needs resuming.
    """

    def __init__(self, points, chunk_stop=None):
        self.points = frozenset(points)
        self.chunk_stop = chunk_stop

    def __call__(self, trainer):
        iteration = trainer.updater.iteration
        return iteration in self.points or (
            self.chunk_stop is not None and self.chunk_stop.end is not None
            and iteration == self.chunk_stop.end)


class EveryOrAt:
    """Fires every ``interval`` iterations and whenever ``points`` fires.

    The log's trigger: with an interval alone, the evaluation at an
    iteration that is not a multiple of the interval (the last one of
    akiba2017's 3,519 iterations, logged every 10) would be reported only
    at the next log iteration, which never comes after the last. Stateless.
    """

    def __init__(self, interval, points):
        self.interval = int(interval)
        self.points = points

    def __call__(self, trainer):
        return trainer.updater.iteration % self.interval == 0 or self.points(trainer)


def chunk_iters(stop_after_iters, stop_after_epochs, iters_per_epoch):
    """Iterations of this launch's chunk from ``--stop-after-iters`` or
    ``--stop-after-epochs`` (at least one), or None for the whole run."""
    if stop_after_iters is not None:
        return stop_after_iters
    if stop_after_epochs is not None:
        return max(1, int(round(stop_after_epochs * iters_per_epoch)))
    return None


def at_end(trainer):
    """Whether this iteration is the last of the launch (without calling the stop trigger)."""
    stop = trainer.stop_trigger
    end = getattr(stop, 'end', None)
    if end is None:
        length, unit = stop.get_training_length()
        end = length if unit == 'iteration' else None
    return end is not None and trainer.updater.iteration >= end
