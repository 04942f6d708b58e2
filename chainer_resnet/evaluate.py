"""``python -m chainer_resnet.evaluate MODEL``: exact top-1/top-5 of a trained model.

One process or under ``mpiexec``, CPU or GPU; each validation image is
counted once whatever the number of ranks (the trainer's
:class:`~chainer_resnet.evaluator.ExactEvaluator` over the trainer's
validation shards: :func:`chainer_resnet.data.shards.open_val`). MODEL is
anything :mod:`chainer_resnet.model_file` opens (``model.npz``, a snapshot,
a torchvision state dict). By default the validation set, its subset, the
batch and the preprocessing are those of the run the model file describes,
so a run's final top-1 is reproduced exactly; then:

- ``--crops 10``: the ten crops (corners, centre, mirrored), softmax outputs
  averaged (:class:`CropAverage`);
- ``--bn reestimate --bn-batches N``: the BN statistics re-estimated from N
  training batches per worker (training mode, the recipe's augmentation),
  averaged over the batches and the workers as the trainer averages them
  before an evaluation (``BNStatisticsAllreduce`` with the batches as virtual
  workers), instead of the stored ones (the paper's: the last batch of each
  worker).

Rank 0 prints one line and writes the result as JSON (``--json``, default
beside the model: ``<model>.eval-<crops>-<bn>.json``).
"""

import argparse
import dataclasses
import json
import os
import sys
import time

import chainer_resnet  # noqa: F401  (must precede chainer: compatibility hook)
import chainer
import chainer.functions as F

from chainer_resnet import (arguments, batch_normalization, communication, evaluator, model_file,
                            recipes)
from chainer_resnet.communication import print0
from chainer_resnet.data import layouts, loader, sampling, shards, ten_crop, transforms

USER_ERRORS = (model_file.ModelFileError, layouts.DatasetError, recipes.RecipeError,
               communication.CommunicationError)


class CropAverage(chainer.Chain):
    """Logits of several crops per image: ``log(mean over crops of softmax(model(crop)))``.

    Takes (N, crops, 3, H, W); the log of the averaged probabilities keeps the
    evaluator's loss the cross entropy of the averaged prediction.
    """

    def __init__(self, model):
        super().__init__()
        with self.init_scope():
            self.model = model

    def forward(self, x):
        n, crops = x.shape[:2]
        y = self.model(F.reshape(x, (n * crops,) + x.shape[2:]))
        p = F.mean(F.reshape(F.softmax(y), (n, crops, -1)), axis=1)
        return F.log(p)


class CropNormalize(loader.Normalize):
    """:class:`~chainer_resnet.data.loader.Normalize` for batches of (crops, 3, H, W) images."""

    def normalize(self, x):
        if x.ndim != 5:
            return super().normalize(x)
        return super().normalize(x.reshape((-1,) + x.shape[2:])).reshape(x.shape)


def bn_reestimate(predictor, comm, device, iterator, converter, batches, mode):
    """Replace the stored BN statistics by those of ``batches`` training batches per worker,
    averaged over the batches and the workers (``mode``: the recipe's ``bn_stats_average``)."""
    if not batch_normalization.bn_links(predictor):
        raise model_file.ModelFileError(
            '--bn reestimate needs a model trained with BN without moving averages '
            '(batch_norm=last_batch); this one keeps moving averages. Evaluate it with '
            '--bn stored.')
    kept = batch_normalization.VirtualWorkerStatistics(predictor, batches)
    with chainer.using_config('train', True), chainer.using_config('enable_backprop', False):
        for j in range(batches):
            x, _ = converter(iterator.next(), device)
            predictor(x)
            kept.record(j)
    batch_normalization.BNStatisticsAllreduce(comm, predictor, mode=mode, virtual=kept)()


def _iterator(dataset, batch, loaderjobs, sampler=None):
    """The training iterator (``sampler``'s order, repeating) or the validation one (once)."""
    kwargs = (dict(order_sampler=sampler) if sampler is not None
              else dict(repeat=False, shuffle=False))
    if loaderjobs > 0:
        return chainer.iterators.MultiprocessIterator(dataset, batch, n_processes=loaderjobs,
                                                      **kwargs)
    return chainer.iterators.SerialIterator(dataset, batch, **kwargs)


