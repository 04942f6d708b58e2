"""The one model loader: a ``model.npz`` that describes itself, a snapshot, or torchvision weights.

``<out>/model.npz`` holds Chainer's arrays of the trained ResNet-50 (what
``chainer.serializers.save_npz`` writes, so ``load_npz(path, model)`` still
works) plus one more entry, ``chainer_resnet/model``: a JSON description that
Chainer's loader ignores and that makes the file usable without anything
else::

    {"format": 1,
     "architecture": {"model": "resnet50", "variant": "v1.5", "num_classes": 10,
                      "batch_norm": "last_batch", "bn_eps": 2e-05},
     "classes": ["0", "1", ...] or null,
     "preprocessing": {"resize": "shorter_side", "resize_size": 27, "crop": "centre",
                       "crop_size": 24, "interpolation": "bilinear (PIL)",
                       "mean": [...], "std": [...], "input": "..."},
     "bn_statistics": "...", "recipe": {...every recipe field...},
     "data": {"train": ..., "val": ..., "root": ...},
     "iteration": 625, "validation": {"top1": 0.97, "top5": 0.997}}

:func:`load` reads any of:

- a described ``model.npz`` (written by :func:`save`, e.g. by the trainer);
- a snapshot ``snapshot_iter_<N>.0`` (the recipe recorded inside it;
  classes unknown);
- a torchvision ResNet-50 state dict (``.pth``/``.pt`` through torch, or
  ``.safetensors``; :mod:`chainer_resnet.torchvision_weights`): BN eps 1e-5,
  ImageNet preprocessing;
- a ``model.npz`` written before descriptions existed, given the run's recipe
  (``recipe=``, e.g. from its ``recipe.json``); without one,
  :class:`ModelFileError` says which flag to pass.

The evaluate, predict and export commands and the trainer's ``--init-model``
all open models here.
"""

import dataclasses
import functools
import json
import os
import zipfile

import numpy

import chainer
import chainer.links as L
from chainer.serializers import npz

from chainer_resnet import recipes, resnet, snapshots
from chainer_resnet.batch_normalization import LastBatchNormalization

FORMAT = 1
META_KEY = 'chainer_resnet/model'
# Where a snapshot keeps the predictor's arrays.
SNAPSHOT_PREFIX = 'updater/model:main/predictor/'
TORCHVISION_EXTENSIONS = ('.pth', '.pt', '.safetensors')
# torchvision's BatchNorm2d default; Chainer's is 2e-5.
TORCHVISION_BN_EPS = 1e-5
CHAINER_BN_EPS = 2e-5


class ModelFileError(ValueError):
    """A model file cannot be read or does not fit; the message says what to do."""


@dataclasses.dataclass
class Model:
    """A loaded model: the predictor (logits), its description, and its recipe."""

    predictor: chainer.Link
    description: dict
    path: str

    @property
    def recipe(self):
        """The :class:`~chainer_resnet.recipes.Recipe` the model was trained with."""
        return recipe_from_dict(self.description['recipe'])

    @property
    def classes(self):
        """Class names in label order, or None (labels are then their own names)."""
        return self.description.get('classes')

    def class_name(self, label):
        """The name of class ``label`` (its number where the file names none)."""
        names = self.classes
        return names[label] if names else str(label)


def recipe_from_dict(values):
    """A Recipe from its dict (JSON): fields a newer/older version lacks take the defaults."""
    fields = {f.name: f for f in dataclasses.fields(recipes.Recipe)}
    known = {k: tuple(v) if isinstance(v, list) else v
             for k, v in values.items() if k in fields}
    return recipes.Recipe(**known)


def architecture(recipe, bn_eps=CHAINER_BN_EPS):
    """The architecture entry of a recipe's model."""
    return {'model': 'resnet50', 'variant': recipe.resnet_variant,
            'num_classes': recipe.num_classes, 'batch_norm': recipe.batch_norm,
            'bn_eps': bn_eps}


def preprocessing(recipe):
    """What an image goes through before the model (the validation transform), in words."""
    if recipe.augmentation == 'pre_resized':
        resize = {'resize': 'square', 'resize_size': recipe.pre_resize_size}
    else:
        resize = {'resize': 'shorter_side',
                  'resize_size': int(round(recipe.crop_size * 256 / 224)),
                  'rounding': {'round': 'longer side round(), crop offset floor()',
                               'torchvision': 'longer side int(), crop offset round() '
                               '(torchvision)'}[recipe.val_resize_rounding]}
    return dict(resize, crop='centre', crop_size=recipe.crop_size,
                interpolation='bilinear (PIL)', mean=list(recipe.mean), std=list(recipe.std),
                input='RGB, NCHW float32, (pixel / 255 - mean) / std')


def describe(recipe, classes=None, data=None, bn_eps=CHAINER_BN_EPS, bn_statistics=None):
    """The description :func:`save` writes into a model file.

    Args:
        recipe: the run's recipe (architecture, preprocessing, evaluation subset).
        classes: class names in label order (a class-folder dataset's), or None.
        data: ``{'train', 'val', 'root', 'data_cache'}`` as the run was given them
            (None entries: the embedded demo data), the evaluator's default.
        bn_eps: the BN links' eps.
        bn_statistics: what the stored BN statistics are, in words.
    """
    if bn_statistics is None:
        bn_statistics = ('last training batch of each worker, averaged over workers ({})'
                         .format(recipe.bn_stats_average) if recipe.batch_norm == 'last_batch'
                         else 'moving averages over training batches')
    return {'format': FORMAT, 'architecture': architecture(recipe, bn_eps),
            'classes': list(classes) if classes is not None else None,
            'preprocessing': preprocessing(recipe), 'bn_statistics': bn_statistics,
            'recipe': recipe.to_dict(), 'data': data}


