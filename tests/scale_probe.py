#!/usr/bin/env python
"""What a launch costs each rank, counted: the probe tests/test_scale.py and
benchmarks/scale.py run under mpiexec.

    mpiexec -n 4 python tests/scale_probe.py startup OUT.json --train T --val V --root R
    mpiexec -n 4 python tests/scale_probe.py resume OUT.json --work DIR [--megabytes M]

``startup``: every rank opens the datasets twice, counting its filesystem
metadata calls each time: first as the trainer does
(``chainer_resnet.data.shards.open_data``: rank 0 indexes and broadcasts, each rank checks
its shard), then as every rank did before issue 10 (``open_dataset`` with
``check_files=True`` on every rank: the negative control). Paths under ``R``
with an image extension "exist" (the counted ``os.stat`` answers for them), so a
list of a million images needs no image files.

``resume``: rank 0 trains a small Chainer trainer (a linear classifier whose
state is about ``M`` MB) for two iterations and writes a snapshot with
:class:`chainer_resnet.snapshots.Snapshot`; then every rank resumes a fresh
trainer from it, counting the calls rank 0 makes on ``comm.mpi_comm`` that send
data, and the bytes. The negative control resumes the same snapshot with a
serial fan-out (rank 0 sends the file to each rank in turn).

Rank 0 writes OUT.json: ``{"startup"|"resume": ..., "control": ...}``, each a
list with one entry per rank. Timings are recorded for benchmarks/scale.py;
the tests assert only on counts.
"""

import argparse
import contextlib
import json
import os
import pickle
import stat
import sys
import time

import numpy

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import chainer_resnet  # noqa: E402,F401  (before chainer: compatibility hook)
import chainer  # noqa: E402
import chainer.links as L  # noqa: E402

from chainer_resnet import communication, recipes, snapshots  # noqa: E402
from chainer_resnet.data import layouts, sampling, shards  # noqa: E402

# Calls that reach the filesystem's metadata server: everything in os.path and
# os.walk ends in one of these. The entry points are counted on their own too.
METADATA_CALLS = ('stat', 'lstat', 'listdir', 'scandir')
ENTRY_POINTS = ('exists', 'isfile', 'isdir', 'walk')
# What a sending rank may call on an mpi4py communicator.
SENDING_CALLS = ('send', 'Send', 'isend', 'Isend', 'ssend', 'Ssend', 'issend', 'Issend',
                 'bsend', 'Bsend', 'bcast', 'Bcast', 'Ibcast', 'scatter', 'Scatter',
                 'Scatterv', 'sendrecv', 'Sendrecv')
_FAKE_STAT = os.stat_result((stat.S_IFREG | 0o644, 0, 0, 1, 0, 0, 110000, 0, 0, 0))


class MetadataCounter:
    """Counts metadata calls while installed; image paths under `fake_root` exist.

    Use as a context manager; ``counts`` maps each wrapped name to its calls and
    ``total`` is the number of calls in :data:`METADATA_CALLS`.
    """

    def __init__(self, fake_root):
        self.prefix = os.path.abspath(fake_root) + os.sep
        self.counts = dict.fromkeys(METADATA_CALLS + ENTRY_POINTS, 0)
        self._saved = []

    @property
    def total(self):
        return sum(self.counts[name] for name in METADATA_CALLS)

    def _faked(self, path):
        return (isinstance(path, str) and path.startswith(self.prefix)
                and path.lower().endswith(layouts.IMAGE_EXTENSIONS))

    def _wrap(self, module, name):
        real = getattr(module, name)
        fake = name in ('stat', 'lstat')

        def counted(path=None, *args, **kwargs):
            self.counts[name] += 1
            if fake and self._faked(path):
                return _FAKE_STAT
            return real(*args, **kwargs) if path is None else real(path, *args, **kwargs)
        self._saved.append((module, name, real))
        setattr(module, name, counted)

    def __enter__(self):
        for name in METADATA_CALLS + ('walk',):
            self._wrap(os, name)
        for name in ENTRY_POINTS[:-1]:
            self._wrap(os.path, name)
        return self

    def __exit__(self, *exc):
        for module, name, real in reversed(self._saved):
            setattr(module, name, real)
        self._saved = []


