"""A run's datasets and this rank's shards, at a cost per rank that does not grow with the ranks.

:func:`open_data` is step 3 of the trainer: rank 0 alone reads the list
files (or walks the class folders) and the index reaches every rank in one
broadcast (a dataset error ends every rank with rank 0's message; a
validation list that repeats an image is one; a training list that does, an
image in both sets, or one label for the whole validation set are warnings:
:func:`index_warnings`). Every rank
then takes its shard: training indices are shuffled before they are split
(list files are usually sorted by class) and padded to equal length;
validation indices are split in disjoint blocks, each image exactly once.
Each rank checks that the files of its own shards exist (the demo dataset is
built once per node under a file lock). :func:`datasets` are the augmented
datasets over the shards; :func:`check_images` is ``--check-images``: each
rank reads its shards once.
"""

import collections
import sys

import numpy

from chainer_resnet import communication
from chainer_resnet.communication import print0
from chainer_resnet.data import demo, layouts, listfile, loader, preparation, sampling, transforms

Data = collections.namedtuple(
    'Data', 'train_base val_base train_ids val_ids train_local val_local train_shards classes')
Data.__doc__ = """The datasets (``*_base``), the indices the recipe uses (``*_ids``), this
rank's indices (``*_local``), its virtual workers' training shards, and the class names
in label order (class folders; the demo's digits; None for list files)."""


def open_data(comm, recipe, train=None, val=None, root=None, data_cache=None):
    """:class:`Data` of a run; the embedded demo dataset when ``train`` is None.

    Args:
        comm: the ChainerMN communicator.
        recipe: the run's recipe (classes, subsets, seed, virtual workers).
        train, val: list files or class-folder roots (``--train``, ``--val``).
        root: the folder list files' paths are relative to (``--root``).
        data_cache: where the demo dataset is built (``--data-cache``).
    """
    train_path, val_path, root = _dataset_paths(train, val, root, data_cache)

    def index():
        # A dataset prepare.py wrote says how; the recipe must fit it (prepared.json).
        preparation.check_recipe(recipe, train_path)
        train = layouts.open_dataset(train_path, root, recipe.num_classes, check_files=False)
        val = layouts.open_dataset(val_path, root, recipe.num_classes, check_files=False,
                                   classes=getattr(train, 'classes', None),
                                   allow_duplicates=False)
        for problem in index_warnings(train, val):
            print('WARNING: ' + problem, file=sys.stderr, flush=True)
        return train, val
    train_base, val_base = communication.from_rank0(comm, index)
    train_ids = sampling.subset(len(train_base), recipe.train_subset, recipe.seed)
    val_ids = sampling.subset(len(val_base), recipe.val_subset, recipe.seed)
    # Virtual worker j of this rank is worker rank * k + j of ranks * k: its
    # shard is the one that rank of a k-times larger launch would take.
    k = recipe.virtual_workers_per_rank
    train_shards = sampling.scatter_worker_shards(
        train_ids, comm.size * k, comm.rank * k, k, shuffle_seed=recipe.seed)
    train_local = numpy.concatenate(train_shards)
    val_local = sampling.scatter_indices(val_ids, comm.size, comm.rank, equal=False)
    train_base.check_files(numpy.unique(train_local))
    val_base.check_files(val_local)
    classes = getattr(train_base, 'classes', None)
    if train is None:           # the demo's list files: label k is the digit k
        classes = [str(label) for label in range(recipe.num_classes)]
    return Data(train_base, val_base, train_ids, val_ids, train_local, val_local, train_shards,
                None if classes is None else list(classes))


def open_val(comm, recipe, val=None, root=None, data_cache=None, classes=None):
    """``(val_base, val_local)``: the validation images of :func:`open_data`, without the
    training set (for evaluation): the same subset, the same block on each rank.

    ``val`` None is the demo's validation set; ``classes`` (the model's class
    names) checks a class-folder tree as the training tree would.
    """
    val_path = _dataset_paths(None, None, None, data_cache)[1] if val is None else val
    base = communication.from_rank0(comm, lambda: layouts.open_dataset(
        val_path, root, recipe.num_classes, check_files=False, classes=classes,
        allow_duplicates=False))
    ids = sampling.subset(len(base), recipe.val_subset, recipe.seed)
    local = sampling.scatter_indices(ids, comm.size, comm.rank, equal=False)
    base.check_files(local)
    return base, local


