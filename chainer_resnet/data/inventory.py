"""What ImageNet's archives hold, checked before anything is written.

:func:`take_inventory` indexes the training and validation archives
(:func:`~chainer_resnet.data.archives.index_archive`), labels every
validation image (from the devkit, from a ``file wnid`` list, or from both,
which must then agree) and checks what can be checked before extraction:

- the training archive holds ``<wnid>.tar`` files only, each class once;
- with the devkit, every training class is one of its classes (a synset
  without children in ``meta.mat``);
- every validation label is a training class, and every training class has
  validation images (a class-folder tree needs each class in both);
- unless the copy is declared a subset: 1,000 classes, 50,000 validation
  images, 50 of them per class. The 1,281,167 training images (and, with the
  devkit, each class's ``num_train_images``) are counted as the classes are
  extracted: reading the headers of 1.28 million inner members first would
  cost as much as the extraction's reading.

Labels are positions in the sorted list of WordNet ids, the order in which
:class:`~chainer_resnet.data.layouts.FolderDataset` numbers class folders,
so both layouts give every image the same label.
"""

import collections
import hashlib
import os

from chainer_resnet.data import archives, devkit
from chainer_resnet.data.layouts import DatasetError
from chainer_resnet.recipes import IMAGENET_TRAIN_IMAGES

IMAGENET_CLASSES = 1000
IMAGENET_VAL_IMAGES = 50000
IMAGENET_VAL_PER_CLASS = 50

_SUBSET = ('If this copy is a subset of ImageNet on purpose, pass --subset (other counts '
           'are then accepted).')

Inventory = collections.namedtuple(
    'Inventory', 'classes words train val val_labels expected_train labels_from fingerprint')
Inventory.__doc__ = """What :func:`take_inventory` found.

``classes``: sorted WordNet ids (label ``k`` is ``classes[k]``); ``words``:
``{wnid: words}`` from the devkit (empty without it); ``train``: ``{wnid:
Member}``, the class's inner tar; ``val``: ``{wnid: [Member]}``, its
validation images in name order; ``val_labels``: ``{file name: wnid}``;
``expected_train``: ``{wnid: count}`` from the devkit's ``num_train_images``,
or None (no devkit, or a subset); ``labels_from``: where the validation
labels came from (``'devkit'``, ``'list'``, ``'devkit+list'``);
``fingerprint``: SHA-256 of the sorted ``file wnid`` validation labels.
"""


def _first(items, count=5):
    shown = ', '.join(str(i) for i in items[:count])
    return shown + (', ... {} more'.format(len(items) - count) if len(items) > count else '')


def _train_classes(path):
    train = {}
    for member in archives.index_archive(path):
        base = os.path.basename(member.name)
        name, extension = os.path.splitext(base)
        if (extension != '.tar' or not name or name.startswith('.')
                or any(c.isspace() for c in name)):
            raise DatasetError('archive {} holds {}, which is not a class archive <wnid>.tar. '
                               'Is it ILSVRC2012_img_train.tar?'.format(path, member.name))
        if name in train:
            raise DatasetError('archive {} holds class {} twice'.format(path, name))
        train[name] = member
    if not train:
        raise DatasetError('archive {} holds no class archives. Is it '
                           'ILSVRC2012_img_train.tar?'.format(path))
    return train


def _val_images(path):
    images = {}
    for member in archives.index_archive(path):
        name = archives.check_image_name(os.path.basename(member.name),
                                         'archive {}'.format(path))
        if name in images:
            raise DatasetError('archive {} holds {} twice'.format(path, name))
        images[name] = member
    if not images:
        raise DatasetError('archive {} holds no images. Is it ILSVRC2012_img_val.tar?'
                           .format(path))
    return images


def _labels(names, kit, label_file, label_path, val_path):
    """``({file name: wnid}, labels_from)`` for the validation images."""
    from_kit = devkit.devkit_labels(kit, names) if kit is not None else None
    from_file = None
    if label_file is not None:
        unlabelled = [n for n in names if n not in label_file]
        if unlabelled:
            raise DatasetError('{} of the images in {} have no line in the label file {} '
                               '(first: {}). It must label every validation image.'.format(
                                   len(unlabelled), val_path, label_path, _first(unlabelled)))
        from_file = {n: label_file[n] for n in names}
    if from_kit is not None and from_file is not None:
        differ = [n for n in names if from_kit[n] != from_file[n]]
        if differ:
            first = differ[0]
            raise DatasetError(
                'the label file {} disagrees with the devkit\'s ground truth on {} of the {} '
                'validation images (first: {}: the file says {}, the devkit {}; all: {}). One '
                'of the two belongs to another copy or order of ImageNet: pass only the one '
                'you trust.'.format(label_path, len(differ), len(names), first,
                                    from_file[first], from_kit[first], _first(differ)))
        return from_kit, 'devkit+list'
    if from_kit is not None:
        return from_kit, 'devkit'
    return from_file, 'list'


