"""Getting batches to the model: iterators, bad images, a preflight read.

- :func:`iterators`: the training and validation iterators the trainer
  uses, in loader processes or in the main process;
- :class:`BadSampleGuard`: a converter that takes the
  :class:`~chainer_resnet.data.sampling.BadSample` entries out of a batch,
  counts them, and stops the run with a :class:`DatasetError` naming the
  files once there are more than it may skip;
- :func:`check_images`: read every image of a shard once, before training,
  and list those that fail;
- :class:`PILImages`: a layout dataset's images as decoded PIL images, so
  that the transforms crop before anything is converted to an array;
- :class:`Normalize`: a converter that normalises a batch of ``uint8``
  images on the device (transforms built with ``normalize=False``), so
  loader processes send a quarter of the bytes and skip the float math.

The trainer's data path, put together::

    train_tf, val_tf = transforms.from_recipe(recipe, normalize=False)
    train_set = AugmentedDataset(PILImages(train_base), train_tf, seed, indices)
    converter = BadSampleGuard(max_bad, converter=Normalize(recipe.mean, recipe.std),
                               mode='replace')

Bad images travel as data: :class:`~chainer_resnet.data.sampling.AugmentedDataset`
returns a ``BadSample`` instead of raising, so a loader process never dies
(Chainer's ``MultiprocessIterator`` waits forever for a dead one), and the
decision is taken here, in the main process, the same way whether the
samples were loaded in loader processes or not.
"""

import bisect

import numpy

import chainer
from chainer.dataset import convert

from chainer_resnet.data import transforms, workers
from chainer_resnet.data.layouts import DatasetError, read_image
from chainer_resnet.data.sampling import BadSample

# How many bad images a message or BadSampleGuard.first_bad keeps.
_MAX_REPORTED = 5


def iterators(train_set, val_set, batch, sampler, loaderjobs, val_batch=None):
    """The trainer's ``(train, val)`` iterators over this rank's samples.

    Training repeats in the epoch order of ``sampler`` (an
    :class:`~chainer_resnet.data.sampling.EpochOrderSampler`, or a
    ``StreamOrderSampler`` for virtual workers), ``batch`` samples at a
    time; validation reads ``val_set`` once in order, ``val_batch`` (default
    ``batch``) at a time. With ``loaderjobs > 0`` both are
    :class:`~chainer_resnet.data.workers.LoaderIterator` (Chainer's
    ``MultiprocessIterator``, whose dead loader process is an error, not a
    hang) with that many loader processes, otherwise ``SerialIterator``
    (loading in the main process).
    """
    val_batch = batch if val_batch is None else val_batch
    if loaderjobs > 0:
        train = workers.LoaderIterator(
            train_set, batch, what='training', n_processes=loaderjobs, order_sampler=sampler)
        val = workers.LoaderIterator(
            val_set, val_batch, what='validation', repeat=False, shuffle=False,
            n_processes=loaderjobs)
    else:
        train = chainer.iterators.SerialIterator(train_set, batch, order_sampler=sampler)
        val = chainer.iterators.SerialIterator(val_set, val_batch, repeat=False, shuffle=False)
    return train, val