class CountingMpiComm:
    """An mpi4py communicator whose sending calls are counted (calls and bytes
    this rank sends: a broadcast's payload on its root, a send's on the sender)."""

    def __init__(self, inner):
        self._inner = inner
        self.calls = {}
        self.seconds = 0.0       # inside the counted calls
        self._sent = []          # sized after the timed part (pickling costs time)

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if name not in SENDING_CALLS:
            return attr

        def counted(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            root = kwargs.get('root', args[1] if len(args) > 1 else 0)
            if not name.endswith('cast') or root == self._inner.rank:
                self._sent.append(args[0] if args else kwargs.get('obj', kwargs.get('buf')))
            start = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
        return counted

    def bytes_sent(self):
        total = 0
        for item in self._sent:
            if isinstance(item, numpy.ndarray):
                total += item.nbytes
            elif isinstance(item, (list, tuple)) and item and isinstance(item[0], numpy.ndarray):
                total += item[0].nbytes          # [buffer, MPI datatype]
            else:
                total += len(pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL))
        return total


@contextlib.contextmanager
def counting_mpi(comm):
    """`comm` (a ChainerMN communicator) with its ``mpi_comm`` counted, inside the block."""
    real = comm.mpi_comm
    comm.mpi_comm = CountingMpiComm(real)
    try:
        yield comm.mpi_comm
    finally:
        comm.mpi_comm = real


# --- startup ------------------------------------------------------------------------

def _open_as_before(args, recipe):
    """The start-up of the trainer before issue 10: every rank opens and checks all."""
    train = layouts.open_dataset(args.train, args.root, recipe.num_classes)
    val = layouts.open_dataset(args.val, args.root, recipe.num_classes,
                               classes=getattr(train, 'classes', None))
    return train, val


@contextlib.contextmanager
def timed_phases():
    """Seconds spent in ``open_dataset`` (building the index) and in ``check_files``."""
    spent = {'index_s': 0.0, 'check_s': 0.0}
    patched = [(layouts, 'open_dataset', 'index_s'),
               (layouts.ListDataset, 'check_files', 'check_s'),
               (layouts.FolderDataset, 'check_files', 'check_s')]

    def timed(real, key):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - start
        return call
    saved = [(owner, name, owner.__dict__.get(name)) for owner, name, _ in patched]
    for owner, name, key in patched:
        setattr(owner, name, timed(getattr(owner, name), key))
    try:
        yield spent
    finally:
        for owner, name, real in saved:
            if real is None:
                delattr(owner, name)
            else:
                setattr(owner, name, real)


def _startup_entry(comm, counter, seconds, train_local, val_local, sent, phases):
    return dict(phases, rank=comm.rank, size=comm.size, metadata_calls=counter.total,
                counts=counter.counts, seconds=seconds, mpi_s=sent.seconds,
                train_shard=int(len(numpy.unique(train_local))),
                val_shard=int(len(val_local)), bcast_calls=sent.calls,
                bytes_sent=sent.bytes_sent())


def startup(comm, args):
    import train_imagenet
    trainer_args = train_imagenet.parse_args(
        ['--recipe', 'smoke', '--train', args.train, '--val', args.val, '--root', args.root,
         '--set', 'train_subset=none', '--set', 'val_subset=none'])
    recipe = recipes.resolve(trainer_args.recipe, trainer_args.set)
    results = {}

    comm.mpi_comm.Barrier()
    start = time.perf_counter()
    with MetadataCounter(args.root) as counter, counting_mpi(comm) as sent, \
            timed_phases() as phases:
        data = shards.open_data(comm, recipe, trainer_args.train, trainer_args.val,
                                trainer_args.root, trainer_args.data_cache)
    seconds = time.perf_counter() - start
    results['startup'] = _startup_entry(comm, counter, seconds, data.train_local,
                                        data.val_local, sent, phases)
    del data

    if not args.skip_control:
        comm.mpi_comm.Barrier()
        start = time.perf_counter()
        with MetadataCounter(args.root) as counter, counting_mpi(comm) as sent, \
                timed_phases() as phases:
            train, val = _open_as_before(trainer_args, recipe)
            train_ids = sampling.subset(len(train), recipe.train_subset, recipe.seed)
            val_ids = sampling.subset(len(val), recipe.val_subset, recipe.seed)
            train_local = sampling.scatter_indices(train_ids, comm.size, comm.rank,
                                                   equal=True, shuffle_seed=recipe.seed)
            val_local = sampling.scatter_indices(val_ids, comm.size, comm.rank, equal=False)
        seconds = time.perf_counter() - start
        results['control'] = _startup_entry(comm, counter, seconds, train_local, val_local,
                                            sent, phases)
    return results


# --- resume -------------------------------------------------------------------------

