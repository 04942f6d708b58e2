"""chainer_resnet.data.shards: a run's datasets and this rank's shards, on one process.

Across ranks (each rank checks only its shard; one broadcast of the index):
tests/test_scale.py and tests/test_launch.py.
"""

import dataclasses
import os

import numpy
import pytest

from chainer_resnet import communication, recipes
from chainer_resnet.data import layouts, preparation, sampling, shards


@pytest.fixture(scope='module')
def comm():
    return communication.create_communicator(gpu=False)


def _recipe(**changes):
    return dataclasses.replace(recipes.SMOKE, train_subset=None, val_subset=None, **changes)


def test_open_data_takes_every_image_once_on_one_rank(comm, list_tree):
    list_path, root = list_tree
    data = shards.open_data(comm, _recipe(num_classes=3), list_path, list_path, root)
    assert len(data.train_base) == 3 and len(data.val_base) == 3
    assert sorted(data.train_local) == [0, 1, 2] and list(data.val_local) == [0, 1, 2]
    assert len(data.train_shards) == 1


def test_virtual_workers_get_the_shards_of_k_times_more_ranks(comm, list_tree):
    list_path, root = list_tree
    recipe = _recipe(num_classes=3, virtual_workers_per_rank=2)
    data = shards.open_data(comm, recipe, list_path, list_path, root)
    expected = [sampling.scatter_indices(numpy.arange(3), 2, j, equal=True,
                                         shuffle_seed=recipe.seed)
                for j in range(2)]
    assert [list(s) for s in data.train_shards] == [list(e) for e in expected]
    train_set, sampler, _ = shards.datasets(data, recipe)
    assert isinstance(train_set, sampling.VirtualWorkerStream)
    assert isinstance(sampler, sampling.StreamOrderSampler)


def test_datasets_of_one_worker_are_the_augmented_shard(comm, list_tree):
    list_path, root = list_tree
    recipe = _recipe(num_classes=3)
    data = shards.open_data(comm, recipe, list_path, list_path, root)
    train_set, sampler, val_set = shards.datasets(data, recipe)
    assert isinstance(train_set, sampling.AugmentedDataset)
    assert isinstance(sampler, sampling.EpochOrderSampler)
    image, label = val_set[0]
    assert image.dtype == numpy.uint8 and image.shape == (3, recipe.crop_size, recipe.crop_size)


def test_train_without_val_is_a_dataset_error(comm, list_tree):
    list_path, root = list_tree
    with pytest.raises(layouts.DatasetError, match='--train given without --val'):
        shards.open_data(comm, _recipe(num_classes=3), list_path, None, root)


def test_a_prepared_dataset_is_checked_against_the_recipe(comm, list_tree):
    list_path, root = list_tree
    out = os.path.dirname(list_path)
    preparation.write_record(out, {'num_classes': 5, 'resize': None,
                                   'train_list': os.path.basename(list_path)})
    with pytest.raises(layouts.DatasetError, match='has 5 classes but recipe'):
        shards.open_data(comm, _recipe(num_classes=3), list_path, list_path, root)
    # Negative control: the record of a dataset of 3 classes lets it through.
    preparation.write_record(out, {'num_classes': 3, 'resize': None,
                                   'train_list': os.path.basename(list_path)})
    assert len(shards.open_data(comm, _recipe(num_classes=3), list_path, list_path,
                                root).train_base) == 3


def test_index_warnings_name_repeats_overlap_and_a_validation_set_of_one_label(list_tree):
    list_path, root = list_tree
    train = layouts.open_dataset(list_path, root, 3)
    assert shards.index_warnings(train, train)[0].startswith(   # the same list twice
        '3 image(s) are in both the training and the validation set')
    with open(list_path, 'a') as f:
        f.write('a/red.png 2\n')
    train = layouts.open_dataset(list_path, root, 3)
    val_list = list_path + '.val'
    with open(val_list, 'w') as f:
        f.write('b/gray.png 0\na/blue.JPEG 0\n')
    val = layouts.open_dataset(val_list, root, 3)
    repeated, overlap, one_label = shards.index_warnings(train, val)
    assert repeated.startswith('{} lists 1 image(s) more than once'.format(list_path))
    assert 'an epoch has 4 images instead of 3' in repeated
    assert overlap.startswith('2 image(s) are in both')
    assert one_label.startswith('all 2 validation images have the label 0')
    # Negative control: disjoint sets with two labels and no repeats.
    with open(val_list, 'w') as f:
        f.write('b/gray.png 1\n')
    with open(list_path, 'w') as f:
        f.write('a/red.png 2\na/blue.JPEG 0\n')
    assert shards.index_warnings(layouts.open_dataset(list_path, root, 3),
                                 layouts.open_dataset(val_list, root, 3)) == []