class BadSampleGuard(chainer.dataset.Converter):
    """Converter that removes bad samples from a batch, counting them.

    Wrap the updater's (``mode='replace'``) and the evaluator's
    (``mode='drop'``) converter in one guard each. For each batch it takes
    out the :class:`~chainer_resnet.data.sampling.BadSample` entries and
    counts the distinct images among them in :attr:`count` (an image read
    again in a later epoch is not counted again). While ``count <= max_bad``:

    - ``'replace'`` (training): each bad sample is replaced by the next good
      sample of the same batch (cyclically), so the batch keeps its size and
      the run stays a function of the data: deterministic and resumable;
    - ``'drop'`` (evaluation): bad samples are left out, so every image
      is counted at most once.

    Then the batch goes through ``converter``, and the running count is
    reported as ``report_key`` (``chainer.report``: recorded inside a
    reporter scope, ignored outside).

    Args:
        max_bad (int): how many bad samples the run may skip (the trainer's
            ``--skip-bad-images``); 0 stops at the first.
        converter: the converter of the cleaned batch.
        mode (str): ``'replace'`` or ``'drop'``.
        report_key (str): the name the count is reported under.

    Attributes:
        count (int): distinct bad images seen so far (in this process).
        first_bad (list): ``(path, error)`` of the first few; ``path`` is
            ``'sample <index>'`` where the dataset has no paths.

    Raises:
        DatasetError: when ``count`` exceeds ``max_bad``, naming the files;
            when a batch holds no good sample to replace the bad ones; or at
            once when a read failed for the machine's reason, not the image's
            (``BadSample.system``: out of file descriptors, a stale NFS file).
    """

    def __init__(self, max_bad=0, converter=convert.concat_examples, mode='replace',
                 report_key='data/bad_images'):
        if int(max_bad) != max_bad or max_bad < 0:
            raise ValueError(
                'max_bad must be a non-negative integer, got {!r}'.format(max_bad))
        if mode not in ('replace', 'drop'):
            raise ValueError("mode must be 'replace' or 'drop', got {!r}".format(mode))
        self.max_bad = int(max_bad)
        self.converter = converter
        self.mode = mode
        self.report_key = report_key
        self.count = 0
        self.first_bad = []
        self._seen = set()

    def __call__(self, batch, device=None):
        """Return ``converter(cleaned batch, device)``; see the class docstring."""
        good = [k for k, sample in enumerate(batch) if not isinstance(sample, BadSample)]
        if len(good) < len(batch):
            bad = [sample for sample in batch if isinstance(sample, BadSample)]
            machine = [b for b in bad if b.system]
            if machine:
                raise DatasetError(
                    'reading {} failed with a system error ({}), not a damaged image: the '
                    'process is out of file descriptors (ulimit -n; fewer --loaderjobs) or '
                    'memory, or the filesystem holding the data failed (a stale or '
                    'unreachable network mount). --skip-bad-images does not skip it: fix the '
                    'cause and re-launch.'.format(_where(machine[0]), machine[0].error))
            # An image is counted once, however many epochs read it again.
            new = [b for b in bad if b.index not in self._seen]
            earlier = [path for path, _ in self.first_bad], self.count
            self._seen.update(b.index for b in new)
            self.count = len(self._seen)
            room = _MAX_REPORTED - len(self.first_bad)
            self.first_bad.extend((_where(b), b.error) for b in new[:max(room, 0)])
            if self.count > self.max_bad:
                raise DatasetError(self._too_many(new, *earlier))
            if not good:
                raise DatasetError(
                    'all {} samples of a batch are unreadable ({}), so none can take '
                    'their place. So many together usually mean a wrong image root or '
                    'a failing disk rather than a few corrupt files: check the files (the '
                    'trainer\'s --check-images reads them all).'
                    .format(len(batch), _describe(bad)))
            if self.mode == 'replace':
                batch = [batch[good[bisect.bisect(good, k) % len(good)]]
                         if isinstance(sample, BadSample) else sample
                         for k, sample in enumerate(batch)]
            else:
                batch = [batch[k] for k in good]
        chainer.report({self.report_key: self.count})
        if device is not None and not isinstance(device, chainer.backend.Device):
            device = chainer.get_device(device)  # an old-style caller's int
        return convert._call_converter(self.converter, batch, device)

    def _too_many(self, bad, earlier_paths, earlier_count):
        earlier = ''
        if earlier_count:
            earlier = ' (earlier: {}{})'.format(
                ', '.join(earlier_paths), ', ...' if earlier_count > len(earlier_paths) else '')
        return ('unreadable image{} {}. That makes {} bad image(s) so far in this process{}, '
                'more than the {} allowed. Replace the file or remove it from the dataset, or '
                'let the run skip up to N bad images with the trainer flag --skip-bad-images N.'
                .format('s' if len(bad) > 1 else '', _describe(bad), self.count, earlier,
                        self.max_bad))


def _where(bad):
    return bad.path if bad.path is not None else 'sample {}'.format(bad.index)


def _describe(bad):
    text = '; '.join(b.describe() for b in bad[:_MAX_REPORTED])
    if len(bad) > _MAX_REPORTED:
        text += '; and {} more'.format(len(bad) - _MAX_REPORTED)
    return text


def check_images(dataset, indices, progress=None, every=1000):
    """Read the images ``dataset[i]`` for ``i`` in ``indices`` once.

    For a preflight before training: each rank passes the base layout
    dataset (no transform) and its own shard of indices, so a corrupt file
    is found in minutes rather than when the run reaches it.

    Args:
        dataset: a layout dataset, e.g.
            :class:`~chainer_resnet.data.layouts.ListDataset`.
        indices (sequence of int): the global indices to read.
        progress (callable or None): called as ``progress(done, total)``
            after every ``every`` images and after the last.
        every (int): images between two ``progress`` calls.

    Returns:
        list of ``(index, path, error)`` for the images that fail, in the
        order of ``indices``; ``path`` is None where ``dataset`` has no
        ``paths``, ``error`` is ``'ExceptionType: message'``.
    """
    failed = []
    total = len(indices)
    for done, index in enumerate(indices, start=1):
        try:
            dataset[int(index)]
        except Exception as exc:
            bad = BadSample.from_exception(dataset, int(index), exc)
            failed.append((bad.index, bad.path, bad.error))
        if progress is not None and (done % every == 0 or done == total):
            progress(done, total)
    return failed