def _trainer(out, megabytes, seed):
    """A linear classifier with RMSpropWarmup (weights + 2 state arrays of the
    same size: about `megabytes` MB of float32 state), batch 4 of 8 samples."""
    from chainer import training
    from chainer_resnet.optimizers import RMSpropWarmup
    n_out = 100
    n_in = max(1, int(megabytes * 2 ** 20 / (3 * 4 * n_out)))
    numpy.random.seed(seed)
    model = L.Classifier(L.Linear(n_in, n_out))
    x = numpy.random.RandomState(0).randn(8, n_in).astype(numpy.float32)
    t = (numpy.arange(8) % n_out).astype(numpy.int32)
    it = chainer.iterators.SerialIterator(chainer.datasets.TupleDataset(x, t), 4)
    opt = RMSpropWarmup(lr=0.01, alpha_sgd=0.5)
    opt.setup(model)
    updater = training.updaters.StandardUpdater(it, opt)
    return training.Trainer(updater, (2, 'iteration'), out=out)


class FanoutSnapshot(snapshots.Snapshot):
    """Negative control: the snapshot read on rank 0 and sent to each rank in turn."""

    def _read_bytes(self, path):
        mpi = self.comm.mpi_comm
        if self.comm.rank == 0:
            with open(path, 'rb') as f:
                data = numpy.frombuffer(f.read(), dtype=numpy.uint8)
            for rank in range(1, self.comm.size):
                mpi.send(data.size, dest=rank)
                mpi.Send(data, dest=rank)
        else:
            data = numpy.empty(mpi.recv(source=0), dtype=numpy.uint8)
            mpi.Recv(data, source=0)
        return data, None


def _same_state(trainer, path):
    """Whether the updater's state (model, optimizer, iterator) equals the snapshot's."""
    from chainer.serializers import npz
    state = npz.serialize(trainer.updater)
    with numpy.load(path) as f:
        names = [n for n in f.files if n.startswith('updater/')]
        return bool(names) and all(numpy.array_equal(f[n], state[n[len('updater/'):]])
                                   for n in names)


def _resume_once(comm, out, megabytes, snapshot_class):
    recipe = recipes.SMOKE
    if comm.rank == 0:
        trained = _trainer(out, megabytes, seed=0)
        trained.run()
        writer = snapshots.Snapshot(comm, recipe)
        writer(trained)
        getattr(writer, 'wait', writer.finalize)()    # a background write is done
        del trained
    comm.mpi_comm.Barrier()
    path = snapshots.snapshot_path(out, 2)
    trainer = _trainer(out, megabytes, seed=1)
    same_before = _same_state(trainer, path)
    snap = snapshot_class(comm, recipe)
    comm.mpi_comm.Barrier()
    start = time.perf_counter()
    with counting_mpi(comm) as sent:
        snap.initialize(trainer)
    seconds = time.perf_counter() - start
    return {'rank': comm.rank, 'size': comm.size, 'calls': sent.calls,
            'bytes_sent': sent.bytes_sent(), 'seconds': seconds, 'mpi_s': sent.seconds,
            'snapshot_bytes': os.path.getsize(path),
            'resumed_iteration': trainer.updater.iteration,
            'same_state_before': same_before, 'same_state': _same_state(trainer, path)}


def resume(comm, args):
    results = {'resume': _resume_once(comm, os.path.join(args.work, 'bcast'),
                                      args.megabytes, snapshots.Snapshot)}
    if not args.skip_control:
        results['control'] = _resume_once(comm, os.path.join(args.work, 'fanout'),
                                          args.megabytes, FanoutSnapshot)
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('mode', choices=('startup', 'resume'))
    p.add_argument('out', help='JSON file rank 0 writes')
    p.add_argument('--train')
    p.add_argument('--val')
    p.add_argument('--root', help='image root; image paths under it "exist"')
    p.add_argument('--work', help='resume: folder for the snapshots')
    p.add_argument('--megabytes', type=float, default=0.05,
                   help='resume: size of the trainer state')
    p.add_argument('--skip-control', action='store_true',
                   help='leave out the negative control (benchmarks time it separately)')
    args = p.parse_args(argv)
    comm = communication.create_communicator(gpu=False)
    communication.install_abort_on_error()
    results = (startup if args.mode == 'startup' else resume)(comm, args)
    gathered = comm.mpi_comm.gather(results, root=0)
    if comm.rank == 0:
        merged = {key: [r[key] for r in gathered] for key in results}
        temp = args.out + '.tmp'
        with open(temp, 'w') as f:
            json.dump(merged, f, indent=1)
        os.replace(temp, args.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
