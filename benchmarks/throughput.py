#!/usr/bin/env python
"""Training throughput of our ResNet-50 step, of the data pipeline, and our step overhead.

Model: synthetic inputs (no data loading), one process, forward + backward +
RMSpropWarmup update with LastBatchNormalization, as train_imagenet.py does.
Data: the real transforms on the embedded demo JPEGs, one process.

    python benchmarks/throughput.py --device cpu --size 32 --size 64
    python benchmarks/throughput.py --device gpu --size 224      # one GPU

Step overhead (issue 13: goal <= 5 %): our trainer's iterations beside a
bare Chainer loop over the same model, optimizer and iterator, on 1 and 2
ranks (each under the virtualenv's ``mpiexec``), in one run:

    python benchmarks/throughput.py --overhead
    python benchmarks/throughput.py --overhead --device gpu      # one GPU per rank

Each round, on every rank, ``train_imagenet.run`` trains with the smoke
recipe (demo data, batch 32 per rank, evaluation and snapshots moved past
the window, a log line every 5 iterations, loading in the main process),
and every iteration is preceded by one step of the bare loop,
``optimizer.update(model, *converter(iterator.next()))`` on that run's own
optimizer (the multi-node one, with its hooks), model and iterator: no
trainer, extensions, updater bookkeeping or bad-sample guard. Over
iterations [5, 15) the LogReport's ``elapsed_time`` gives the time of both
steps, the bare steps are timed on their own, and ours is the difference:
update, converter, schedules, reporting, every extension. Interleaving them
step by step keeps what else runs on the machine from favouring either.
Overhead = ours / bare - 1, from the sums over the rounds; rank 0 reports.

The clock (``--clock``): on the CPU by default this process's CPU time
(the trainer's own clock is switched to ``time.process_time`` for the run),
because on a shared machine the wall time of a CPU-bound step depends
mostly on what else runs; on a GPU by default the wall time (``perf_counter``,
after a device synchronize), since there host work can hide behind the
device's.

Prints one line per measurement; results are recorded in benchmarks/README.md.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import chainer_resnet  # noqa: F401
import chainer

from chainer_resnet.data import demo, layouts, sampling, transforms

import resnet_step   # benchmarks/resnet_step.py, beside this file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The smoke recipe made a steady-state window: batch 32 per rank (the paper's
# per-GPU batch), enough epochs that the run does not end, no evaluation or
# snapshot before the stop, a log line every 10 iterations (AKIBA2017's).
OVERHEAD_SET = ('batch_per_worker=32', 'train_subset=1024', 'epochs=1000',
                'eval_interval_epochs=1000', 'snapshot_interval_epochs=1000',
                'log_interval_iters=5')
WINDOW_START, WINDOW_ITERS = 5, 10
CLOCKS = {'cpu': time.process_time, 'wall': time.perf_counter}
RESULT_TAG = 'overhead-result: '


def model_step_rate(device, size, batch, iters, warmup=2):
    """(images/s, seconds per step) of the synthetic step (resnet_step.chainer_step)."""
    step, sync = resnet_step.chainer_step(device, size, batch)
    _, per_iter = resnet_step.timed(step, sync, warmup, iters)
    return batch / per_iter, per_iter


def data_rate(size, n=400):
    data = demo.demo_dataset()
    base = layouts.ListDataset(data.train_list, data.root)
    tf = transforms.TrainTransform(size, transforms.IMAGENET_MEAN, transforms.IMAGENET_STD)
    ds = sampling.AugmentedDataset(base, tf, seed=0)
    start = time.perf_counter()
    for i in range(n):
        ds[i * 7 % len(base)]
    return n / (time.perf_counter() - start)


# ---- step overhead: our trainer beside a bare loop ------------------------------------

def trainer_window(trainer, start, iters):
    """Seconds per iteration of `trainer` over [start, start + iters), from the
    elapsed times its LogReport recorded (rank 0; None on other ranks)."""
    try:
        log = trainer.get_extension('LogReport').log
    except ValueError:
        return None
    elapsed = {entry['iteration']: entry['elapsed_time'] for entry in log}
    return (elapsed[start + iters] - elapsed[start]) / iters


def bare_step(updater):
    """One step of a bare loop over the updater's own optimizer, model and
    iterator: converter, forward, backward, allreduce, update."""
    optimizer = updater.get_optimizer('main')
    # The trainer's converter without its BadSampleGuard (concat_examples, or
    # loader.Normalize for uint8 transforms).
    converter = getattr(updater.converter, 'converter', updater.converter)
    optimizer.update(optimizer.target, *converter(updater.get_iterator('main').next(),
                                                  updater.input_device))
    resnet_step.sync(optimizer.target.device)


def overhead_worker(args):
    """On every rank of one mpiexec launch: our trainer, a bare step before each
    of its iterations."""
    sys.path.insert(0, ROOT)
    import train_imagenet
    from chainer.training import trainer as trainer_module
    from chainer.training import updaters
    from mpi4py import MPI
    clock = CLOCKS[args.clock]
    trainer_module._get_time = clock   # Trainer.elapsed_time, which LogReport records
    bare_s = {}
    trainer_update = updaters.StandardUpdater.update

    def bare_step_then_update(updater):
        start = clock()
        bare_step(updater)
        bare_s[updater.iteration + 1] = clock() - start
        trainer_update(updater)

    updaters.StandardUpdater.update = bare_step_then_update
    window = range(WINDOW_START + 1, WINDOW_START + WINDOW_ITERS + 1)
    ours, bare = [], []
    for k in range(args.rounds):
        argv = ['--recipe', 'smoke', '--out', os.path.join(args.overhead_out, 'round{}'.format(k)),
                '--loaderjobs', '0', '--no-progress', '--device', args.device,
                '--stop-after-iters', str(WINDOW_START + WINDOW_ITERS + 1)]
        if args.data_cache:
            argv += ['--data-cache', args.data_cache]
        for setting in OVERHEAD_SET:
            argv += ['--set', setting]
        both = trainer_window(train_imagenet.run(argv), WINDOW_START, WINDOW_ITERS)
        bare.append(sum(bare_s[i] for i in window) / WINDOW_ITERS)
        ours.append(None if both is None else both - bare[-1])
    if MPI.COMM_WORLD.rank == 0:
        print(RESULT_TAG + json.dumps({'ranks': MPI.COMM_WORLD.size, 'ours_s': ours,
                                       'bare_s': bare}), flush=True)


def measure_overhead(ranks, args, out):
    """Launch overhead_worker under mpiexec -n `ranks`; its result dict."""
    local = os.path.join(os.path.dirname(sys.executable), 'mpiexec')
    launcher = local if os.path.exists(local) else shutil.which('mpiexec')
    if launcher is None:
        raise SystemExit('no mpiexec next to {} or on PATH: install an MPI (make installs '
                         'MPICH into .venv)'.format(sys.executable))
    cmd = [launcher, '-n', str(ranks), sys.executable, os.path.abspath(__file__),
           '--overhead-worker', '--overhead-out', out, '--rounds', str(args.rounds),
           '--device', 'gpu' if args.device == 'gpu' else 'cpu', '--clock', args.clock]
    if args.data_cache:
        cmd += ['--data-cache', args.data_cache]
    # One BLAS thread per rank, as `make demo` runs: ranks, not threads, share the cores.
    env = dict(os.environ, OMP_NUM_THREADS='1', OPENBLAS_NUM_THREADS='1')
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, env=env, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        raise SystemExit('overhead run on {} rank(s) failed (exit {}):\n{}'.format(
            ranks, proc.returncode, proc.stdout[-4000:]))
    return json.loads(lines[-1][len(RESULT_TAG):])


def overhead_main(args):
    print('step overhead: smoke recipe with {}, iterations [{}, {}), {} round(s) '
          'of our trainer with a bare step before each iteration, {} clock of rank 0; '
          'load average {}'.format(
              ', '.join(OVERHEAD_SET), WINDOW_START, WINDOW_START + WINDOW_ITERS, args.rounds,
              args.clock, ' '.join('{:.2f}'.format(x) for x in os.getloadavg())), flush=True)
    print('| ranks | ours s/iteration (rounds) | bare loop s/iteration (rounds) | '
          'our overhead |')
    print('|---|---|---|---|')
    with tempfile.TemporaryDirectory(prefix='overhead-') as out:
        for ranks in args.ranks or [1, 2]:
            r = measure_overhead(ranks, args, os.path.join(out, 'n{}'.format(ranks)))
            overhead = sum(r['ours_s']) / sum(r['bare_s']) - 1
            print('| {} | {:.4f} ({}) | {:.4f} ({}) | **{:+.1f} %** |'.format(
                r['ranks'], sum(r['ours_s']) / len(r['ours_s']),
                ', '.join('{:.4f}'.format(s) for s in r['ours_s']),
                sum(r['bare_s']) / len(r['bare_s']),
                ', '.join('{:.4f}'.format(s) for s in r['bare_s']), 100 * overhead), flush=True)
    print('goal: our overhead <= 5 %; load average at the end {}'.format(
        ' '.join('{:.2f}'.format(x) for x in os.getloadavg())))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--device', default='cpu', help="'cpu' or 'gpu' (GPU 0; --overhead: "
                   "one GPU per rank)")
    p.add_argument('--size', type=int, action='append')
    p.add_argument('--batch', type=int, default=32)
    p.add_argument('--iters', type=int, default=5)
    p.add_argument('--overhead', action='store_true',
                   help='measure our step overhead beside a bare loop instead')
    p.add_argument('--ranks', type=int, action='append',
                   help='--overhead: world sizes (repeatable; default 1 and 2)')
    p.add_argument('--rounds', type=int, default=2, help='--overhead: rounds per world size')
    p.add_argument('--clock', choices=sorted(CLOCKS),
                   help='--overhead: cpu (process CPU time; default on the CPU) or wall '
                   '(default on a GPU)')
    p.add_argument('--data-cache', help='where the demo dataset is built (default: the '
                   'trainer\'s)')
    p.add_argument('--overhead-worker', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--overhead-out', help=argparse.SUPPRESS)
    args = p.parse_args()
    args.clock = args.clock or ('wall' if args.device == 'gpu' else 'cpu')
    if args.overhead_worker:
        return overhead_worker(args)
    if args.overhead:
        return overhead_main(args)
    device = chainer.get_device('@numpy' if args.device == 'cpu' else '@cupy:0')
    device.use()
    for size in args.size or [32]:
        rate, per_iter = model_step_rate(device, size, args.batch, args.iters)
        print('model  device={} size={} batch={}: {:.1f} images/s ({:.3f} s/iteration)'
              .format(args.device, size, args.batch, rate, per_iter), flush=True)
        print('data   transforms size={} (28x28 JPEG source), 1 process: {:.0f} images/s'
              .format(size, data_rate(size)), flush=True)


if __name__ == '__main__':
    main()
