"""Tests for chainer_resnet.data.loader: iterators, BadSampleGuard, check_images.

The image trees are real JPEG files written with PIL; the bad ones are a
zero-byte file and a JPEG cut in half, read through Chainer's own
iterators, with and without loader processes.
"""

import contextlib
import signal

import types

import numpy
import pytest
from PIL import Image

import chainer

from chainer_resnet.data import layouts, loader, sampling, transforms, workers

TRANSFORM = transforms.ValTransform(8, transforms.IMAGENET_MEAN, transforms.IMAGENET_STD)
ZERO_BYTE, TRUNCATED = 'zero-byte', 'truncated'


def jpeg_tree(tmp_path, n, bad):
    """A list dataset of `n` 16x16 JPEG files, label = index; ``bad`` maps
    indices to ZERO_BYTE or TRUNCATED."""
    rng = numpy.random.default_rng(0)
    lines = []
    for i in range(n):
        path = tmp_path / '{}.jpg'.format(i)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=numpy.uint8)).save(
            str(path), quality=90)
        if bad.get(i) == ZERO_BYTE:
            path.write_bytes(b'')
        elif bad.get(i) == TRUNCATED:
            path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
        lines.append('{}.jpg {}\n'.format(i, i))
    (tmp_path / 'list.txt').write_text(''.join(lines))
    return layouts.ListDataset(str(tmp_path / 'list.txt'), str(tmp_path))


class DeadlineExceeded(AssertionError):
    pass


@contextlib.contextmanager
def iterate(kind, dataset, batch_size, seconds=60):
    """A repeating, unshuffled iterator over `dataset` that must not take
    more than `seconds` in all (a hung loader fails the test instead of
    hanging it), finalized at the end."""
    def expire(signum, frame):
        raise DeadlineExceeded('{} iterator still waiting after {} s'.format(kind, seconds))

    sampler = sampling.EpochOrderSampler(len(dataset), seed=0, shuffle=False)
    if kind == 'serial':
        it = chainer.iterators.SerialIterator(dataset, batch_size, order_sampler=sampler)
    else:
        it = chainer.iterators.MultiprocessIterator(
            dataset, batch_size, order_sampler=sampler, n_processes=1)
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield it
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        it.finalize()


def labels(converted):
    return converted[1].tolist()


def keep(image, rng):
    return image


# ---------------------------------------------------------------------------
# Bad images through Chainer's iterators

@pytest.mark.parametrize('kind', ['serial', 'multiprocess'])
@pytest.mark.parametrize('damage', [ZERO_BYTE, TRUNCATED])
def test_a_bad_image_reaches_the_guard_as_data_and_stops_the_run(tmp_path, kind, damage):
    # batch 0 (indices 0, 1) is good; MultiprocessIterator loads it in the
    # main process to size its shared memory, so the bad index 3 is read by
    # the loader process.
    base = jpeg_tree(tmp_path, 6, {3: damage})
    guard = loader.BadSampleGuard()
    with iterate(kind, sampling.AugmentedDataset(base, TRANSFORM, seed=0), 2) as it:
        assert labels(guard(next(it))) == [0, 1]
        batch = next(it)
        assert isinstance(batch[1], sampling.BadSample)
        assert batch[1].index == 3 and batch[1].path == base.paths[3]
        with pytest.raises(layouts.DatasetError) as info:
            guard(batch)
        assert labels(guard(next(it))) == [4, 5]  # the loader process lives on
    message = str(info.value)
    error = 'UnidentifiedImageError: cannot identify' if damage == ZERO_BYTE else 'OSError: '
    assert message.startswith('unreadable image {}: {}'.format(base.paths[3], error))
    assert 'That makes 1 bad image(s) so far in this process, more than the 0 allowed.' in message
    assert 'remove it from the dataset' in message and '--skip-bad-images N' in message
    assert '\n' not in message
    assert guard.count == 1


def test_without_augmented_dataset_a_bad_image_raises_in_the_loader(tmp_path):
    # Negative control: the base dataset raises, which in a loader process
    # is what left MultiprocessIterator waiting forever.
    base = jpeg_tree(tmp_path, 4, {1: TRUNCATED})
    it = chainer.iterators.SerialIterator(base, 2, shuffle=False)
    with pytest.raises(layouts.DatasetError, match='cannot read image'):
        next(it)


