#!/usr/bin/env python
"""What the health signals cost, signal by signal, against the training step they watch.

The demo's step (our ResNet-50, 10 classes, 24x24 inputs, batch 32,
RMSpropWarmup, one process) and each signal's work on that model's real
gradients, timed on this process's CPU clock (``time.process_time``: on a
shared machine wall time says more about the neighbours than about us), the
median of ``--repeat`` runs:

- every iteration: the two clock marks and ``record_step`` of the updater;
- every interval: the fp16 census of the rank's gradients, the per-layer
  hooks armed (an armed update minus an unarmed one), the extension's
  transfer, gather (one rank here) and summaries, and the TensorBoard
  event of one log entry and the complete per-layer values (written and
  flushed, so that the writer thread's serialisation and CRC are counted;
  the trainer flushes every 30 s);
- every evaluation: the BN statistics allreduce with the agreement against
  without it;
- every plot drawing (at most every 5 minutes): the four health plots.

It also times the two maintained TensorBoard writers on the same events:
tensorboardX's ``FileWriter`` (what the trainer uses) and TensorBoard's own
``EventFileWriter`` (what torch.utils.tensorboard uses), when installed.

    python benchmarks/health.py [--size 24] [--batch 32] [--interval 25]

Prints a table; results are recorded in benchmarks/README.md ("Health signals").
"""

import argparse
import os
import statistics
import tempfile
import time
import types

import numpy

import chainer_resnet  # noqa: F401
import chainer
import chainer.functions as F

from chainer_resnet import batch_normalization, health, optimizers, reporting, resnet
from chainer_resnet import tensorboard


class _Ranks:
    """`size` ranks seen from rank 0, every rank sending rank 0's numbers."""

    def __init__(self, size):
        self.size, self.rank, self.mpi_comm = size, 0, self

    def Gather(self, send, recv, root=0):
        recv[...] = send

    def Allreduce(self, send, recv):
        recv[...] = send * self.size