def build(arch):
    """An untrained ResNet-50 for an architecture entry (zero-γ off: weights follow)."""
    if arch.get('model', 'resnet50') != 'resnet50':
        raise ModelFileError('model {!r} is not known (only resnet50)'.format(arch['model']))
    eps = float(arch.get('bn_eps', CHAINER_BN_EPS))
    if arch.get('batch_norm', 'last_batch') == 'last_batch':
        bn = functools.partial(LastBatchNormalization, eps=eps)
    else:
        bn = functools.partial(L.BatchNormalization, eps=eps)
    return resnet.ResNet50(n_class=int(arch['num_classes']), variant=arch['variant'],
                           zero_init_residual=False, bn=bn)


def save(path, predictor, description):
    """Write ``predictor``'s arrays and ``description`` to ``path`` (atomic, uncompressed)."""
    arrays = npz.serialize(predictor)
    arrays[META_KEY] = numpy.array(json.dumps(description, sort_keys=True))
    snapshots.write_npz_atomic(path, arrays)


def read(path, recipe=None):
    """``(arrays, description)`` of a model file: arrays named as in ``npz.serialize``.

    Picklable, so one rank can read and broadcast it. ``recipe`` describes a
    ``model.npz`` written before descriptions existed.
    """
    if not os.path.isfile(path):
        raise ModelFileError('model file {} does not exist. Pass a model.npz, a snapshot or '
                             'a torchvision state dict (.pth, .safetensors).'.format(path))
    if path.endswith(TORCHVISION_EXTENSIONS):
        from chainer_resnet import torchvision_weights
        return torchvision_weights.read(path)
    try:
        with numpy.load(path) as f:
            arrays = {name: f[name] for name in f.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ModelFileError('cannot read {} as a model file ({}: {}). Pass a model.npz, a '
                             'snapshot or a torchvision state dict (.pth, .safetensors).'
                             .format(path, type(e).__name__, e)) from None
    if META_KEY in arrays:
        description = json.loads(str(arrays.pop(META_KEY)))
        if description.get('format', 0) > FORMAT:
            raise ModelFileError('{} was written by a newer chainer_resnet (model format {}, '
                                 'this one reads {}); upgrade.'.format(
                                     path, description['format'], FORMAT))
        return arrays, description
    if snapshots.META_RECIPE in arrays:
        description = describe(recipe_from_dict(json.loads(str(
            arrays[snapshots.META_RECIPE]))))
        if 'updater/iteration' in arrays:
            description['iteration'] = int(arrays['updater/iteration'])
        return ({name[len(SNAPSHOT_PREFIX):]: value for name, value in arrays.items()
                 if name.startswith(SNAPSHOT_PREFIX)}, description)
    if 'conv1/W' not in arrays:
        raise ModelFileError('{} holds no ResNet-50 (no conv1/W entry); pass a model.npz or '
                             'a snapshot_iter_<N>.0 of a run.'.format(path))
    if recipe is None:
        beside = os.path.join(os.path.dirname(os.path.abspath(path)), 'recipe.json')
        hint = (' ({} is beside it)'.format(beside) if os.path.exists(beside)
                else ' (the run folder\'s recipe.json)')
        raise ModelFileError(
            '{} does not describe itself (written before model files carried their '
            'architecture, classes and preprocessing). Pass the run\'s recipe: --recipe-json '
            'RECIPE_JSON{}, or --recipe NAME with the run\'s --set values; or launch the '
            'finished run\'s command again: it rewrites model.npz with the description.'
            .format(path, hint))
    return arrays, describe(recipe)


def load(path, recipe=None):
    """The :class:`Model` in ``path`` (see the module docstring for what it may be)."""
    arrays, description = read(path, recipe)
    return Model(from_arrays(arrays, description, path), description, path)


def from_arrays(arrays, description, where='the model'):
    """A predictor built from ``description`` with ``arrays`` loaded into it."""
    predictor = build(description['architecture'])
    missing = [name for name, _ in npz.serialize(predictor).items() if name not in arrays]
    if missing:
        raise ModelFileError('{} lacks {} array(s) of its architecture {} (first: {}); it '
                             'is not a complete model of that kind.'.format(
                                 where, len(missing), description['architecture'],
                                 missing[0]))
    try:
        npz.NpzDeserializer(arrays).load(predictor)
    except ValueError as e:   # a shape that does not fit
        raise ModelFileError('{} does not fit its architecture {}: {}'.format(
            where, description['architecture'], e)) from None
    return predictor


def read_recipe_json(path):
    """The Recipe in a run's ``recipe.json``."""
    try:
        with open(path, encoding='utf-8') as f:
            return recipe_from_dict(json.load(f))
    except (OSError, ValueError) as e:
        raise ModelFileError('cannot read the recipe {} ({})'.format(path, e)) from None


def data_paths(train, val, root, data_cache):
    """The ``data`` entry of a description: the run's dataset flags, absolute (None: demo)."""
    return {name: None if value is None else os.path.abspath(value) for name, value in (
        ('train', train), ('val', val), ('root', root), ('data_cache', data_cache))}
