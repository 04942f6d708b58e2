"""Snapshots you can trust: written atomically, chosen by iteration, checked on resume.

A snapshot is the whole trainer state (model, optimizer, updater, iterators,
extensions) in one uncompressed ``.npz`` file, ``<out>/snapshot_iter_<N>.0``
(the ``.0`` suffix is ChainerMN's replica-set naming, kept so that run folders
of earlier versions resume). Besides Chainer's entries it records the run it
belongs to under ``chainer_resnet/``: the recipe (JSON) and the world size.

Writing (:class:`Snapshot`, rank 0 only): the state is checked to be finite
(a non-finite state is never written), the free space in ``<out>`` is checked,
then (in a background thread, by default, so that the other ranks do not wait
for the disk) the file is written to a temporary name in the same folder,
flushed and ``fsync``-ed, renamed into place and the folder ``fsync``-ed; only
then are snapshots beyond the newest ``keep`` deleted. A kill or a full disk at
any moment leaves the previous snapshots intact.

Resuming (:meth:`Snapshot.initialize`, every rank): rank 0 removes temporary
files a killed write left behind and lists the snapshots newest first *by
iteration* (not modification time). It reads the newest file once and
broadcasts its bytes to every rank in one collective (no per-rank sends, no
rank reading the whole file from the shared filesystem but one). A snapshot
that fails to load is reported by name and the previous one is tried. A
snapshot made with another recipe or world size is refused with a clear
error unless the user passes ``allow_recipe_change``.
"""

import io
import json
import os
import re
import shutil
import sys
import threading
import zipfile

import numpy

from chainer.serializers import npz
from chainer.training import extension

from chainer_resnet import recipes

SNAPSHOT_FORMAT = 'snapshot_iter_{}.0'
_SNAPSHOT_NAME = re.compile(r'^snapshot_iter_(\d+)\.0$')
# Temporary names: ours, and the folders Chainer's own snapshot writer used.
_TEMP_NAME = re.compile(r'^(\.tmp-.+|tmpsnapshot_iter_.+)$')
META_RECIPE = 'chainer_resnet/recipe'
META_WORLD_SIZE = 'chainer_resnet/world_size'
# Head room kept free beside a snapshot of the estimated size.
_FREE_SPACE_MARGIN = 64 * 2 ** 20
# What a damaged or truncated .npz raises when it is opened or read.
_LOAD_ERRORS = (zipfile.BadZipFile, ValueError, KeyError, OSError, EOFError)


class SnapshotError(RuntimeError):
    """A snapshot cannot be written or resumed; the message says what to do."""


class NonFiniteStateError(RuntimeError):
    """The state to be saved holds NaN or infinite values (it is never written)."""


def snapshot_path(out, iteration):
    """``<out>/snapshot_iter_<iteration>.0``."""
    return os.path.join(out, SNAPSHOT_FORMAT.format(int(iteration)))


def list_snapshots(out):
    """``[(iteration, path)]`` of the snapshots in ``out``, newest (highest iteration) first."""
    try:
        names = os.listdir(out)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        match = _SNAPSHOT_NAME.match(name)
        if match:
            found.append((int(match.group(1)), os.path.join(out, name)))
    return sorted(found, reverse=True)