def cpu_seconds(fn, repeat):
    """Median CPU seconds of `fn()` over `repeat` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--size', type=int, default=24)
    p.add_argument('--batch', type=int, default=32)
    p.add_argument('--classes', type=int, default=10)
    p.add_argument('--ranks', type=int, default=2, help='W of the fp16 census')
    p.add_argument('--interval', type=int, default=25, help='iterations between measurements')
    p.add_argument('--eval-every', type=float, default=62.5, help='iterations per evaluation')
    p.add_argument('--repeat', type=int, default=5)
    args = p.parse_args()

    numpy.random.seed(0)
    model = resnet.ResNet50(n_class=args.classes, bn=batch_normalization.LastBatchNormalization)
    opt = optimizers.RMSpropWarmup(lr=0.025, alpha_sgd=0.5)
    opt.setup(model)
    for hook in (optimizers.NonFiniteGradientCheck(), optimizers.WeightDecayExceptBN()):
        opt.add_hook(hook)
    x = numpy.random.standard_normal((args.batch, 3, args.size, args.size)).astype(
        numpy.float32)
    t = numpy.random.randint(0, args.classes, args.batch).astype(numpy.int32)
    comm = _Ranks(args.ranks)
    monitor = health.RunHealth(comm, model, args.interval)
    monitor.attach(opt)

    def backward():
        with chainer.using_config('train', True):
            loss = F.softmax_cross_entropy(model(x), t)
        model.cleargrads()
        loss.backward()

    def step():
        backward()
        opt.update()

    rows = []
    step_s = cpu_seconds(step, args.repeat)
    rows.append(('training step (forward, backward, update)', 'every iteration', step_s, 1))

    clock = health.DeviceClock(numpy)

    def bookkeeping():
        for _ in range(1000):
            a = clock.mark()
            b = clock.mark()
            monitor.record_step(0.0, clock.seconds(a, b))
    rows.append(('clock marks + record_step', 'every iteration',
                 cpu_seconds(bookkeeping, args.repeat) / 1000, 1))

    backward()
    grads = [p.grad for p in model.params() if p.grad is not None]
    rows.append(('fp16 census of the rank\'s gradient ({:,} values)'.format(
        sum(g.size for g in grads)), 'every interval',
        cpu_seconds(lambda: health.fp16_census(grads, args.ranks), args.repeat), args.interval))

    kept = {n: p.grad.copy() for n, p in model.namedparams()}

    def update(armed):
        for n, p in model.namedparams():
            p.grad[...] = kept[n]
        monitor.layers.armed = armed
        opt.update()
        monitor.layers.armed = False
    unarmed = cpu_seconds(lambda: update(False), args.repeat)
    armed = cpu_seconds(lambda: update(True), args.repeat)
    rows.append(('per-layer |w|, |g|, |dw| (armed update - update)', 'every interval',
                 armed - unarmed, args.interval))

    trainer = types.SimpleNamespace(updater=types.SimpleNamespace(iteration=args.interval))

    def collect():
        monitor.before_allreduce(model)
        monitor.layers.armed = True
        update(True)
        monitor._census = (monitor._census[0], monitor._census[1])
        start = time.process_time()
        monitor.record_step(0.0, 0.1)
        monitor(trainer)
        return time.process_time() - start
    collect()
    rows.append(('transfer, gather, summaries', 'every interval',
                 statistics.median(collect() for _ in range(args.repeat)), args.interval))
    records = monitor.observations.pop_records()
    fields = monitor.observations.pop_fields()

    with tempfile.TemporaryDirectory(prefix='health-bench-') as out:
        entry = dict(fields, **{'main/loss': 1.0, 'lr': 0.1, 'perf/images_per_sec': 100.0})
        entry = {k: v for k, v in entry.items() if isinstance(v, (int, float))}
        values = dict(entry, **records[-1][1])
        for name, make in _writers():
            write, close = make(os.path.join(out, name.split()[0]))
            seconds = cpu_seconds(lambda: write(args.interval, values), args.repeat)
            close()
            rows.append(('TensorBoard: one event of {} scalars, written and flushed, {}'.format(
                len(values), name),
                         'every interval', seconds, args.interval))

        log = [dict(fields, iteration=i * args.interval) for i in range(1, 26)]
        plots = reporting.LogPlots(reporting.HEALTH_PLOTS)
        rows.append(('the 4 health plots, 25 points each', 'every drawing (>= 5 min)',
                     cpu_seconds(lambda: plots.draw(log, out), args.repeat), None))

    observations = health.Observations()
    bn_trainer = types.SimpleNamespace(updater=types.SimpleNamespace(iteration=0))
    with_agreement = batch_normalization.BNStatisticsAllreduce(comm, model,
                                                               observations=observations)
    without = batch_normalization.BNStatisticsAllreduce(comm, model)

    def agree():
        bn_trainer.updater.iteration += 1
        with_agreement(bn_trainer)
    rows.append(('BN statistics allreduce + agreement - without', 'every evaluation',
                 cpu_seconds(agree, args.repeat) - cpu_seconds(without, args.repeat),
                 args.eval_every))

    print('health signals: ResNet-50, {} classes, {}x{} inputs, batch {}, W = {} ranks, '
          'interval {} iterations; CPU seconds (median of {})'.format(
              args.classes, args.size, args.size, args.batch, args.ranks, args.interval,
              args.repeat))
    print('| work | when | CPU ms | per iteration, % of the step |')
    print('|---|---|---:|---:|')
    total = 0.0
    for what, when, seconds, every in rows:
        share = '' if every is None or what.startswith('training') else \
            '{:.3f} %'.format(100 * seconds / every / step_s)
        if share and 'TensorBoard' not in what or 'tensorboardX' in what:
            total += 0 if not share else seconds / every
        print('| {} | {} | {:.3f} | {} |'.format(what, when, 1000 * seconds, share))
    print('total at this interval (with tensorboardX): {:.3f} % of the step'.format(
        100 * total / step_s))


def _writers():
    """[(name, make(folder) -> (write(step, values), close()))] of the installed writers."""
    found = []
    try:
        from tensorboardX import FileWriter

        def tensorboardx(folder):
            bridge = tensorboard.TensorBoardLog(folder, writer=FileWriter)
            os.makedirs(folder)
            bridge._writer = FileWriter(folder, flush_secs=30)

            def write(step, values):
                bridge._add(step, values)            # what the trainer runs
                bridge._writer.flush()               # and what its writer thread does
            return write, bridge.finalize
        found.append(('tensorboardX FileWriter', tensorboardx))
    except ImportError:
        pass
    try:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        def own(folder):
            writer = EventFileWriter(folder, flush_secs=30)

            def write(step, values):
                summary = Summary(value=[Summary.Value(tag=k, simple_value=float(v))
                                         for k, v in values.items()])
                writer.add_event(Event(summary=summary, step=step, wall_time=time.time()))
                writer.flush()
            return write, writer.close
        found.append(('TensorBoard EventFileWriter', own))
    except ImportError:
        pass
    return found


if __name__ == '__main__':
    main()