def evaluate(model, comm, device, *, crops=1, bn='stored', bn_batches=10, val=None,
             train=None, root=None, data_cache=None, val_subset='recipe', batch=None,
             loaderjobs=0, rounding=None):
    """The result dict of one evaluation of ``model`` (a :class:`model_file.Model`) on every rank.

    ``val``/``train``/``root`` default to the data the model file records;
    ``val_subset`` to the recipe's (``None``: every image); ``rounding`` (the
    validation resize's) to the recipe's.
    """
    recipe = model.recipe
    # The run's final evaluation is comparable when the images and their geometry are its.
    comparable = (val is None and val_subset == 'recipe'
                  and rounding in (None, recipe.val_resize_rounding))
    data = model.description.get('data')
    if val is None and data is not None:
        val, root = data.get('val'), root or data.get('root')
        train = train or data.get('train')
        data_cache = data_cache or data.get('data_cache')
    elif val is None:
        raise model_file.ModelFileError(
            '{} does not record its validation data; pass --val (a list file or class-folder '
            'tree; --val demo for the embedded digits)'.format(model.path))
    val = None if val == 'demo' else val
    train = None if train == 'demo' or val is None else train
    if val_subset != 'recipe':
        recipe = dataclasses.replace(recipe, val_subset=val_subset)
    recipe = dataclasses.replace(recipe, virtual_workers_per_rank=1,
                                 val_resize_rounding=rounding or recipe.val_resize_rounding)
    batch = batch or recipe.batch_per_worker
    if bn == 'reestimate':
        if train is None and val is not None:
            raise model_file.ModelFileError('--bn reestimate needs the training set: --train')
        opened = shards.open_data(comm, recipe, train, val, root, data_cache)
        val_base, val_local = opened.val_base, opened.val_local
    else:
        val_base, val_local = shards.open_val(comm, recipe, val, root, data_cache,
                                              classes=model.classes)
    if crops == 10:
        if recipe.augmentation == 'pre_resized':
            raise model_file.ModelFileError('--crops 10 needs a model evaluated with a '
                                            'shorter-side resize (augmentation=random_resized)')
        transform = ten_crop.TenCropTransform(recipe.crop_size, recipe.mean, recipe.std,
                                              normalize=False,
                                              rounding=recipe.val_resize_rounding)
        target = CropAverage(model.predictor)
    else:
        transform = transforms.from_recipe(recipe, normalize=False)[1]
        target = model.predictor
    target.to_device(device)
    normalize = CropNormalize(recipe.mean, recipe.std)
    started = time.time()
    if bn == 'reestimate':
        train_set, sampler, _ = shards.datasets(opened, recipe)
        train_iter = _iterator(train_set, recipe.batch_per_worker, loaderjobs, sampler)
        bn_reestimate(model.predictor, comm, device, train_iter,
                      loader.BadSampleGuard(0, converter=normalize), bn_batches,
                      recipe.bn_stats_average)
        train_iter.finalize()
    val_set = sampling.AugmentedDataset(loader.PILImages(val_base), transform, recipe.seed,
                                        indices=val_local)
    val_iter = _iterator(val_set, batch, loaderjobs)
    result = evaluator.ExactEvaluator(
        val_iter, target, comm, device=device,
        converter=loader.BadSampleGuard(0, converter=normalize, mode='drop')).evaluate()
    val_iter.finalize()
    return {'model': model.path, 'iteration': model.description.get('iteration'),
            'images': int(result['validation/main/images']),
            'top1': float(result['validation/main/accuracy']),
            'top5': float(result['validation/main/top5']),
            'loss': float(result['validation/main/loss']),
            'crops': crops, 'bn': bn, 'bn_batches_per_worker': bn_batches if bn != 'stored'
            else None, 'ranks': comm.size, 'val': val or 'demo', 'val_subset': recipe.val_subset,
            'batch': batch, 'rounding': recipe.val_resize_rounding,
            'seconds': round(time.time() - started, 2),
            'run_final': model.description.get('validation') if comparable else None}


def summary(result):
    """The one line rank 0 prints."""
    how = '{}, BN statistics {}'.format(
        'centre crop' if result['crops'] == 1 else '10 crops',
        'as stored' if result['bn'] == 'stored' else 're-estimated over {} batch(es) per '
        'worker'.format(result['bn_batches_per_worker']))
    line = '{}: top-1 {:.2%}, top-5 {:.2%}, loss {:.6f} on {} images ({}; {} rank(s), {:.1f} s)'\
        .format(result['model'], result['top1'], result['top5'], result['loss'],
                result['images'], how, result['ranks'], result['seconds'])
    final = result.get('run_final')
    if (final and result['crops'] == 1 and result['bn'] == 'stored'
            and final.get('iteration') == result['iteration']):
        line += '; the run\'s final evaluation: top-1 {:.2%} ({})'.format(
            final['top1'], 'the same' if final['top1'] == result['top1'] else 'differs')
    return line


