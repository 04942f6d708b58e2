"""Getting batches to the model: iterators, bad images, a preflight read.

- :func:`iterators`: the training and validation iterators the trainer
  uses, in loader processes or in the main process;
- :class:`BadSampleGuard`: a converter that takes the
  :class:`~chainer_resnet.data.sampling.BadSample` entries out of a batch,
  counts them, and stops the run with a :class:`DatasetError` naming the
  files once there are more than it may skip;
- :func:`check_images`: read every image of a shard once, before training,
  and list those that fail.

Bad images travel as data: :class:`~chainer_resnet.data.sampling.AugmentedDataset`
returns a ``BadSample`` instead of raising, so a loader process never dies
(Chainer's ``MultiprocessIterator`` waits forever for a dead one), and the
decision is taken here, in the main process, the same way whether the
samples were loaded in loader processes or not.
"""

import bisect

import chainer
from chainer.dataset import convert

from chainer_resnet.data.layouts import DatasetError
from chainer_resnet.data.sampling import BadSample

# How many bad images a message or BadSampleGuard.first_bad keeps.
_MAX_REPORTED = 5


def iterators(train_set, val_set, batch, sampler, loaderjobs):
    """The trainer's ``(train, val)`` iterators over this rank's samples.

    Training repeats in the epoch order of ``sampler`` (an
    :class:`~chainer_resnet.data.sampling.EpochOrderSampler`); validation
    reads ``val_set`` once in order. With ``loaderjobs > 0`` both are
    ``MultiprocessIterator`` with that many loader processes, otherwise
    ``SerialIterator`` (loading in the main process).
    """
    if loaderjobs > 0:
        train = chainer.iterators.MultiprocessIterator(
            train_set, batch, n_processes=loaderjobs, order_sampler=sampler)
        val = chainer.iterators.MultiprocessIterator(
            val_set, batch, repeat=False, shuffle=False, n_processes=loaderjobs)
    else:
        train = chainer.iterators.SerialIterator(train_set, batch, order_sampler=sampler)
        val = chainer.iterators.SerialIterator(val_set, batch, repeat=False, shuffle=False)
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
            or when a batch holds no good sample to replace the bad ones.
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
