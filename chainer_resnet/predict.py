"""``python -m chainer_resnet.predict MODEL IMAGE...``: the top-k classes of each image.

MODEL is anything :mod:`chainer_resnet.model_file` opens; its description
gives the classes' names and the preprocessing (the validation transform of
the run: resize, centre crop, mean/std), so nothing else is needed. One line
per image::

    results/demo/val/3/00042.jpg: 3 99.71%, 5 0.12%, 8 0.07%, ...

``--crops 10`` averages the softmax over the ten crops; ``--json`` prints
one JSON object per image instead.
"""

import argparse
import json
import sys

import numpy

import chainer_resnet  # noqa: F401  (must precede chainer: compatibility hook)
import chainer
import chainer.functions as F

from chainer_resnet import evaluate, model_file, recipes
from chainer_resnet.data import layouts, ten_crop, transforms


def predict(model, paths, top=5, crops=1, batch=32, device=None):
    """``[(path, [(class name, label, probability), ...])]`` for each image, best first."""
    recipe = model.recipe
    if crops == 10:
        transform = ten_crop.TenCropTransform(recipe.crop_size, recipe.mean, recipe.std,
                                              rounding=recipe.val_resize_rounding)
        target = evaluate.CropAverage(model.predictor)
    else:
        transform = transforms.from_recipe(recipe)[1]
        target = model.predictor
    device = device or chainer.get_device('@numpy')
    target.to_device(device)
    top = min(top, model.description['architecture']['num_classes'])
    results = []
    for start in range(0, len(paths), batch):
        chunk = paths[start:start + batch]
        x = numpy.stack([transform(layouts.read_image(path, as_array=False)) for path in chunk])
        with chainer.using_config('train', False), \
                chainer.using_config('enable_backprop', False):
            y = target(device.send(x))
            p = chainer.backend.CpuDevice().send(
                F.softmax(y).array if crops == 1 else F.exp(y).array)
        for path, row in zip(chunk, p):
            best = numpy.argsort(-row, kind='stable')[:top]
            results.append((path, [(model.class_name(int(k)), int(k), float(row[k]))
                                   for k in best]))
    return results


def main(argv=None):
    """Command-line entry point; returns the exit status."""
    p = argparse.ArgumentParser(prog='python -m chainer_resnet.predict',
                                description=__doc__.split('\n\n')[0])
    p.add_argument('model', help='model.npz, snapshot_iter_<N>.0, or torchvision .pth/'
                   '.safetensors')
    p.add_argument('images', nargs='+', help='image files')
    p.add_argument('--top', type=int, default=5, help='classes per image (default 5)')
    p.add_argument('--crops', type=int, choices=(1, 10), default=1)
    p.add_argument('--batch', type=int, default=32)
    p.add_argument('--device', default='cpu', help="'cpu', 'gpu' (GPU 0) or a GPU id")
    p.add_argument('--json', action='store_true', help='one JSON object per image')
    p.add_argument('--recipe-json', help='the run\'s recipe.json, for a model.npz written '
                   'before model files described themselves')
    p.add_argument('--recipe', help='a recipe name, likewise (with --set)')
    p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE')
    args = p.parse_args(argv)
    if args.top < 1 or args.batch < 1:
        p.error('--top and --batch must be >= 1')
    try:
        device = chainer.get_device('@numpy' if args.device == 'cpu' else '@cupy:{}'.format(
            0 if args.device == 'gpu' else int(args.device)))
        model = model_file.load(args.model, evaluate.given_recipe(args))
        results = predict(model, args.images, top=args.top, crops=args.crops,
                          batch=args.batch, device=device)
    except (model_file.ModelFileError, layouts.DatasetError, recipes.RecipeError) as e:
        print('error: {}'.format(e), file=sys.stderr, flush=True)
        return 2
    for path, best in results:
        if args.json:
            print(json.dumps({'image': path, 'top': [
                {'class': name, 'label': label, 'probability': prob}
                for name, label, prob in best]}))
        else:
            print('{}: {}'.format(path, ', '.join(
                '{} {:.2%}'.format(name, prob) for name, _, prob in best)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
