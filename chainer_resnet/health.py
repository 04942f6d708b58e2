"""What a run shows while it runs: the large-batch health signals.

What goes wrong in a large-batch run is invisible in the loss until the final
accuracy disappoints. Every ``interval`` iterations :class:`RunHealth` measures,
on the real arrays of the run and on the model's device (NumPy or CuPy):

fp16 allreduce (on every rank, before the allreduce)
    ChainerMN's ``pure_nccl`` with ``allreduce_grad_dtype=float16`` casts each
    rank's gradient ``g`` to fp16, sums the W ranks' values in fp16 and scales
    the sum by 1/W (docs/method.md §5; benchmarks/README.md measures both
    failure modes offline). With ``W`` the ranks of the allreduce (its
    summands; with k virtual workers a rank sends the mean of its k):

    - ``fp16/overflow``: the fraction of elements with ``W |g| > 65,504``,
      whose sum overflows when the workers' values agree (they do, for the
      large ones): infinities, then a diverged run;
    - ``fp16/range``: ``W max|g| / 65,504`` over all ranks: 1 is overflow;
    - ``fp16/underflow``: the fraction of non-zero elements with
      ``|g| / W <= 2**-14``, below fp16's normal range once scaled: they
      travel with fewer significant bits;
    - ``fp16/flushed``: the fraction with ``0 < |g| / W <= 2**-25``: fp16
      rounds them to zero.

    Fractions are over all ranks' elements. A CPU run allreduces in fp32: there
    the numbers say what the paper's fp16 allreduce would do to its gradients.

Layers (rank 0; the update is the same on every rank)
    For every parameter: ``‖w‖`` before the update, ``‖g‖`` of the gradient the
    update rule applies (averaged over workers, weight decay added) and the
    update ratio ``‖Δw‖ / ‖w‖``; the log holds min/median/max over the weight
    tensors (conv and fc ``W``: BN's γ, β and biases start at or near zero,
    where a ratio says little) with the layer of the maximum named
    (``.../max_at``); TensorBoard holds every parameter.

Ranks (stragglers)
    Each rank's mean time per iteration over the interval in compute (its
    micro-batches' forward and backward, up to the allreduce: the allreduce
    itself makes every rank wait for the slowest) and in waiting for data;
    min, median, max and the slowest rank (``.../slowest``), from one
    ``Gather`` of 8 numbers per rank to rank 0 at the interval.

The workers' BN statistics agreement is measured inside the BN statistics
allreduce (:class:`chainer_resnet.batch_normalization.BNStatisticsAllreduce`);
it reports to the same :class:`Observations`.

Cost: nothing between intervals but two clock readings per iteration (CUDA
events on a GPU: no synchronisation). At an interval every rank makes one
pass of four reductions over its gradient, rank 0 one copy of each parameter
in turn and three reductions, all on the device, then one transfer to the host
and the ``Gather``. benchmarks/README.md ("Health signals") measures it.
"""

import sys
import time

import numpy

import chainer
from chainer.training import extension

FP16_MAX = 65504.0
FP16_NORMAL_MIN = 2.0 ** -14
FP16_ROUNDS_TO_ZERO = 2.0 ** -25      # |x| <= this becomes 0 in fp16 (round to nearest even)
UPDATE_RATIO_WARNING = 0.5            # a step that moves a weight tensor by half its norm
STRAGGLER_WARNING = 0.1               # the slowest rank's excess, in median steps


# ---- device functions: plain functions of NumPy or CuPy arrays ----------------------------

def fp16_census(grads, workers):
    """``[overflow, underflow, flushed, max|g|]`` of a rank's gradients, for ``workers`` ranks.

    Counts, over all arrays of ``grads`` (NumPy or CuPy, one device), the
    elements with ``|g| > 65504 / workers`` (overflow), ``0 < |g| <=
    2**-14 * workers`` (underflow) and ``0 < |g| <= 2**-25 * workers``
    (flushed). Returns a float64 array of 4 on the arrays' device; on CuPy
    nothing waits for the device (four reductions per array, one stack).
    """
    xp = chainer.backend.get_array_module(*grads)
    limits = [numpy.float32(v) for v in (FP16_MAX / workers, FP16_NORMAL_MIN * workers,
                                         FP16_ROUNDS_TO_ZERO * workers)]
    if xp is numpy:
        total = numpy.zeros(4)
        for g in grads:
            a = numpy.abs(g)
            nonzero = numpy.count_nonzero(a)
            total[:3] += (numpy.count_nonzero(a > limits[0]),
                          nonzero - numpy.count_nonzero(a > limits[1]),
                          nonzero - numpy.count_nonzero(a > limits[2]))
            total[3] = max(total[3], float(a.max()) if a.size else 0.0)
        return total
    count, top = _cupy_kernels()[:2]
    zero, inf = numpy.float32(0), numpy.float32(numpy.inf)
    values = ([count(g, limits[0], inf) for g in grads]
              + [count(g, zero, limits[1]) for g in grads]
              + [count(g, zero, limits[2]) for g in grads] + [top(g) for g in grads])
    values = xp.stack(values).reshape(4, len(grads))
    return xp.concatenate([values[:3].sum(axis=1), values[3].max(keepdims=True)])


