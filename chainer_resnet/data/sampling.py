"""Which samples each process reads, and reproducible augmentation.

Sample indices, never samples, are chosen and scattered: every rank opens
the same dataset description and reads only its own images.

- :func:`subset`: a fixed subset of a dataset (a recipe's
  ``train_subset`` / ``val_subset``);
- :func:`scatter_indices`: one rank's share of the indices;
- :class:`EpochOrderSampler` writes the epoch into the indices an iterator
  asks for, and :class:`AugmentedDataset` seeds each sample's generator with
  ``(seed, epoch tag, global sample index)``. The same sample therefore gets
  the same augmentation whatever process, loader worker or rank loads it,
  and a resumed run continues exactly;
- :class:`VirtualWorkerStream`: the samples of a rank's k virtual workers
  as one dataset, so one iterator (and one set of loader processes) gives
  each iteration's k micro-batches, each exactly the batch that worker would
  read as a rank of its own;
- :class:`BadSample`: what :class:`AugmentedDataset` returns in place of a
  sample it cannot read or transform, so that a bad image reaches the main
  process as data (:class:`~chainer_resnet.data.loader.BadSampleGuard`
  decides what to do with it) instead of killing a loader process.
"""

import dataclasses
import errno
from typing import Optional

import numpy

import chainer

from chainer_resnet.communication import CommunicationError
from chainer_resnet.data._checks import check_size, describe
from chainer_resnet.data.layouts import DatasetError


def subset(n, size, seed):
    """Global indices of the first `size` images of a fixed permutation.

    Returned sorted; all of ``range(n)`` when `size` is None or at least
    `n`. The permutation depends only on `seed` (not on the rank), so every
    rank picks the same subset, and a smaller subset lies inside a larger
    one.
    """
    if size is None or size >= n:
        return numpy.arange(n)
    return numpy.sort(numpy.random.default_rng([seed, 7]).permutation(n)[:size])


