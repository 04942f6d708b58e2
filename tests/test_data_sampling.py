"""Tests for chainer_resnet.data.sampling: subsets, scattering, reproducible augmentation."""

import os
import pickle

import numpy
import pytest

import chainer

from chainer_resnet import communication
from chainer_resnet.data import layouts, sampling, transforms

MEAN = transforms.IMAGENET_MEAN
STD = transforms.IMAGENET_STD


# ---------------------------------------------------------------------------
# subset

@pytest.mark.parametrize('size', [None, 10, 11])
def test_subset_of_at_least_everything_is_everything(size):
    numpy.testing.assert_array_equal(sampling.subset(10, size, seed=3), numpy.arange(10))


def test_subset_is_a_fixed_sorted_sample_that_grows_by_inclusion():
    small = sampling.subset(1000, 50, seed=3)
    assert len(small) == 50 and len(set(small)) == 50
    assert (numpy.diff(small) > 0).all()                     # sorted, distinct
    assert small.min() >= 0 and small.max() < 1000
    assert small.max() - small.min() > 500                   # spread, not a block
    numpy.testing.assert_array_equal(sampling.subset(1000, 50, seed=3), small)
    assert set(small) <= set(sampling.subset(1000, 200, seed=3))
    # Negative control: another seed picks another subset.
    assert set(sampling.subset(1000, 50, seed=4)) != set(small)


# ---------------------------------------------------------------------------
# scatter_indices

@pytest.mark.parametrize('n,size', [(10, 1), (10, 2), (10, 3), (7, 4), (4000, 8)])
def test_scatter_indices_for_evaluation_cover_each_index_once(n, size):
    ids = numpy.arange(100, 100 + n)
    parts = [sampling.scatter_indices(ids, size, r, equal=False)
             for r in range(size)]
    numpy.testing.assert_array_equal(numpy.concatenate(parts), ids)