def sum_of_squares(x):
    """``sum(x**2)`` as a 0-d float64 array on ``x``'s device (no host synchronisation)."""
    if isinstance(x, numpy.ndarray):
        flat = x.ravel()
        return numpy.float64(numpy.dot(flat, flat))
    return _cupy_kernels()[2](x)


def sum_of_squared_differences(x, y):
    """``sum((x - y)**2)`` as a 0-d float64 array on the arrays' device."""
    if isinstance(x, numpy.ndarray):
        d = (x - y).ravel()
        return numpy.float64(numpy.dot(d, d))
    return _cupy_kernels()[3](x, y)


def _cupy_kernels():
    """CuPy reductions (built on first use: CuPy is not imported with this module)."""
    from chainer.backends import cuda
    count = cuda.reduce(
        'T x, float32 lo, float32 hi', 'float64 n',
        '(fabsf((float)x) > lo && fabsf((float)x) <= hi) ? 1.0 : 0.0',
        'a + b', 'n = a', '0', 'health_count_between')
    top = cuda.reduce('T x', 'float64 y', 'fabs((double)x)', 'fmax(a, b)', 'y = a', '0',
                      'health_abs_max')
    squares = cuda.reduce('T x', 'float64 y', '(double)x * (double)x', 'a + b', 'y = a', '0',
                          'health_sum_of_squares')
    differences = cuda.reduce(
        'T x, T y', 'float64 z', '((double)x - (double)y) * ((double)x - (double)y)',
        'a + b', 'z = a', '0', 'health_sum_of_squared_differences')
    return count, top, squares, differences


class DeviceClock:
    """Times phases of a step on the device's timeline without waiting for the device.

    On NumPy a mark is ``time.perf_counter()``; on CuPy a CUDA event recorded
    on the current stream, read by :meth:`seconds` once the device has passed
    both (the updater synchronises at the end of every step).
    """

    def __init__(self, xp):
        self.gpu = xp is not numpy

    def mark(self):
        if not self.gpu:
            return time.perf_counter()
        import cupy
        event = cupy.cuda.Event()
        event.record()
        return event

    def seconds(self, start, stop):
        if not self.gpu:
            return stop - start
        import cupy
        return cupy.cuda.get_elapsed_time(start, stop) / 1000.0


# ---- what a signal measured, waiting for the log and TensorBoard ----------------------

class Observations:
    """The signals' latest summaries (for the log) and complete values (for TensorBoard).

    On rank 0. The log's postprocess (:func:`chainer_resnet.reporting.extend_reporting`)
    takes the fields measured since the previous log entry into the next
    one; the TensorBoard bridge takes ``(iteration, {tag: value})`` records.
    """

    def __init__(self):
        self._fields = {}
        self._records = []

    def put(self, iteration, fields, complete=None):
        """Keep ``fields`` for the next log entry and ``complete`` for TensorBoard.

        The summaries reach TensorBoard with the log entry they join.
        """
        self._fields.update(fields)
        if complete:
            self._records.append((int(iteration), dict(complete)))

    def pop_fields(self):
        fields, self._fields = self._fields, {}
        return fields

    def pop_records(self):
        records, self._records = self._records, []
        return records


def summarise(prefix, values, names):
    """``{prefix/min, prefix/median, prefix/max, prefix/max_at}`` over the finite values."""
    values = numpy.asarray(values, dtype=numpy.float64)
    finite = numpy.flatnonzero(numpy.isfinite(values))
    if not len(finite):
        return {}
    kept = values[finite]
    top = finite[int(numpy.argmax(kept))]
    return {prefix + '/min': float(kept.min()), prefix + '/median': float(numpy.median(kept)),
            prefix + '/max': float(kept.max()), prefix + '/max_at': names[top]}


# ---- per-layer training dynamics --------------------------------------------------------