def remove_leftovers(out):
    """Remove temporary files and folders of interrupted writes; return their names."""
    removed = []
    try:
        names = os.listdir(out)
    except FileNotFoundError:
        return removed
    for name in sorted(names):
        if _TEMP_NAME.match(name):
            path = os.path.join(out, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.remove(path)
                except FileNotFoundError:
                    pass
            removed.append(name)
    return removed


def _fsync_folder(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a folder; the rename is still atomic
    finally:
        os.close(fd)


def write_npz_atomic(path, arrays):
    """Write the dict ``arrays`` as an uncompressed ``.npz`` at ``path``, atomically.

    A temporary file in the same folder is written, flushed and ``fsync``-ed,
    then renamed over ``path`` and the folder ``fsync``-ed: readers see the old
    file or the whole new one, never a part. On any error the temporary file
    is removed and the error re-raised.
    """
    folder = os.path.dirname(os.path.abspath(path))
    temp = os.path.join(folder, '.tmp-{}-{}'.format(os.path.basename(path), os.getpid()))
    try:
        with open(temp, 'wb') as f:
            numpy.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.remove(temp)
        except OSError:
            pass
        raise
    _fsync_folder(folder)


def save_npz_atomic(path, obj):
    """``chainer.serializers.save_npz(path, obj)``, uncompressed and atomic."""
    write_npz_atomic(path, npz.serialize(obj))


def non_finite_entries(arrays):
    """Names of the floating-point arrays in ``arrays`` that hold NaN or infinity."""
    bad = []
    for name, value in arrays.items():
        value = numpy.asarray(value)
        if value.dtype.kind == 'f' and not numpy.isfinite(value).all():
            bad.append(name)
    return bad


def _meta(recipe_json, world_size):
    return {META_RECIPE: numpy.array(recipe_json),
            META_WORLD_SIZE: numpy.array(int(world_size))}


class Snapshot(extension.Extension):
    """Trainer extension: atomic snapshots on rank 0, collective resume on every rank.

    Register it with the snapshot trigger at priority -100 (Chainer's own
    snapshot priority: after LogReport, so a snapshot at a log iteration keeps
    that entry; before the schedules' initialisation at -200, which must see
    the restored iteration).

    Args:
        comm: the ChainerMN communicator (its ``mpi_comm`` broadcasts the state).
        recipe: the run's :class:`~chainer_resnet.recipes.Recipe`; recorded in
            every snapshot and compared on resume.
        keep (int): snapshots kept (the newest by iteration).
        autoload (bool): resume from the newest loadable snapshot in ``out``.
        resume (str or None): an explicit snapshot file to resume from instead.
        allow_recipe_change (bool): resume a snapshot made with other recipe
            values (the differences are printed).
        log (callable): where rank 0 reports what it did (default: stderr).
        writer (str): ``'thread'`` (default): the step pays for serialising and
            copying the state; a thread writes it while training goes on (one
            write in flight; its error is raised at the next snapshot or by
            :meth:`wait`). ``'sync'``: the step waits for the whole write.
            benchmarks/README.md has the measured stall of each; a process
            writer is not offered: forking a process that holds MPI and CUDA
            state is what the forkserver exists to avoid, and a forkserver child
            would need the whole state pickled to it.
    """

    trigger = 1, 'epoch'
    priority = -100

    def __init__(self, comm, recipe, keep=2, autoload=True, resume=None,
                 allow_recipe_change=False, log=None, writer='thread'):
        if keep < 1:
            raise ValueError('keep must be >= 1, got {}'.format(keep))
        if writer not in ('thread', 'sync'):
            raise ValueError("writer must be 'thread' or 'sync', got {!r}".format(writer))
        self.writer = writer
        self._thread = None
        self._failed = None
        self.comm = comm
        self.recipe_json = recipe.to_json()
        self.keep = keep
        self.autoload = autoload
        self.resume = resume
        self.allow_recipe_change = allow_recipe_change
        self._log = log or (lambda text: print(text, file=sys.stderr, flush=True))
        self.loaded = None

    # --- resume -----------------------------------------------------------------
    def initialize(self, trainer):
        """Load the newest loadable snapshot (or ``resume``) into ``trainer``.

        A :class:`SnapshotError` here is raised by every rank together (rank 0's
        bytes were broadcast, and the checks depend only on them, the recipe and
        the world size), so it is marked collective: ``train_imagenet.main()``
        prints it once on rank 0 and no rank aborts.
        """
        try:
            self._load_newest(trainer)
        except SnapshotError as error:
            error.collective_rank = self.comm.rank
            raise

    def _load_newest(self, trainer):
        out = trainer.out
        if self.comm.rank == 0:
            removed = remove_leftovers(out)
            if removed:
                self._log('snapshot: removed {} temporary file(s) of an interrupted write: {}'
                          .format(len(removed), ', '.join(removed)))
        if self.resume is not None:
            candidates = [self.resume]
        elif self.autoload:
            candidates = self.comm.mpi_comm.bcast(
                [path for _, path in list_snapshots(out)] if self.comm.rank == 0 else None)
        else:
            candidates = []
        failures = []
        for path in candidates:
            problem = self._try_load(path, trainer)
            if problem is None:
                self.loaded = path
                if failures and self.comm.rank == 0:
                    self._log('snapshot: resumed from {} instead'.format(path))
                elif self.comm.rank == 0:
                    self._log('snapshot: continuing from {} (iteration {})'.format(
                        path, trainer.updater.iteration))
                return
            failures.append('{}: {}'.format(path, problem))
            if self.comm.rank == 0 and self.resume is None:   # an explicit one has no other
                self._log('snapshot: cannot load {} ({}); trying the previous one'
                          .format(path, problem))
        if self.resume is not None:
            raise SnapshotError(
                'cannot resume from --resume {}: {}. Pass an existing, complete snapshot '
                'file (snapshot_iter_<N>.0 in a run folder).'.format(self.resume, failures[0]))
        if failures:
            raise SnapshotError(
                'none of the {} snapshot(s) in {} can be loaded ({}). Nothing was trained. '
                'Move them out of the folder to start over, or restore a good copy.'.format(
                    len(failures), out, '; '.join(failures)))

    def _read_bytes(self, path):
        """Rank 0 reads ``path``; every rank returns its bytes (or the read error)."""
        data, problem = None, None
        if self.comm.rank == 0:
            try:
                with open(path, 'rb') as f:
                    data = numpy.frombuffer(f.read(), dtype=numpy.uint8)
            except OSError as e:
                problem = '{}: {}'.format(type(e).__name__, e.strerror or e)
        size, problem = self.comm.mpi_comm.bcast(
            (None if data is None else data.size, problem))
        if problem is not None:
            return None, problem
        if self.comm.rank != 0:
            data = numpy.empty(size, dtype=numpy.uint8)
        self.comm.mpi_comm.Bcast(data, root=0)
        return data, None

    def _try_load(self, path, trainer):
        """None if ``path`` was loaded into ``trainer``, else why not (same on every rank)."""
        data, problem = self._read_bytes(path)
        if problem is not None:
            return problem
        try:
            with numpy.load(io.BytesIO(data.tobytes())) as f:
                self._check_run(path, f)
                npz.NpzDeserializer(f).load(trainer)
        except SnapshotError:
            raise
        except _LOAD_ERRORS as e:
            return 'damaged or incomplete ({}: {})'.format(type(e).__name__, e)
        return None

    def _check_run(self, path, f):
        if META_WORLD_SIZE in f.files:
            saved = int(f[META_WORLD_SIZE])
            if saved != self.comm.size:
                raise SnapshotError(
                    '{} was written by a run of {} rank(s); this launch has {}. The data '
                    'order of every rank depends on the world size, so the run cannot '
                    'continue exactly. Re-launch with {} rank(s), or start a new run with '
                    'another --out.'.format(path, saved, self.comm.size, saved))
        if META_RECIPE in f.files:
            saved = json.loads(str(f[META_RECIPE]))
            changes = recipes.differences(saved, json.loads(self.recipe_json))
            if changes and not self.allow_recipe_change:
                raise SnapshotError(
                    '{} was made with other recipe values than this launch ({}). Re-launch '
                    'with the original --recipe/--set values (they are in recipe.json), '
                    'start a new run with another --out, or pass --allow-recipe-change to '
                    'continue from this snapshot with the new values.'.format(
                        path, '; '.join(changes)))
            if changes and self.comm.rank == 0:
                self._log('snapshot: continuing {} with changed recipe values: {}'.format(
                    path, '; '.join(changes)))

    # --- write ------------------------------------------------------------------
    def __call__(self, trainer):
        if self.comm.rank != 0:
            return
        self.wait()              # at most one write in flight; its error surfaces here
        arrays = npz.serialize(trainer)
        arrays.update(_meta(self.recipe_json, self.comm.size))
        path = snapshot_path(trainer.out, trainer.updater.iteration)
        needed = sum(numpy.asarray(a).nbytes for a in arrays.values()) + _FREE_SPACE_MARGIN
        free = shutil.disk_usage(trainer.out).free
        if free < needed:
            raise SnapshotError(
                'not enough free space in {} for the snapshot at iteration {}: it needs '
                'about {:.0f} MB, {:.0f} MB are free. Free some space (or move the run to '
                'a larger --out) and re-launch; the previous snapshots are kept.'.format(
                    trainer.out, trainer.updater.iteration, needed / 2 ** 20, free / 2 ** 20))
        iteration = trainer.updater.iteration
        if self.writer == 'sync':
            self._write(path, arrays, trainer.out, iteration)
            self.wait()
            return
        # The trainer updates its (host) arrays in place while the thread
        # writes: write a copy (a memory copy is ~10x faster than the write).
        arrays = {name: numpy.array(value, copy=True) for name, value in arrays.items()}
        self._thread = threading.Thread(target=self._write, name='snapshot-writer',
                                        args=(path, arrays, trainer.out, iteration))
        self._thread.start()

    def _write(self, path, arrays, out, iteration):
        bad = non_finite_entries(arrays)
        if bad:
            self._failed = (path, out, NonFiniteStateError(
                'the trainer state at iteration {} holds NaN or infinite values in {} '
                'array(s) (first: {}); it was not written as a snapshot'.format(
                    iteration, len(bad), bad[0])))
            return
        try:
            write_npz_atomic(path, arrays)
            for _, stale in list_snapshots(out)[self.keep:]:
                os.remove(stale)
        except Exception as e:  # reported by wait() in the main thread
            self._failed = (path, out, e)

    def wait(self):
        """Wait for the snapshot being written; raise SnapshotError if a write failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._failed is not None:
            path, out, e = self._failed
            self._failed = None
            if isinstance(e, NonFiniteStateError):
                raise e
            reason = e.strerror if isinstance(e, OSError) and e.strerror else e
            raise SnapshotError(
                'cannot write the snapshot {} ({}). Free space or fix the permissions of '
                '{} and re-launch; the previous snapshots are kept.'.format(
                    path, reason, out)) from e

    def finalize(self):
        # Only join: an error is raised by the trainer's own wait() after the
        # run, not from Chainer's clean-up, where it could hide another error.
        if self._thread is not None:
            self._thread.join()
            self._thread = None