def test_skip_mode_replaces_a_bad_sample_by_the_next_good_one(tmp_path):
    base = jpeg_tree(tmp_path, 6, {1: ZERO_BYTE, 5: TRUNCATED})
    dataset = sampling.AugmentedDataset(base, TRANSFORM, seed=0)
    guard = loader.BadSampleGuard(max_bad=1)
    with iterate('multiprocess', dataset, 3) as it:
        x, t = guard(next(it))
        assert x.shape == (3, 3, 8, 8) and t.tolist() == [0, 2, 2]
        numpy.testing.assert_array_equal(x[1], dataset[2][0])
        assert guard.count == 1
        assert guard.first_bad == [(base.paths[1], dataset[1].error)]
        with pytest.raises(layouts.DatasetError) as info:
            guard(next(it))
    message = str(info.value)
    assert message.startswith('unreadable image {}: OSError'.format(base.paths[5]))
    assert 'makes 2 bad image(s) so far in this process (earlier: {}), more than the 1 ' \
        'allowed'.format(base.paths[1]) in message
    assert guard.count == 2


def test_drop_mode_reads_each_good_image_once(tmp_path):
    base = jpeg_tree(tmp_path, 6, {2: ZERO_BYTE, 3: TRUNCATED})
    val = chainer.iterators.SerialIterator(
        sampling.AugmentedDataset(base, TRANSFORM, seed=0), 3, repeat=False, shuffle=False)
    guard = loader.BadSampleGuard(max_bad=2, mode='drop')
    assert [labels(guard(batch)) for batch in val] == [[0, 1], [4, 5]]
    assert guard.count == 2
    # negative control: one bad image fewer allowed
    val.reset()
    strict = loader.BadSampleGuard(max_bad=1, mode='drop')
    with pytest.raises(layouts.DatasetError, match='makes 2 bad image'):
        [strict(batch) for batch in val]


# ---------------------------------------------------------------------------
# BadSampleGuard on hand-made batches

def good(label):
    return numpy.full(2, label, dtype=numpy.float32), numpy.int32(label)


def bad(index):
    return sampling.BadSample(index=index, path='/data/{}.jpg'.format(index), error='OSError: x')


def test_replacement_is_the_next_good_sample_cyclically():
    guard = loader.BadSampleGuard(max_bad=10)
    x, t = guard([bad(0), good(1), bad(2), bad(3), good(4), bad(5)])
    assert t.tolist() == [1, 1, 4, 4, 4, 1]
    assert x[:, 0].tolist() == [1, 1, 4, 4, 4, 1]
    assert guard.count == 4
    # a clean batch passes unchanged and counts nothing
    assert labels(guard([good(7), good(8)])) == [7, 8] and guard.count == 4


def test_first_bad_keeps_the_first_five():
    guard = loader.BadSampleGuard(max_bad=100, mode='drop')
    for i in range(4):
        guard([bad(2 * i), bad(2 * i + 1), good(9)])
    assert guard.count == 8
    assert guard.first_bad == [('/data/{}.jpg'.format(i), 'OSError: x') for i in range(5)]


def test_a_batch_without_any_good_sample_raises():
    for mode in ('replace', 'drop'):
        guard = loader.BadSampleGuard(max_bad=5, mode=mode)
        with pytest.raises(layouts.DatasetError) as info:
            guard([bad(0), bad(1)])
        assert str(info.value).startswith(
            'all 2 samples of a batch are unreadable (/data/0.jpg: OSError: x; '
            '/data/1.jpg: OSError: x)')


def test_too_many_in_one_batch_lists_the_first_few():
    guard = loader.BadSampleGuard(max_bad=3)
    with pytest.raises(layouts.DatasetError) as info:
        guard([bad(i) for i in range(7)] + [good(1)])
    message = str(info.value)
    assert message.startswith('unreadable images /data/0.jpg: OSError: x; ')
    assert '/data/4.jpg: OSError: x; and 2 more. That makes 7 bad image(s) so far in this ' \
        'process, more than the 3 allowed.' in message