def take_inventory(train_tar, val_tar, devkit_path=None, val_labels=None, subset=False):
    """Index and check the archives (see the module docstring).

    Args:
        train_tar (str): ``ILSVRC2012_img_train.tar``.
        val_tar (str): ``ILSVRC2012_img_val.tar``.
        devkit_path (str or None): ``ILSVRC2012_devkit_t12.tar.gz`` or its
            folder.
        val_labels (str or None): a ``file wnid`` label file.
        subset (bool): accept other counts than ImageNet's.

    Raises:
        DatasetError: what is wrong, naming the archive or file.
    """
    if devkit_path is None and val_labels is None:
        raise DatasetError('the validation images need labels: pass --devkit '
                           'ILSVRC2012_devkit_t12.tar.gz, or --val-labels with a file of '
                           '"file wnid" lines')
    kit = devkit.read_devkit(devkit_path) if devkit_path is not None else None
    label_file = devkit.read_label_file(val_labels) if val_labels is not None else None
    train = _train_classes(train_tar)
    images = _val_images(val_tar)
    classes = sorted(train)
    names = sorted(images)
    labels, labels_from = _labels(names, kit, label_file, val_labels, val_tar)
    words, expected = {}, None
    if kit is not None:
        leaves = {s.wnid: s for s in devkit.leaf_classes(kit.synsets).values()}
        unknown = [c for c in classes if c not in leaves]
        if unknown:
            raise DatasetError('{} of the classes in {} are not classes of the devkit {} '
                               '(synsets without children in its meta.mat): {}. Are the '
                               'archive and the devkit both ILSVRC-2012?'.format(
                                   len(unknown), train_tar, devkit_path, _first(unknown)))
        words = {c: leaves[c].words for c in classes}
        if not subset:
            expected = {c: leaves[c].num_train_images for c in classes}
    val = collections.defaultdict(list)
    for name in names:
        val[labels[name]].append(images[name])
    strangers = sorted(set(val) - set(train))
    if strangers:
        raise DatasetError(
            'validation labels name {} classes that the training archive {} does not hold '
            '(first: {}, e.g. for {}). Every validation label must be a training class: are '
            'the labels ({}) for this copy of ImageNet?'.format(
                len(strangers), train_tar, strangers[0], val[strangers[0]][0].name,
                labels_from))
    without = [c for c in classes if c not in val]
    if without:
        raise DatasetError('{} training classes have no validation image (first: {}); each '
                           'class folder of the validation tree needs at least one.'.format(
                               len(without), _first(without)))
    if not subset:
        counts = [(len(classes), IMAGENET_CLASSES, 'classes in {}'.format(train_tar)),
                  (len(names), IMAGENET_VAL_IMAGES, 'images in {}'.format(val_tar))]
        for found, wanted, what in counts:
            if found != wanted:
                raise DatasetError('{:,} {}, but ILSVRC-2012 has {:,}. {}'.format(
                    found, what, wanted, _SUBSET))
        uneven = ['{} ({})'.format(c, len(val[c])) for c in classes
                  if len(val[c]) != IMAGENET_VAL_PER_CLASS]
        if uneven:
            raise DatasetError('{} classes do not have {} validation images each, as ILSVRC-2012 '
                               'has: {}. Are the labels ({}) for this copy? {}'.format(
                                   len(uneven), IMAGENET_VAL_PER_CLASS, _first(uneven),
                                   labels_from, _SUBSET))
    fingerprint = hashlib.sha256(''.join(
        '{} {}\n'.format(n, labels[n]) for n in names).encode()).hexdigest()
    return Inventory(classes, words, train, dict(val), labels, expected, labels_from,
                     fingerprint)


def check_train_counts(counts, inventory, train_tar):
    """Check the training images counted per class against ImageNet's.

    Args:
        counts (dict): ``{wnid: images written}`` for every class.

    Raises:
        DatasetError: another total than 1,281,167, or a class with another
            count than the devkit's ``num_train_images``.
    """
    total = sum(counts.values())
    expected = inventory.expected_train or {}
    differ = ['{} ({}, the devkit says {})'.format(c, counts[c], expected[c])
              for c in inventory.classes if c in expected and counts[c] != expected[c]]
    if total != IMAGENET_TRAIN_IMAGES or differ:
        detail = ' Classes whose count differs: {}.'.format(_first(differ)) if differ else ''
        raise DatasetError(
            '{} holds {:,} training images; ILSVRC-2012 has {:,}.{} The class folders written '
            'are kept: if this copy is a subset on purpose, run the same command with --subset '
            'to finish.'.format(train_tar, total, IMAGENET_TRAIN_IMAGES, detail))