def index_warnings(train, val):
    """What is odd but legal about a run's two datasets, as sentences (rank 0 prints them).

    - the training list names an image more than once (each line is a
      sample of the epoch: those images are oversampled, the epoch longer);
    - an image is in both sets (the validation accuracy then measures
      memory, not generalisation);
    - every validation image has the same label (ImageNet's validation
      images come without labels: a list made from the folder alone labels
      them all 0, and top-1 is then about 0.1 %).
    """
    found = []
    repeated = getattr(train, 'duplicates', None)
    if repeated:
        found.append('{} lists {}. Each line is a sample of the epoch: those images are '
                     'seen more often and an epoch has {} images instead of {}. Remove the '
                     'repeated lines unless you mean to oversample.'.format(
                         train.list_path, listfile.describe_duplicates(repeated), len(train),
                         len(train) - repeated.extra_lines))
    both = set(train.paths).intersection(val.paths)
    if both:
        found.append('{} image(s) are in both the training and the validation set (first: {}): '
                     'the validation accuracy will be optimistic.'.format(
                         len(both), ', '.join(sorted(both)[:3])))
    if len(val) > 1 and len(numpy.unique(val.labels)) == 1:
        found.append('all {} validation images have the label {}: a validation list made '
                     'without the ground truth (ImageNet\'s validation images come unlabelled) '
                     'measures nothing.'.format(len(val), int(val.labels[0])))
    return found


def datasets(data, recipe):
    """(train set, its sampler, validation set) over this rank's shards of `data`.

    Decoded images stay PIL until the crop and the transforms return uint8
    (``loader.Normalize`` in the converters gives the float32 transforms'
    pixels). With k virtual workers one
    :class:`~chainer_resnet.data.sampling.VirtualWorkerStream` gives each
    iteration's k micro-batches, each the batch that worker would read as a
    rank.
    """
    train_tf, val_tf = transforms.from_recipe(recipe, normalize=False)
    worker_sets = [sampling.AugmentedDataset(loader.PILImages(data.train_base), train_tf,
                                             recipe.seed, indices=shard)
                   for shard in data.train_shards]
    if recipe.virtual_workers_per_rank == 1:
        train_set = worker_sets[0]
        sampler = sampling.EpochOrderSampler(len(train_set), recipe.seed)
    else:
        train_set = sampling.VirtualWorkerStream(worker_sets, recipe.batch_per_worker,
                                                  recipe.seed)
        sampler = sampling.StreamOrderSampler(len(train_set))
    val_set = sampling.AugmentedDataset(loader.PILImages(data.val_base), val_tf,
                                        recipe.seed, indices=data.val_local)
    return train_set, sampler, val_set


def _dataset_paths(train, val, root, data_cache):
    """(train, val, root) from the flags; the embedded demo dataset by default."""
    if train is None:
        data = demo.demo_dataset(cache_dir=data_cache)
        return data.train_list, data.val_list, data.root
    if val is None:
        raise layouts.DatasetError('--train given without --val')
    return train, val, root


def check_images(comm, data, max_bad):
    """--check-images: each rank reads its shards once; all stop together if too many fail."""
    bad = []
    for base, indices, what in ((data.train_base, data.train_local, 'training'),
                                (data.val_base, data.val_local, 'validation')):
        found = loader.check_images(base, numpy.unique(indices))
        for index, path, error in found:
            print('rank {}: unreadable {} image {} (index {}): {}'.format(
                comm.rank, what, path, index, error), file=sys.stderr, flush=True)
        bad.extend(found)
    counts = comm.mpi_comm.allgather(len(bad))
    print0(comm, 'check-images: {} unreadable image(s) over {} rank(s) (at most {} on a rank; '
           '--skip-bad-images allows {} per rank)'.format(sum(counts), comm.size, max(counts),
                                                        max_bad))
    if max(counts) > max_bad:
        error = layouts.DatasetError(
            '--check-images found {} unreadable image(s) (listed above, per rank). Replace '
            'them or remove them from the dataset, or pass --skip-bad-images N to train '
            'without them.'.format(sum(counts)))
        error.collective_rank = comm.rank   # every rank stops here: no abort, one message
        raise error