def test_a_sample_without_a_path_is_named_by_its_index():
    guard = loader.BadSampleGuard()
    with pytest.raises(layouts.DatasetError, match='unreadable image sample 12: KeyError: 3'):
        guard([good(0), sampling.BadSample(index=12, path=None, error='KeyError: 3')])
    assert guard.first_bad == [('sample 12', 'KeyError: 3')]


def test_guard_reports_the_count_inside_a_reporter_scope():
    guard = loader.BadSampleGuard(max_bad=5, report_key='validation/data/bad_images')
    guard([good(0), bad(1)])                    # outside a scope: nothing to report to
    observation = {}
    with chainer.reporter.Reporter().scope(observation):
        guard([bad(2), good(3)])
    assert observation == {'validation/data/bad_images': 2}


def test_guard_is_a_chainer_converter_for_any_device_argument():
    batch = [good(0), bad(1), good(2)]
    # as Chainer's updaters and evaluators call a converter
    x, t = chainer.dataset.convert._call_converter(
        loader.BadSampleGuard(max_bad=1), batch, chainer.get_device('@numpy'))
    assert isinstance(x, numpy.ndarray) and t.tolist() == [0, 2, 2]
    for device in (None, -1):                   # and as old-style code does
        assert labels(loader.BadSampleGuard(max_bad=1)(batch, device)) == [0, 2, 2]


def test_guard_passes_batches_to_its_converter():
    seen = []

    def converter(batch, device):
        seen.append((batch, device))
        return len(batch)

    assert loader.BadSampleGuard(max_bad=1, converter=converter, mode='drop')(
        [good(0), bad(1)]) == 1
    assert len(seen[0][0]) == 1 and seen[0][1] is None


@pytest.mark.parametrize('kwargs, message', [
    ({'max_bad': -1}, 'max_bad'), ({'max_bad': 1.5}, 'max_bad'), ({'mode': 'skip'}, 'mode')])
def test_guard_checks_its_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        loader.BadSampleGuard(**kwargs)


# ---------------------------------------------------------------------------
# check_images

def test_check_images_finds_exactly_the_bad_files(tmp_path):
    base = jpeg_tree(tmp_path, 7, {2: ZERO_BYTE, 5: TRUNCATED})
    calls = []
    failed = loader.check_images(base, numpy.arange(7), progress=lambda *a: calls.append(a),
                                 every=3)
    assert [(i, p) for i, p, _ in failed] == [(2, base.paths[2]), (5, base.paths[5])]
    assert failed[0][2].startswith('UnidentifiedImageError: cannot identify image file')
    assert failed[1][2].startswith('OSError: ')
    assert calls == [(3, 7), (6, 7), (7, 7)]
    # a shard without them, in its own order
    assert loader.check_images(base, [6, 0, 4, 1]) == []
    assert [i for i, _, _ in loader.check_images(base, numpy.array([5, 0, 2]))] == [5, 2]


# ---------------------------------------------------------------------------
# iterators: what the trainer builds

@pytest.mark.parametrize('loaderjobs, kind', [
    (0, chainer.iterators.SerialIterator), (1, workers.LoaderIterator)])
def test_iterators_are_the_trainers(loaderjobs, kind):
    base = [good(i) for i in range(5)]
    train_set = sampling.AugmentedDataset(base, keep, seed=0)
    val_set = sampling.AugmentedDataset(base, keep, seed=0, indices=[4, 1, 3])
    sampler = sampling.EpochOrderSampler(5, seed=2)
    train, val = loader.iterators(train_set, val_set, 2, sampler, loaderjobs)
    try:
        assert type(train) is kind and type(val) is kind
        assert train.batch_size == val.batch_size == 2
        assert train.order_sampler is sampler
        # training repeats in the sampler's order; validation reads once, in order
        seen = [int(y) for _ in range(5) for _, y in next(train)]
        order = sampler(numpy.arange(5), 0)
        expected = numpy.concatenate([order, sampler(order, 5)]) % 5
        assert seen == expected.tolist()
        assert [[int(y) for _, y in batch] for batch in val] == [[4, 1], [3]]
        assert val.epoch == 1
    finally:
        train.finalize()
        val.finalize()