class LayerDynamics:
    """‖w‖, ‖g‖ and ‖Δw‖ of every parameter at one update, without a copy of the model.

    :meth:`attach` adds a pre- and a post-update hook to every parameter's
    update rule; while :attr:`armed`, the pre hook keeps a copy of that one
    parameter and the squared norms of it and of its gradient, and the post
    hook the squared norm of the change. Unarmed, each hook returns at once.
    """

    def __init__(self, model):
        named = sorted(model.namedparams())
        self.names = [name.lstrip('/') for name, _ in named]
        self._index = {id(param): i for i, (_, param) in enumerate(named)}
        self.weights = numpy.array([param.array is not None and param.array.ndim >= 2
                                    for _, param in named])
        self.armed = False
        self._kept = {}
        self._norms = {}

    def attach(self, optimizer):
        """Hook every parameter's update rule (after ``optimizer.setup``)."""
        for param in optimizer.target.params():
            param.update_rule.add_hook(self._before, name='health_before', timing='pre')
            param.update_rule.add_hook(self._after, name='health_after', timing='post')

    def _before(self, rule, param):
        if not self.armed or param.grad is None:
            return
        self._kept[id(param)] = param.array.copy()
        self._norms[id(param)] = [sum_of_squares(param.array), sum_of_squares(param.grad)]

    def _after(self, rule, param):
        old = self._kept.pop(id(param), None)
        if old is not None:
            self._norms[id(param)].append(sum_of_squared_differences(param.array, old))

    def take(self):
        """``(w_norm, g_norm, update_ratio)``: host arrays in :attr:`names` order (NaN: not
        updated at the armed step)."""
        squares = numpy.full((len(self.names), 3), numpy.nan)
        done = [(self._index[key], v) for key, v in self._norms.items() if len(v) == 3]
        if done:
            xp = chainer.backend.get_array_module(done[0][1][0])
            values = xp.stack([s for _, v in done for s in v]).reshape(len(done), 3)
            squares[[i for i, _ in done]] = chainer.backend.CpuDevice().send(values)
        self._norms = {}
        w, g, d = numpy.sqrt(squares).T
        with numpy.errstate(divide='ignore', invalid='ignore'):
            return w, g, d / w


# ---- the extension ------------------------------------------------------------------------