@pytest.mark.parametrize('n,size', [(10, 1), (10, 3), (7, 4), (4000, 8)])
def test_scatter_indices_for_training_are_equal_and_cover_everything(n, size):
    ids = numpy.arange(n)
    parts = [sampling.scatter_indices(ids, size, r, equal=True, shuffle_seed=0)
             for r in range(size)]
    assert len({len(p) for p in parts}) == 1
    assert len(parts[0]) == -(-n // size)
    assert set(numpy.concatenate(parts)) == set(ids)
    again = sampling.scatter_indices(ids, size, 0, equal=True, shuffle_seed=0)
    numpy.testing.assert_array_equal(again, parts[0])   # same on every rank


def test_training_shards_of_a_class_sorted_list_hold_every_class():
    labels = numpy.repeat(numpy.arange(10), 400)          # sorted, like list files
    ids = numpy.arange(len(labels))
    for rank in range(2):
        mine = sampling.scatter_indices(ids, 2, rank, equal=True, shuffle_seed=0)
        counts = numpy.bincount(labels[mine], minlength=10)
        assert counts.min() > 150, counts                 # ~200 of each class
    # Negative control: contiguous blocks give each rank half of the classes.
    block = sampling.scatter_indices(ids, 2, 0, equal=True)
    assert set(labels[block]) == set(range(5))


def test_too_few_samples_for_the_ranks_is_a_clear_error():
    with pytest.raises(communication.CommunicationError, match='3 samples cannot'):
        sampling.scatter_indices(numpy.arange(3), 4, 0, equal=False)


# ---------------------------------------------------------------------------
# EpochOrderSampler

def test_sampler_construction_call_is_tag_one():
    sampler = sampling.EpochOrderSampler(10, seed=3)
    order = sampler(numpy.arange(10), 0)
    assert order.dtype == numpy.int64
    numpy.testing.assert_array_equal(numpy.sort(order), numpy.arange(10, 20))
    numpy.testing.assert_array_equal(
        order, numpy.random.default_rng([3, 1]).permutation(10) + 10)


def test_sampler_increments_tag_with_a_new_permutation_each_epoch():
    sampler = sampling.EpochOrderSampler(7, seed=0)
    order = sampler(numpy.arange(7), 0)
    seen = []
    for tag in range(1, 6):
        tags, positions = numpy.divmod(order, 7)
        assert (tags == tag).all()
        numpy.testing.assert_array_equal(numpy.sort(positions),
                                         numpy.arange(7))
        seen.append(tuple(positions))
        order = sampler(order, 7)
    assert len(set(seen)) == 5


def test_sampler_without_shuffle_gives_arange_blocks():
    sampler = sampling.EpochOrderSampler(5, seed=0, shuffle=False)
    order = sampler(numpy.arange(5), 0)
    numpy.testing.assert_array_equal(order, numpy.arange(5, 10))
    numpy.testing.assert_array_equal(sampler(order, 5), numpy.arange(10, 15))


def test_sampler_is_stateless():
    a = sampling.EpochOrderSampler(9, seed=11)
    order = a(numpy.arange(9), 0)
    for _ in range(3):
        order = a(order, 9)
    saved = order.copy()
    after = a(order, 9)
    # a fresh sampler, given only the saved order, continues identically
    numpy.testing.assert_array_equal(
        sampling.EpochOrderSampler(9, seed=11)(saved, 0), after)
    numpy.testing.assert_array_equal(a(saved, 9), after)
    # negative control: another seed does not
    assert not numpy.array_equal(sampling.EpochOrderSampler(9, seed=12)(saved, 9),
                                 after)


def test_sampler_rejects_wrong_length():
    with pytest.raises(ValueError, match='size=len'):
        sampling.EpochOrderSampler(5, seed=0)(numpy.arange(6), 0)


# ---------------------------------------------------------------------------
# AugmentedDataset

def make_base(n=10, seed=0):
    rng = numpy.random.default_rng(seed)
    # label = index, so a batch's labels say which samples it holds
    return [(rng.integers(0, 256, (20, 24, 3), dtype=numpy.uint8), i)
            for i in range(n)]


TRANSFORM = transforms.TrainTransform(8, MEAN, STD)


def test_augmented_dataset_is_a_function_of_seed_tag_and_global_index():
    base = make_base()
    full = sampling.AugmentedDataset(base, TRANSFORM, seed=4)
    rank = sampling.AugmentedDataset(base, TRANSFORM, seed=4, indices=[5, 7, 9])
    assert len(full) == 10 and len(rank) == 3
    for tag in (0, 1, 3):
        for pos, g in enumerate([5, 7, 9]):
            x, y = rank[pos + tag * 3]
            x_full, y_full = full[g + tag * 10]
            numpy.testing.assert_array_equal(x, x_full)
            assert y == y_full == base[g][1]
            assert y.dtype == numpy.int32
            # the oracle: the transform with the documented generator
            numpy.testing.assert_array_equal(
                x, TRANSFORM(base[g][0],
                             numpy.random.default_rng([4, tag, g])))


def test_augmented_dataset_tags_and_seeds_differ():
    base = make_base()
    ds = sampling.AugmentedDataset(base, TRANSFORM, seed=4)
    assert not numpy.array_equal(ds[2][0], ds[12][0])
    assert not numpy.array_equal(ds[12][0], ds[22][0])
    other = sampling.AugmentedDataset(base, TRANSFORM, seed=5)
    assert not numpy.array_equal(ds[12][0], other[12][0])


def test_augmented_dataset_pickles(list_tree):
    list_path, root = list_tree
    ds = sampling.AugmentedDataset(layouts.ListDataset(list_path, root), TRANSFORM, seed=1,
                            indices=[2, 0])
    clone = pickle.loads(pickle.dumps(ds))
    for i in range(6):
        numpy.testing.assert_array_equal(ds[i][0], clone[i][0])
        assert ds[i][1] == clone[i][1]


@pytest.mark.parametrize('indices, message', [
    ([0, 10], r'\[0, 10\)'), ([-1], r'\[0, 10\)'), ([], 'non-empty'),
    ([[1, 2]], '1-D'), ([0.5], 'integers')])
def test_augmented_dataset_checks_indices(indices, message):
    with pytest.raises(ValueError, match=message):
        sampling.AugmentedDataset(make_base(), TRANSFORM, seed=0, indices=indices)


def test_augmented_dataset_rejects_negative_index():
    with pytest.raises(IndexError, match='non-negative'):
        sampling.AugmentedDataset(make_base(), TRANSFORM, seed=0).get_example(-1)


def test_an_unreadable_image_is_returned_as_a_bad_sample(list_tree):
    list_path, root = list_tree
    base = layouts.ListDataset(list_path, root)
    with open(base.paths[2], 'wb'):
        pass                                            # a zero-byte JPEG
    ds = sampling.AugmentedDataset(base, TRANSFORM, seed=1, indices=[2, 0])
    for i in (0, 2, 4):                                 # tags 0, 1, 2 of global index 2
        sample = ds[i]
        assert isinstance(sample, sampling.BadSample)
        assert sample.index == 2 and sample.path == base.paths[2]
        # the decoder's error, not read_image's wrapping of it
        assert sample.error == "UnidentifiedImageError: cannot identify image file {!r}".format(
            base.paths[2])
        assert sample.describe() == '{}: {}'.format(base.paths[2], sample.error)
    assert pickle.loads(pickle.dumps(sample)) == sample
    assert not isinstance(ds[1], sampling.BadSample)    # negative control: index 0 reads
    # a file deleted after the build: read_image's own message, no cause to unwrap
    os.remove(base.paths[0])
    assert ds[1].error.startswith('DatasetError: image file {} does not exist'.format(
        base.paths[0]))


def test_a_failing_transform_is_returned_as_a_bad_sample():
    def transform(image, rng):
        raise ValueError('image too small')

    sample = sampling.AugmentedDataset(make_base(), transform, seed=0)[13]
    assert sample == sampling.BadSample(index=3, path=None, error='ValueError: image too small')
    assert sample.describe() == 'sample 3: ValueError: image too small'


def test_an_interrupt_is_not_a_bad_sample():
    def transform(image, rng):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sampling.AugmentedDataset(make_base(), transform, seed=0)[0]


# ---------------------------------------------------------------------------
# Iterators: Chainer's, driven by the sampler

def make_iterator(kind, dataset, sampler, batch_size=4):
    if kind == 'serial':
        return chainer.iterators.SerialIterator(
            dataset, batch_size, order_sampler=sampler)
    return chainer.iterators.MultiprocessIterator(
        dataset, batch_size, order_sampler=sampler, n_processes=2)


def take(iterator, n):
    batches = []
    for _ in range(n):
        batch = next(iterator)
        batches.append((numpy.stack([x for x, _ in batch]),
                        numpy.array([y for _, y in batch])))
    return batches


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        numpy.testing.assert_array_equal(xa, xb)
        numpy.testing.assert_array_equal(ya, yb)


def dataset_and_sampler(seed=4):
    base = make_base(10)
    return (sampling.AugmentedDataset(base, TRANSFORM, seed=seed),
            sampling.EpochOrderSampler(10, seed=seed))


def test_multiprocess_iterator_matches_serial_iterator():
    # batch 4 over 10 samples: 5 batches are 2 epochs, one batch straddles
    dataset, sampler = dataset_and_sampler()
    serial = take(make_iterator('serial', dataset, sampler), 5)
    it = make_iterator('multiprocess', dataset, sampler)
    try:
        parallel = take(it, 5)
        assert it.epoch == 2
    finally:
        it.finalize()
    assert_same_batches(serial, parallel)
    # every sample once per epoch, in the sampler's order
    labels = numpy.concatenate([y for _, y in serial])
    order0 = sampler(numpy.arange(10), 0)
    order1 = sampler(order0, 10)
    numpy.testing.assert_array_equal(labels[:10], order0 % 10)
    numpy.testing.assert_array_equal(labels[10:], order1 % 10)
    # the second epoch is a new augmentation of the first one's samples
    images = numpy.concatenate([x for x, _ in serial])
    first = dict(zip(order0 % 10, images[:10]))
    for pos, x in zip(order1 % 10, images[10:]):
        assert not numpy.array_equal(first[pos], x)
    # negative control: another seed gives other batches
    other = take(make_iterator('serial', *dataset_and_sampler(seed=5)), 5)
    assert not numpy.array_equal(other[0][0], serial[0][0])


@pytest.mark.parametrize('kind', ['serial', 'multiprocess'])
def test_iterator_resumes_mid_epoch_exactly(kind, tmp_path):
    dataset, sampler = dataset_and_sampler()
    reference = take(make_iterator('serial', dataset, sampler), 8)

    snapshot = str(tmp_path / 'iterator.npz')
    it = make_iterator(kind, dataset, sampler)
    try:
        head = take(it, 4)  # epoch 1, position 6: mid-epoch
        assert it.epoch == 1 and it.current_position == 6
        chainer.serializers.save_npz(snapshot, it)
        take(it, 1)  # the live iterator moves on; the snapshot must not
    finally:
        if kind == 'multiprocess':
            it.finalize()

    fresh_dataset, fresh_sampler = dataset_and_sampler()
    resumed = make_iterator(kind, fresh_dataset, fresh_sampler)
    try:
        chainer.serializers.load_npz(snapshot, resumed)
        assert resumed.epoch == 1 and resumed.current_position == 6
        tail = take(resumed, 4)
    finally:
        if kind == 'multiprocess':
            resumed.finalize()
    assert_same_batches(head + tail, reference)




@pytest.mark.parametrize('n, size, first, count', [(31, 6, 3, 3), (100, 8, 0, 4), (9, 9, 8, 1)])
def test_worker_shards_are_the_workers_scatter_indices_with_one_permutation(n, size, first,
                                                                           count):
    ids = numpy.arange(n) * 3
    shards = sampling.scatter_worker_shards(ids, size, first, count, shuffle_seed=5)
    assert len(shards) == count
    for w, shard in zip(range(first, first + count), shards):
        numpy.testing.assert_array_equal(
            shard, sampling.scatter_indices(ids, size, w, equal=True, shuffle_seed=5))
    with pytest.raises(communication.CommunicationError, match='cannot be split over 32 ranks'):
        sampling.scatter_worker_shards(ids[:5], 32, 0, 2, shuffle_seed=5)