def test_an_image_read_again_in_a_later_epoch_is_counted_once():
    guard = loader.BadSampleGuard(max_bad=1)
    for epoch in range(3):                       # the same bad image, every epoch
        assert labels(guard([bad(4), good(1)])) == [1, 1]
    assert guard.count == 1 and guard.first_bad == [('/data/4.jpg', 'OSError: x')]
    with pytest.raises(layouts.DatasetError, match='2 bad image'):
        guard([bad(5), good(1)])                 # a second image exceeds the allowance


# ---------------------------------------------------------------------------
# PILImages and Normalize: uint8 through the iterator, normalised on the device

MEAN, STD = transforms.IMAGENET_MEAN, transforms.IMAGENET_STD


def test_pil_images_are_the_layouts_images_decoded(tmp_path):
    base = jpeg_tree(tmp_path, 3, {1: TRUNCATED})
    images = loader.PILImages(base)
    assert len(images) == 3 and images.paths == base.paths
    image, label = images[2]
    assert label == 2 and label.dtype == numpy.int32 and image.mode == 'RGB'
    numpy.testing.assert_array_equal(numpy.asarray(image), base[2][0])
    with pytest.raises(layouts.DatasetError, match='cannot read image .*1.jpg'):
        images[1]
    bad_sample = sampling.AugmentedDataset(images, TRANSFORM, seed=0)[1]
    assert bad_sample == sampling.AugmentedDataset(base, TRANSFORM, seed=0)[1]
    assert bad_sample.path == base.paths[1]


@pytest.mark.parametrize('kind', ['serial', 'multiprocess'])
def test_uint8_batches_normalised_by_the_converter_equal_float32_batches(tmp_path, kind):
    # The trainer's two data paths: float32 transforms on RGB arrays with
    # concat_examples, and uint8 transforms on PIL images with Normalize
    # behind the guard. Same augmentation, same bits.
    base = jpeg_tree(tmp_path, 8, {5: ZERO_BYTE})
    float_tf = transforms.TrainTransform(8, MEAN, STD)
    uint8_tf = transforms.TrainTransform(8, MEAN, STD, normalize=False)
    as_float = sampling.AugmentedDataset(base, float_tf, seed=3)
    as_uint8 = sampling.AugmentedDataset(loader.PILImages(base), uint8_tf, seed=3)
    guard_float = loader.BadSampleGuard(max_bad=1)
    guard_uint8 = loader.BadSampleGuard(max_bad=1, converter=loader.Normalize(MEAN, STD))
    with iterate(kind, as_float, 4) as it_float, iterate(kind, as_uint8, 4) as it_uint8:
        for _ in range(4):                       # two epochs, a bad image in each
            batch = next(it_uint8)
            assert batch[0][0].dtype == numpy.uint8
            x, t = guard_uint8(batch, chainer.get_device('@numpy'))
            x_float, t_float = guard_float(next(it_float))
            assert x.dtype == numpy.float32 and x.shape == (4, 3, 8, 8)
            numpy.testing.assert_array_equal(x, x_float)
            numpy.testing.assert_array_equal(t, t_float)
    assert guard_uint8.count == guard_float.count == 1


def test_normalize_table_is_the_formula_for_every_pixel_value():
    table = loader.Normalize(MEAN, STD).table
    values = numpy.arange(256, dtype=numpy.float32)
    for c in range(3):
        expected = (values / numpy.float32(255) - numpy.float32(MEAN[c])) / numpy.float32(STD[c])
        numpy.testing.assert_array_equal(table[c], expected)
    assert table.dtype == numpy.float32