def parse_args(argv):
    p = arguments.Parser(prog='python -m chainer_resnet.evaluate',
                                description=__doc__.split('\n\n')[0])
    p.add_argument('model', help='model.npz, snapshot_iter_<N>.0, or torchvision .pth/'
                   '.safetensors')
    p.add_argument('--crops', type=int, choices=(1, 10), default=1,
                   help='1: centre crop (default); 10: corners, centre and their mirror images')
    p.add_argument('--bn', choices=('stored', 'reestimate'), default='stored',
                   help='BN statistics: as stored in the model (default), or re-estimated')
    p.add_argument('--bn-batches', type=arguments.count(1), default=10, metavar='N',
                   help='training batches per worker for --bn reestimate (default 10)')
    p.add_argument('--val', help='validation list file or class-folder tree (default: the '
                   'run\'s; "demo": the embedded digits)')
    p.add_argument('--train', help='training set, for --bn reestimate (default: the run\'s)')
    p.add_argument('--root', help='folder the list files\' paths are relative to')
    p.add_argument('--data-cache', help='where the demo dataset is built')
    p.add_argument('--val-subset', default='recipe', type=_subset,
                   help='evaluate the first N images of the fixed permutation, or "all" '
                   '(default: what the run evaluated)')
    p.add_argument('--batch', type=arguments.count(1), help='images per batch and rank '
                   '(default: the run\'s per-worker batch)')
    p.add_argument('--rounding', choices=('round', 'torchvision'),
                   help='the validation resize\'s rounding (default: the model\'s recipe\'s; '
                   'transforms.ValTransform)')
    p.add_argument('--device', default='cpu', type=arguments.device_name,
                   help="'cpu', 'gpu' or a GPU id")
    p.add_argument('--loaderjobs', type=arguments.count(0), default=0,
                   help='loader processes per rank')
    p.add_argument('--json', help='where rank 0 writes the result (default: beside MODEL)')
    p.add_argument('--recipe-json', help='the run\'s recipe.json, for a model.npz written '
                   'before model files described themselves')
    p.add_argument('--recipe', help='a recipe name, likewise (with --set)')
    p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE')
    return p.parse_args(argv)


def _subset(text):
    if text in ('recipe', 'all'):
        return None if text == 'all' else text
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError('must be >= 1, "all" or "recipe"')
    return value


def given_recipe(args):
    """The recipe given for an undescribed model file (--recipe-json, or --recipe/--set)."""
    if args.recipe_json:
        return model_file.read_recipe_json(args.recipe_json)
    if args.recipe:
        return recipes.resolve(args.recipe, args.set)
    return None


def open_model(comm, path, recipe=None):
    """The model in ``path`` on every rank; rank 0 reads the file and broadcasts it."""
    arrays, description = communication.from_rank0(
        comm, model_file.read, path, recipe, errors=(model_file.ModelFileError,))
    return model_file.Model(model_file.from_arrays(arrays, description, path), description,
                            path)


def main(argv=None):
    """Command-line entry point; returns the exit status."""
    args = parse_args(argv)
    if args.loaderjobs > 0:
        communication.start_forkserver()      # before the communicator (field-notes.md #1)
    communication.install_abort_on_error()
    comm = communication.create_communicator(gpu=False)
    try:
        device = communication.device(args.device, comm)
        device.use()
        model = open_model(comm, args.model, given_recipe(args))
        print0(comm, 'evaluate: {} ({}, {} classes, iteration {}) on {} rank(s)'.format(
            args.model, model.description['architecture']['variant'],
            model.description['architecture']['num_classes'],
            model.description.get('iteration'), comm.size))
        result = evaluate(model, comm, device, crops=args.crops, bn=args.bn,
                          bn_batches=args.bn_batches, val=args.val, train=args.train,
                          root=args.root, data_cache=args.data_cache,
                          val_subset=args.val_subset, batch=args.batch,
                          loaderjobs=args.loaderjobs, rounding=args.rounding)
    except USER_ERRORS as e:
        collective = getattr(e, 'collective_rank', None)
        if not collective:
            print('error: {}'.format(e), file=sys.stderr, flush=True)
        if collective is None:
            communication.abort_if_distributed(2)
        return 2
    if comm.rank == 0:
        path = args.json or '{}.eval-{}-{}{}.json'.format(
            os.path.splitext(args.model)[0], 'centre' if args.crops == 1 else '10crop',
            args.bn, '-' + args.rounding if args.rounding else '')
        with open(path, 'w', encoding='utf-8') as f:
            json.dump(result, f, indent=2, sort_keys=True)
        print(summary(result))
        print('result: {}'.format(path), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
