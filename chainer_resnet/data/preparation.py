"""The record a prepared dataset carries, and the check of a recipe against it.

``python -m chainer_resnet.data.prepare`` writes ``prepared.json`` beside the
folders and list files it made, last, once they have passed the trainer's
dataset checks::

    OUT/prepared.json   {"resize": "square", "size": 256, "num_classes": 1000,
                         "train_images": 1281167, "val_images": 50000, ...}

so that whoever trains on ``OUT/train.txt`` or ``OUT/train`` can find out
how the images were made. :func:`check_recipe` refuses the combinations
that would train on the wrong pixels without any error downstream: images
squashed to a square for a recipe whose random-resized crops assume the
photographs' aspect ratio, a square of another size than the recipe's
``pre_resize_size``, images whose shorter side is smaller than what the
recipe's transforms resize to (each would be enlarged), or another number of
classes than the recipe's model has. A dataset without a record (not made by
this command, or moved away from it) is not checked.
"""

import json
import os

from chainer_resnet import status
from chainer_resnet.data.layouts import DatasetError

RECORD_NAME = 'prepared.json'
"""The record's file name, in the output folder of ``prepare``."""

FORMAT = 1


def write_record(out, record):
    """Write ``record`` (a JSON-able dict) as ``out/prepared.json``, atomically."""
    record = dict(record, format=FORMAT)
    return status.write_text_atomic(os.path.join(out, RECORD_NAME),
                                    json.dumps(record, indent=1, sort_keys=True) + '\n')


def read_record(out):
    """The record in folder ``out``; None if it has none.

    Raises:
        DatasetError: the file exists but is not a record of this format.
    """
    path = os.path.join(out, RECORD_NAME)
    try:
        with open(path, encoding='utf-8') as f:
            record = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DatasetError('cannot read {} ({}). Prepare the dataset again, or remove the file '
                           'to train without its checks.'.format(path, exc)) from None
    if not isinstance(record, dict) or record.get('format') != FORMAT:
        raise DatasetError('{} is not a record of format {} (written by another version of '
                           'chainer_resnet.data.prepare?). Prepare the dataset again.'.format(
                               path, FORMAT))
    return record


def find_record(train_path):
    """The record of the prepared dataset that ``train_path`` belongs to.

    ``train_path`` is what the trainer's ``--train`` gets: the training list
    file or class-folder root. Both lie in the output folder of ``prepare``;
    a path of another name there (a list of one's own) has no record.
    """
    path = os.path.abspath(train_path).rstrip(os.sep)
    record = read_record(os.path.dirname(path))
    if record is None or os.path.basename(path) not in (record.get('train_list'),
                                                        record.get('train_dir')):
        return None
    return record


def check_recipe(recipe, train_path):
    """Check that ``recipe`` can train on the prepared dataset at ``train_path``.

    Returns:
        dict or None: the record (None: no record, nothing checked).

    Raises:
        DatasetError: what would go wrong, and the two ways out (another
            ``--set``, or preparing again).
    """
    record = find_record(train_path)
    if record is None:
        return None
    where = os.path.join(os.path.dirname(os.path.abspath(train_path)), RECORD_NAME)
    if record.get('num_classes') != recipe.num_classes:
        raise DatasetError(
            '{} says the dataset has {} classes but recipe {!r} has num_classes={}. Pass '
            '--set num_classes={}.'.format(where, record.get('num_classes'), recipe.name,
                                           recipe.num_classes, record.get('num_classes')))
    resize, size = record.get('resize'), record.get('size')
    if resize is None:
        return record
    again = ('or prepare the archives again with another --resize/--size (the original '
             'images are in the archives)')
    if resize == 'square':
        if recipe.augmentation != 'pre_resized':
            raise DatasetError(
                'the images of {} were resized to {s}x{s} without keeping their aspect ratio '
                '({}), for the pre_resized augmentation; recipe {!r} uses {}, whose crops '
                'assume the photographs\' own shapes. Pass --set augmentation=pre_resized '
                '--set pre_resize_size={s}, {}.'.format(
                    train_path, where, recipe.name, recipe.augmentation, again, s=size))
        if recipe.pre_resize_size != size:
            raise DatasetError(
                'the images of {} were resized to {s}x{s} ({}) but recipe {!r} resizes to '
                '{p}x{p} (pre_resize_size={p}). Pass --set pre_resize_size={s}, {}.'.format(
                    train_path, where, recipe.name, again, s=size, p=recipe.pre_resize_size))
        return record
    if recipe.augmentation == 'pre_resized':
        needed, what = recipe.pre_resize_size, 'pre_resize_size'
    else:
        # What the validation transform resizes the shorter side to.
        needed, what = int(round(recipe.crop_size * 256 / 224)), 'crop_size x 256/224'
    if size < needed:
        raise DatasetError(
            'the images of {} have their shorter side resized to {} ({}) but recipe {!r} '
            'resizes it to {} ({}): every image would be enlarged. Prepare the archives again '
            'with --size {} or more, or without --resize.'.format(
                train_path, size, where, recipe.name, needed, what, needed))
    return record