def test_normalize_is_a_converter_for_any_device_argument_and_keeps_labels():
    rng = numpy.random.default_rng(0)
    batch = [(rng.integers(0, 256, (3, 4, 5), dtype=numpy.uint8), numpy.int32(i))
             for i in range(3)]
    expected = transforms.normalize(numpy.stack([x for x, _ in batch]), MEAN, STD)
    normalize = loader.Normalize(MEAN, STD)
    # as Chainer's updaters and evaluators call a converter, and as old-style code does
    for x, t in [chainer.dataset.convert._call_converter(
            normalize, batch, chainer.get_device('@numpy')),
                 normalize(batch), normalize(batch, -1)]:
        numpy.testing.assert_array_equal(x, expected)
        assert t.tolist() == [0, 1, 2]
    # the images alone (a converter that returns one array)
    x = loader.Normalize(MEAN, STD, converter=lambda b, d: numpy.stack([i for i, _ in b]))(batch)
    numpy.testing.assert_array_equal(x, expected)


def test_normalize_refuses_images_that_are_not_uint8_chw():
    normalize = loader.Normalize(MEAN, STD)
    twice = [(TRANSFORM(numpy.zeros((9, 9, 3), numpy.uint8)), numpy.int32(0))]
    with pytest.raises(ValueError, match='normalize=False'):
        normalize(twice)
    with pytest.raises(ValueError, match=r'\(N, 3, H, W\), got uint8 \(1, 9, 9, 3\)'):
        normalize([(numpy.zeros((9, 9, 3), numpy.uint8), numpy.int32(0))])
    with pytest.raises(ValueError, match='Divide 0-255'):
        loader.Normalize((124, 117, 104), STD)


@pytest.mark.gpu
def test_normalize_on_the_gpu_equals_numpy_bit_for_bit():
    import cupy
    rng = numpy.random.default_rng(1)
    batch = [(rng.integers(0, 256, (3, 7, 5), dtype=numpy.uint8), numpy.int32(i))
             for i in range(4)]
    normalize = loader.Normalize(MEAN, STD)
    x_cpu, t_cpu = normalize(batch, chainer.get_device('@numpy'))
    x, t = normalize(batch, chainer.get_device('@cupy:0'))
    assert isinstance(x, cupy.ndarray) and x.dtype == numpy.float32
    numpy.testing.assert_array_equal(cupy.asnumpy(x), x_cpu)
    numpy.testing.assert_array_equal(cupy.asnumpy(t), t_cpu)
    # every pixel value in every channel
    every = numpy.broadcast_to(numpy.arange(256, dtype=numpy.uint8), (1, 3, 4, 256))
    numpy.testing.assert_array_equal(
        cupy.asnumpy(normalize.normalize(cupy.asarray(every))), normalize.normalize(every))


def test_a_read_that_failed_for_the_machines_reason_is_not_skipped_as_a_bad_image(tmp_path):
    import errno
    from chainer_resnet.data.layouts import read_image

    class OutOfDescriptors:
        paths = ['/data/7.jpg']

        def __getitem__(self, index):
            try:
                raise OSError(errno.EMFILE, 'Too many open files')
            except OSError as exc:
                raise layouts.DatasetError('cannot read image') from exc
    sample = sampling.BadSample.from_exception(OutOfDescriptors(), 0, _raised(
        OutOfDescriptors(), 0))
    assert sample.system and 'Too many open files' in sample.error
    guard = loader.BadSampleGuard(max_bad=10)      # however many may be skipped
    with pytest.raises(layouts.DatasetError) as info:
        guard([good(0), sample])
    assert str(info.value).startswith('reading /data/7.jpg failed with a system error (OSError: '
                                      '[Errno 24] Too many open files), not a damaged image')
    # Negative control: a damaged file is the image's fault, and may be skipped.
    (tmp_path / 'half.jpg').write_bytes(b'\xff\xd8\xff\xe0' + b'\0' * 20)
    damaged = sampling.BadSample.from_exception(
        types.SimpleNamespace(paths=[str(tmp_path / 'half.jpg')]), 0,
        _raised(lambda: read_image(str(tmp_path / 'half.jpg'))))
    assert not damaged.system
    assert labels(guard([good(0), damaged])) == [0, 0]


def _raised(dataset, index=None):
    try:
        dataset[index] if index is not None else dataset()
    except Exception as exc:
        return exc
    raise AssertionError('nothing raised')