class RunHealth(extension.Extension):
    """The health signals of a run, every ``interval`` iterations, on every rank.

    Wiring: :meth:`attach` to the optimizer after it is set up; give it to
    the updater (``TimedUpdater(health=...)``), which calls
    :meth:`before_allreduce` (when :meth:`due`), :meth:`after_update` and
    :meth:`record_step`; register it on the trainer with :attr:`trigger`, on
    every rank (its ``Gather`` is a collective). Rank 0 puts its summaries in
    :attr:`observations` and prints a ``WARNING`` when a signal turns bad:
    an fp16 overflow, a weight update ratio above ``UPDATE_RATIO_WARNING``,
    a rank whose compute or data wait exceeds the median rank's by more
    than ``STRAGGLER_WARNING`` times the median step, in two intervals in a
    row.

    Args:
        comm: the ChainerMN communicator (``rank``, ``size``, ``mpi_comm``).
        model: the link the optimizer updates.
        interval (int): iterations between two measurements (> 0).
        observations (Observations): where rank 0 puts them (a new one if None).
    """

    priority = extension.PRIORITY_WRITER     # before the log at the same iteration

    def __init__(self, comm, model, interval, observations=None):
        if interval < 1:
            raise ValueError('RunHealth: interval must be >= 1, got {!r}'.format(interval))
        self.comm = comm
        self.interval = int(interval)
        self.trigger = (self.interval, 'iteration')
        self.observations = observations if observations is not None else Observations()
        self.layers = LayerDynamics(model) if comm.rank == 0 else None
        self._census = None                    # elements, then fp16_census's 4 (on the device)
        self._steps = numpy.zeros(3)           # iterations, compute s, data wait s
        self._warned = set()
        self._slow = {}

    def attach(self, optimizer):
        if self.layers is not None:
            self.layers.attach(optimizer)

    def due(self, iteration):
        """Whether the update that makes ``iteration`` is measured."""
        return iteration % self.interval == 0

    def before_allreduce(self, model):
        """Count this rank's gradient elements in fp16's danger zones; arm the layer hooks."""
        grads = [p.grad for p in model.params() if p.grad is not None]
        if grads:
            self._census = (sum(g.size for g in grads), fp16_census(grads, self.comm.size))
        if self.layers is not None:
            self.layers.armed = True

    def after_update(self):
        if self.layers is not None:
            self.layers.armed = False

    def record_step(self, data_wait, compute):
        """Add one iteration's data wait and compute (forward and backward) seconds."""
        self._steps += (1, compute, data_wait)

    def __call__(self, trainer):
        iteration = trainer.updater.iteration
        census = numpy.zeros(5)
        if self._census is not None:
            census[0] = self._census[0]
            census[1:] = chainer.backend.CpuDevice().send(self._census[1])
        mine = numpy.concatenate([self._steps, census]).astype(numpy.float64)
        self._census, self._steps = None, numpy.zeros(3)
        table = numpy.empty((self.comm.size, mine.size)) if self.comm.rank == 0 else None
        self.comm.mpi_comm.Gather(mine, table, root=0)
        if self.comm.rank != 0:
            return
        fields = _rank_fields(table) if table[:, 0].min() > 0 else {}
        if table[:, 3].sum() > 0:
            fields.update(_fp16_fields(table[:, 3:], self.comm.size))
        w, g, ratio = self.layers.take()
        names = self.layers.names
        weights = numpy.flatnonzero(self.layers.weights)
        for key, values in (('w_norm', w), ('g_norm', g), ('update_ratio', ratio)):
            fields.update(summarise('layers/' + key, values[weights], [names[i] for i in weights]))
        complete = {'layers/{}/{}'.format(key, name): float(v)
                    for key, values in (('w_norm', w), ('g_norm', g), ('update_ratio', ratio))
                    for name, v in zip(names, values) if numpy.isfinite(v)}
        self.observations.put(iteration, fields, complete)
        self._warn(iteration, fields)

    def _warn(self, iteration, fields):
        problems = {}
        if fields.get('fp16/overflow', 0) > 0:
            problems['fp16'] = (
                '{:.3g} % of the gradient elements overflow an fp16 sum over {} ranks '
                '(largest: {:.3g} x fp16\'s maximum); allreduce in fp32 (--set '
                'allreduce_grad_dtype=float32) or find the layer whose gradient exploded '
                '(layers/g_norm/max_at: {})'.format(
                    100 * fields['fp16/overflow'], self.comm.size, fields['fp16/range'],
                    fields.get('layers/g_norm/max_at', '?')))
        if fields.get('layers/update_ratio/max', 0) > UPDATE_RATIO_WARNING:
            problems['layers'] = (
                'one update moved {} by {:.3g} of its norm (> {}); lower the learning rate '
                'or look at the warm-up (alpha_sgd, alpha_rmsprop)'.format(
                    fields['layers/update_ratio/max_at'], fields['layers/update_ratio/max'],
                    UPDATE_RATIO_WARNING))
        slow = {}
        for key, what in (('compute_s', 'in compute (forward and backward)'),
                          ('data_wait_s', 'waiting for data (its loader or filesystem)')):
            top, median = fields.get('ranks/{}/max'.format(key), 0), fields.get(
                'ranks/{}/median'.format(key), 0)
            if top - median > STRAGGLER_WARNING * fields.get('ranks/step_s/median', 0):
                slow[key] = rank = fields['ranks/{}/slowest'.format(key)]
                # The same rank in two intervals in a row: a straggler, not a hiccup.
                if self._slow.get(key) == rank:
                    problems[key] = (
                        'rank {} is a straggler: {:.3g} s per iteration {} against a median of '
                        '{:.3g} s; every rank waits for it in the allreduce'.format(
                            rank, top, what, median))
        self._slow = slow
        for key, text in problems.items():
            if key not in self._warned:
                print('WARNING: health at iteration {}: {} (README.md, "Watching a run")'
                      .format(iteration, text), file=sys.stderr, flush=True)
        self._warned = set(problems)


def _rank_fields(table):
    """min/median/max and the slowest rank of compute, data wait and their sum per iteration."""
    per_iter = table[:, 1:3] / table[:, :1]
    fields = {}
    for key, values in (('compute_s', per_iter[:, 0]), ('data_wait_s', per_iter[:, 1]),
                        ('step_s', per_iter.sum(axis=1))):
        summary = summarise('ranks/' + key, values, list(range(len(values))))
        summary['ranks/{}/slowest'.format(key)] = summary.pop('ranks/{}/max_at'.format(key))
        fields.update(summary)
    return fields


def _fp16_fields(census, workers):
    """The fp16 fractions over every rank's elements, and the range the largest one uses."""
    n, over, under, flushed = census[:, :4].sum(axis=0)
    return {'fp16/overflow': over / n, 'fp16/underflow': under / n,
            'fp16/flushed': flushed / n,
            'fp16/range': workers * float(census[:, 4].max()) / FP16_MAX}