def scatter_indices(indices, size, rank, *, equal, shuffle_seed=None):
    """This rank's share of `indices` (sample indices, not samples).

    Every rank calls it with the same arguments but its own `rank`.
    `equal=True` (training): every rank gets ceil(n / size) indices, the last
    ones wrapping around to the start, because all ranks must run the same
    number of iterations. `equal=False` (evaluation): disjoint blocks that
    cover `indices` exactly once. `shuffle_seed`: permute first, identically
    on every rank. Training needs it: list files are usually sorted by
    class, and contiguous blocks would give each rank a few classes only, so
    its per-worker BN statistics would not describe the data.
    """
    indices = _shuffled(indices, size, shuffle_seed)
    n = len(indices)
    if equal:
        per = -(-n // size)
        return indices[(rank * per + numpy.arange(per)) % n]
    return indices[n * rank // size:n * (rank + 1) // size]


def scatter_worker_shards(indices, size, first, count, shuffle_seed=None):
    """``[scatter_indices(indices, size, w, equal=True, shuffle_seed=...)`` for
    ``w`` in ``first .. first + count - 1]``, permuting `indices` once.

    A rank's virtual workers (``count = k`` consecutive workers of ``size =
    ranks * k``): one permutation of the whole index, not k of them.
    """
    indices = _shuffled(indices, size, shuffle_seed)
    n = len(indices)
    per = -(-n // size)
    return [indices[(w * per + numpy.arange(per)) % n] for w in range(first, first + count)]


def _shuffled(indices, size, shuffle_seed):
    indices = numpy.asarray(indices)
    if shuffle_seed is not None:
        indices = numpy.random.default_rng([shuffle_seed, 11]).permutation(indices)
    if len(indices) < size:
        raise CommunicationError(
            '{} samples cannot be split over {} ranks: use fewer ranks or more '
            'data'.format(len(indices), size))
    return indices


class EpochOrderSampler(object):
    """Chainer order sampler that writes the epoch into the indices.

    Use it as ``order_sampler=`` of ``SerialIterator`` or
    ``MultiprocessIterator`` over an :class:`AugmentedDataset`. The order
    it returns for an epoch is ``perm + tag * size``: positions ``perm`` (a
    permutation of ``range(size)``, or ``range(size)`` itself when
    ``shuffle`` is false) offset by ``tag`` blocks of ``size``.
    :class:`AugmentedDataset` splits an index back with
    ``tag, pos = divmod(index, size)`` and seeds the sample's augmentation
    with ``tag``.

    Chainer calls the sampler once when the iterator is built, with
    ``numpy.arange(size)`` (tag 0's block), and at each epoch end with the
    order just finished; the tag returned is ``current_order.max() // size
    + 1``. Iterator epoch ``e`` (0-based) thus reads block ``tag = e + 1``,
    tag 0 is left to direct indexing (evaluation), and
    ``perm = numpy.random.default_rng([seed, tag]).permutation(size)``.

    The sampler keeps no state: the epoch lives in the order the iterator
    serialises, so an iterator loaded from a snapshot continues with exactly
    the orders (and augmentations) of an uninterrupted run.

    The indices reach past ``len(dataset)``, so only a dataset that splits
    them, like :class:`AugmentedDataset`, can be iterated with it. Leave
    the iterator's ``shuffle`` at ``None``: Chainer refuses ``shuffle``
    together with an ``order_sampler``.

    Args:
        size (int): length of the dataset iterated (the local one, in
            multi-process training).
        seed (int): non-negative seed of the epoch permutations.
        shuffle (bool): permute within each epoch.
    """

    def __init__(self, size, seed, shuffle=True):
        self.size = check_size('size', size)
        if int(seed) != seed or seed < 0:
            raise ValueError(
                'seed must be a non-negative integer, got {!r}'.format(seed))
        self.seed = int(seed)
        self.shuffle = bool(shuffle)

    def __call__(self, current_order, current_position):
        """Return the order of the next epoch (see the class docstring)."""
        current_order = numpy.asarray(current_order)
        if len(current_order) != self.size:
            raise ValueError(
                'EpochOrderSampler(size={}) was given an order of length {}; '
                'build it with size=len(dataset) of the dataset the iterator '
                'reads'.format(self.size, len(current_order)))
        tag = int(current_order.max()) // self.size + 1
        if self.shuffle:
            perm = numpy.random.default_rng([self.seed, tag]).permutation(
                self.size)
        else:
            perm = numpy.arange(self.size)
        return perm.astype(numpy.int64) + numpy.int64(tag) * self.size


# Read errors that say nothing about the image: the process is out of file
# descriptors or memory, or a network filesystem failed under it.
SYSTEM_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ESTALE,
                           errno.ETIMEDOUT, errno.EHOSTDOWN, errno.EHOSTUNREACH})


@dataclasses.dataclass(frozen=True)
class BadSample:
    """A sample that could not be read or transformed, in place of the sample.

    Small and picklable, so a loader process returns it like any sample.
    It is not a tuple, so Chainer's converters do not take it for an
    ``(image, label)`` pair: pass batches through
    :class:`~chainer_resnet.data.loader.BadSampleGuard`.

    Attributes:
        index (int): the global index in the base dataset.
        path (str or None): the image file, if the base dataset has ``paths``.
        error (str): ``'ExceptionType: message'`` of the underlying error.
        system (bool): the error is the machine's, not the image's (out of
            file descriptors or memory, a stale or timed-out network file
            system: :data:`SYSTEM_ERRNOS`); no image may be skipped for it.
    """

    index: int
    path: Optional[str]
    error: str
    system: bool = False

    @classmethod
    def from_exception(cls, base, index, exc):
        """The BadSample for ``exc``, raised reading ``base[index]``."""
        # read_image wraps the decoder's error in a DatasetError whose text
        # repeats the path and advice; the guard adds its own advice.
        cause = exc.__cause__ if isinstance(exc, DatasetError) and exc.__cause__ else exc
        paths = getattr(base, 'paths', None)
        return cls(index=int(index), path=None if paths is None else paths[index],
                   error='{}: {}'.format(type(cause).__name__, cause),
                   system=getattr(cause, 'errno', None) in SYSTEM_ERRNOS)

    def describe(self):
        """``'path: error'``, or ``'sample index: error'`` without a path."""
        return '{}: {}'.format(
            self.path if self.path is not None else 'sample {}'.format(self.index), self.error)


class AugmentedDataset(chainer.dataset.DatasetMixin):
    """Apply a transform with a generator seeded by (seed, tag, global index).

    ``get_example(i)`` splits ``tag, pos = divmod(i, len(self))``, takes the
    global index ``g = indices[pos]`` and returns
    ``(transform(image, numpy.random.default_rng([seed, tag, g])), label)``
    for ``(image, label) = base[g]``. Indices below ``len(self)`` have tag
    0 (direct access, evaluation); :class:`EpochOrderSampler` supplies tags
    1, 2, ... for training epochs.

    Because the generator depends only on (seed, tag, g), never on the
    process, loader worker or rank that loads the sample, workers cannot
    repeat each other's random streams (as they can when each forked
    worker inherits a copy of one global generator), and a rank owning a
    subset of the data sees exactly what a single process sees for the
    same global indices. The object pickles (for forkserver workers) if
    ``base`` and ``transform`` do.

    A sample whose reading or transform raises an ``Exception`` is
    returned as a :class:`BadSample` instead: a loader process that raises
    is never replaced, and Chainer's ``MultiprocessIterator`` then waits
    for it forever ("Stalled dataset is detected") on every rank.

    Args:
        base: dataset of ``(image, label)`` pairs, e.g.
            :class:`~chainer_resnet.data.layouts.ListDataset`.
        transform (callable): ``transform(image, rng)``, e.g.
            :class:`~chainer_resnet.data.transforms.TrainTransform`.
        seed (int): non-negative seed shared by all processes.
        indices (sequence of int or None): the global indices of ``base``
            this process owns, in local order; default all of ``base``.
    """

    def __init__(self, base, transform, seed, indices=None):
        if int(seed) != seed or seed < 0:
            raise ValueError(
                'seed must be a non-negative integer, got {!r}'.format(seed))
        if indices is None:
            indices = numpy.arange(len(base), dtype=numpy.int64)
        else:
            indices = numpy.asarray(indices)
            if indices.ndim != 1 or len(indices) == 0 or not numpy.issubdtype(
                    indices.dtype, numpy.integer):
                raise ValueError(
                    'indices must be a non-empty 1-D sequence of integers, '
                    'got {}'.format(describe(indices)))
            indices = indices.astype(numpy.int64)
            if indices.min() < 0 or indices.max() >= len(base):
                raise ValueError(
                    'indices must lie in [0, len(base)) = [0, {}), got '
                    'values from {} to {}'.format(
                        len(base), indices.min(), indices.max()))
        self.base = base
        self.transform = transform
        self.seed = int(seed)
        self.indices = indices

    def __len__(self):
        return len(self.indices)

    def get_example(self, i):
        """Return ``(transformed image, int32 label)`` for index ``i``, or a
        :class:`BadSample` if reading or transforming it raises."""
        if i < 0:
            raise IndexError(
                'AugmentedDataset index must be non-negative, got {}'
                .format(i))
        tag, pos = divmod(int(i), len(self.indices))
        g = int(self.indices[pos])
        try:
            image, label = self.base[g]
            rng = numpy.random.default_rng([self.seed, tag, g])
            return self.transform(image, rng), numpy.int32(label)
        except Exception as exc:
            return BadSample.from_exception(self.base, g, exc)


class VirtualWorkerStream(chainer.dataset.DatasetMixin):
    """The k virtual workers of one rank as one dataset, read in micro-batches.

    ``workers`` are k :class:`AugmentedDataset` of the same length ``L``
    (virtual worker ``j``'s shard, ``scatter_indices(ids, ranks * k, rank * k + j,
    equal=True, ...)``). Iterated with batch size ``k * batch`` and
    ``order_sampler=`` :class:`StreamOrderSampler` ``(len(stream))``, batch
    ``i`` holds, in ``k`` consecutive slices of ``batch``, exactly the batch
    ``i`` that an iterator of batch size ``batch`` with
    ``EpochOrderSampler(L, seed)`` over worker ``j``'s dataset would give:
    the same samples, the same epoch tags, so the same augmentation. That is
    what a run with ``ranks * k`` ranks and one worker each reads on rank
    ``rank * k + j``, epoch boundaries included (Chainer's iterators finish
    an epoch's order and continue with the next inside one batch; here each
    worker's stream continues on its own).

    Index ``q`` of the stream (``q = i - len(self)`` for the indices the
    sampler hands out, block 1 onwards; ``q = i`` for direct access below
    ``len(self)``) is micro-batch ``j = (q mod k*batch) // batch`` of
    iteration ``q // (k*batch)``; that worker's position in its own stream
    is ``p = iteration * batch + q mod batch``, which lies in its epoch
    ``e = p // L`` (tag ``e + 1``) at ``p mod L`` of that epoch's
    permutation. Epoch ``s`` of the stream (``k * L`` samples) is epoch ``s``
    of every worker, so the trainer's epoch counter is right.

    Stateless apart from a cache of the last two permutations: the iterator's
    serialised position and order resume it exactly.

    Args:
        workers (list of AugmentedDataset): the rank's virtual workers, in order.
        batch (int): images per micro-batch (the recipe's batch_per_worker).
        seed (int): the epoch permutations' seed (``EpochOrderSampler``'s).
    """

    def __init__(self, workers, batch, seed):
        workers = list(workers)
        if not workers:
            raise ValueError('VirtualWorkerStream needs at least one worker')
        lengths = {len(w) for w in workers}
        if len(lengths) != 1:
            raise ValueError('virtual workers must hold equally many samples, got {}'.format(
                sorted(lengths)))
        self.workers = workers
        self.k = len(workers)
        self.batch = check_size('batch', batch)
        self.shard = lengths.pop()
        self.sampler = EpochOrderSampler(self.shard, seed)
        self._orders = {}

    def __len__(self):
        return self.k * self.shard

    def locate(self, i):
        """``(worker j, index into that worker's AugmentedDataset)`` of stream index ``i``."""
        i = int(i)
        if i < 0:
            raise IndexError('VirtualWorkerStream index must be non-negative, got {}'.format(i))
        q = i - len(self) if i >= len(self) else i
        iteration, within = divmod(q, self.k * self.batch)
        j, t = divmod(within, self.batch)
        epoch, pos = divmod(iteration * self.batch + t, self.shard)
        return j, int(self._order(epoch + 1)[pos])

    def _order(self, tag):
        order = self._orders.get(tag)
        if order is None:
            # The order EpochOrderSampler gives after an epoch with tag - 1.
            previous = numpy.full(self.shard, (tag - 1) * self.shard, dtype=numpy.int64)
            order = self.sampler(previous, 0)
            self._orders = {t: o for t, o in self._orders.items() if t >= tag - 1}
            self._orders[tag] = order
        return order

    def get_example(self, i):
        """Sample ``i`` of the stream: that worker's sample (or BadSample)."""
        j, index = self.locate(i)
        return self.workers[j][index]


class StreamOrderSampler(object):
    """Order sampler of a :class:`VirtualWorkerStream`: the stream in order.

    Epoch ``s`` reads indices ``(s + 1) * size ... (s + 2) * size - 1``, stream
    positions ``s * size ...``; the shuffling is the workers' own, inside
    the stream. Stateless, like :class:`EpochOrderSampler`.
    """

    def __init__(self, size):
        self.size = check_size('size', size)

    def __call__(self, current_order, current_position):
        current_order = numpy.asarray(current_order)
        if len(current_order) != self.size:
            raise ValueError('StreamOrderSampler(size={}) was given an order of length {}'
                             .format(self.size, len(current_order)))
        block = int(current_order.max()) // self.size + 1
        return numpy.arange(self.size, dtype=numpy.int64) + numpy.int64(block) * self.size