class PILImages(chainer.dataset.DatasetMixin):
    """A layout dataset read as ``(decoded PIL image, int32 label)`` pairs.

    The images of ``base`` (e.g.
    :class:`~chainer_resnet.data.layouts.ListDataset`), decoded but left in
    the file's own mode (``read_image(path, as_array=False)``), with the
    same errors for unreadable files. The transforms then crop, convert
    the crop to RGB and resize it in PIL, and only the output becomes an
    array: the same pixels as from ``base`` (whose images are whole RGB
    arrays), for less work. ``paths`` and ``labels`` are ``base``'s, so
    :class:`~chainer_resnet.data.sampling.BadSample` still names the file.
    """

    def __init__(self, base):
        self.base = base
        self.paths = base.paths
        self.labels = base.labels

    def __len__(self):
        return len(self.paths)

    def get_example(self, i):
        """``(PIL image, int32 label)`` of image ``i``; DatasetError if unreadable."""
        return read_image(self.paths[i], as_array=False), self.labels[i]


class Normalize(chainer.dataset.Converter):
    """Converter: a batch of ``uint8`` CHW images -> normalised ``float32`` on the device.

    ``converter`` (default ``concat_examples``) stacks the batch and sends
    it to ``device`` as ``uint8``; then the images (the first array of
    each example) become ``(x / 255 - mean) / std`` in one step: one
    elementwise kernel on a CuPy device, :func:`transforms.normalize
    <chainer_resnet.data.transforms.normalize>` (in place after the cast)
    with NumPy. Labels and any other arrays pass through.

    The result is bit-identical to the ``float32`` output of the same
    transforms built with ``normalize=True``: with NumPy it is the same
    function; the CuPy kernel looks each pixel up in a 3 x 256 table that
    function computed, so no device arithmetic can round differently.

    Wrap it in :class:`BadSampleGuard` (``BadSampleGuard(max_bad,
    converter=Normalize(mean, std), mode=...)``) when the dataset is an
    :class:`~chainer_resnet.data.sampling.AugmentedDataset`.

    Args:
        mean (tuple of float): per-channel RGB mean in [0, 1] units, the
            transforms' (the recipe's ``mean``).
        std (tuple of float): per-channel RGB std in [0, 1] units.
        converter: the converter that stacks and sends the batch.

    Raises:
        ValueError (when called): the images are not ``uint8`` of shape
        (N, 3, H, W), e.g. float32 from transforms built with
        ``normalize=True``, which would be normalised twice.
    """

    def __init__(self, mean, std, converter=convert.concat_examples):
        self.mean, self.std = transforms.check_mean_std(mean, std)
        self.converter = converter
        # table[c, v]: the normalised value of pixel value v in channel c.
        self.table = transforms.normalize(
            numpy.broadcast_to(numpy.arange(256, dtype=numpy.uint8), (3, 1, 256)),
            self.mean, self.std).reshape(3, 256)
        self._device_tables = {}

    def __call__(self, batch, device=None):
        """Return ``converter(batch, device)`` with its images normalised."""
        if device is not None and not isinstance(device, chainer.backend.Device):
            device = chainer.get_device(device)  # an old-style caller's int
        arrays = convert._call_converter(self.converter, batch, device)
        if isinstance(arrays, tuple):
            return (self.normalize(arrays[0]),) + tuple(arrays[1:])
        return self.normalize(arrays)

    def normalize(self, x):
        """Normalise a (N, 3, H, W) ``uint8`` NumPy or CuPy array: new ``float32``."""
        if (getattr(x, 'dtype', None) != numpy.uint8 or x.ndim != 4
                or x.shape[1] != 3):
            raise ValueError(
                'Normalize takes a batch of uint8 images of shape (N, 3, H, W), got {} {}. '
                'Build the transforms with normalize=False (transforms.from_recipe(recipe, '
                'normalize=False)): float32 transforms have normalised already.'.format(
                    getattr(x, 'dtype', type(x).__name__), getattr(x, 'shape', '')))
        device = chainer.backend.get_device_from_array(x)
        if device.xp is numpy:
            return transforms.normalize(x, self.mean, self.std)
        if isinstance(device, chainer.backend.GpuDevice):
            return self._normalize_cupy(x, device)
        raise TypeError('Normalize works on NumPy and CuPy arrays, got an array on {}; '
                        "use the '@numpy' or '@cupy:N' device".format(device))

    def _normalize_cupy(self, x, device):
        from chainer.backends import cuda
        table = self._device_tables.get(device.device.id)
        if table is None:
            table = self._device_tables[device.device.id] = device.send(self.table)
        y = cuda.cupy.empty(x.shape, dtype=numpy.float32)
        cuda.elementwise(
            'uint8 x, raw float32 table, int64 plane', 'float32 y',
            'y = table[(i / plane) % 3 * 256 + x]',
            'chainer_resnet_normalize_uint8')(x, table, x.shape[2] * x.shape[3], y)
        return y
