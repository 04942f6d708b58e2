"""``python -m chainer_resnet.export``: a model to torchvision or ONNX, and torchvision weights in.

::

    python -m chainer_resnet.export torchvision MODEL OUT.pth|OUT.safetensors
    python -m chainer_resnet.export onnx MODEL OUT.onnx
    python -m chainer_resnet.export from-torchvision STATE.pth|.safetensors OUT.npz \\
        [--variant v1.5] [--classes FILE]

- ``torchvision``: a state dict for ``torchvision.models.resnet50(num_classes=...)``
  (v1.5 models only), BN variances shifted by ``eps - 1e-5``
  (:mod:`chainer_resnet.torchvision_weights`); ``.pth`` needs torch,
  ``.safetensors`` only NumPy. The description is written beside it
  (``OUT.json``: classes and preprocessing).
- ``onnx``: the graph with the model's own BN eps (:mod:`chainer_resnet.onnx_graph`);
  the description rides in the graph's metadata. Needs ``onnx``
  (``pip install chainer_resnet[export]``).
- ``from-torchvision``: a described ``model.npz`` (BN eps 1e-5, torchvision's
  preprocessing) that ``evaluate``, ``predict`` and ``--init-model`` read;
  ``--classes`` names the classes (one per line, in label order). A
  ``STATE.json`` beside the file (what ``torchvision`` export writes) gives
  the description back: a round trip returns the model as it was.

Every command prints what it wrote; a user error is one ``error:`` line and exit 2.
"""

import argparse
import json
import os
import sys

import chainer_resnet  # noqa: F401  (must precede chainer: compatibility hook)
from chainer.serializers import npz

from chainer_resnet import evaluate, model_file, onnx_graph, recipes, torchvision_weights


def to_torchvision(model, out):
    """Write ``model``'s torchvision state dict to ``out`` and its description to ``out.json``."""
    try:
        state = torchvision_weights.to_torchvision(npz.serialize(model.predictor),
                                                   model.description['architecture'])
    except ValueError as e:
        raise model_file.ModelFileError(str(e)) from None
    torchvision_weights.write(out, state)
    with open(out + '.json', 'w', encoding='utf-8') as f:
        json.dump(model.description, f, indent=2, sort_keys=True)
    return ('{}: torchvision resnet50 state dict, {} entries, {} classes (load with '
            'torchvision.models.resnet50(num_classes={}).load_state_dict); description: {}'
            .format(out, len(state), model.description['architecture']['num_classes'],
                    model.description['architecture']['num_classes'], out + '.json'))


def to_onnx(model, out):
    """Write ``model``'s ONNX graph to ``out``."""
    onnx_graph.write(out, model.predictor, model.description)
    arch = model.description['architecture']
    return ('{}: ONNX opset {}, input "{}" (N, 3, H, W) float32, output "{}" (N, {}); '
            'ResNet-50 {}, BN eps {}'.format(out, onnx_graph.OPSET, onnx_graph.INPUT,
                                            onnx_graph.OUTPUT, arch['num_classes'],
                                            arch['variant'], arch['bn_eps']))


def from_torchvision(state_path, out, variant='v1.5', classes_path=None):
    """Write a described model.npz from a torchvision ResNet-50 state dict."""
    classes = None
    if classes_path:
        with open(classes_path, encoding='utf-8') as f:
            classes = [line.strip() for line in f if line.strip()]
    base = None
    if os.path.exists(state_path + '.json'):     # written by our export: the description
        with open(state_path + '.json', encoding='utf-8') as f:
            base = json.load(f)
    arrays, description = torchvision_weights.read(state_path, variant=variant,
                                                   classes=classes, base=base)
    n = description['architecture']['num_classes']
    if classes is not None and len(classes) != n:
        raise model_file.ModelFileError('{} names {} classes, the weights have {}'.format(
            classes_path, len(classes), n))
    predictor = model_file.from_arrays(arrays, description, state_path)
    model_file.save(out, predictor, description)
    return '{}: ResNet-50 {}, {} classes, BN eps {} (from {}{})'.format(
        out, description['architecture']['variant'], n, description['architecture']['bn_eps'],
        state_path, '; description from {}.json'.format(state_path) if base else '')


def main(argv=None):
    """Command-line entry point; returns the exit status."""
    p = argparse.ArgumentParser(prog='python -m chainer_resnet.export',
                                description=__doc__.split('\n\n')[0])
    sub = p.add_subparsers(dest='command', required=True)
    for name, what in (('torchvision', 'OUT.pth or OUT.safetensors'), ('onnx', 'OUT.onnx')):
        s = sub.add_parser(name, help='write a {} file'.format(what))
        s.add_argument('model', help='model.npz, snapshot_iter_<N>.0, or torchvision weights')
        s.add_argument('out', help=what)
        s.add_argument('--recipe-json', help='the run\'s recipe.json, for a model.npz '
                       'written before model files described themselves')
        s.add_argument('--recipe', help='a recipe name, likewise (with --set)')
        s.add_argument('--set', action='append', default=[], metavar='KEY=VALUE')
    s = sub.add_parser('from-torchvision', help='a torchvision resnet50 state dict to model.npz')
    s.add_argument('state', help='.pth/.pt (needs torch) or .safetensors')
    s.add_argument('out', help='the model.npz to write')
    s.add_argument('--variant', choices=('v1.5', 'v1'), default='v1.5',
                   help='torchvision\'s resnet50 is v1.5 (default)')
    s.add_argument('--classes', help='a text file of class names, one per line, label order')
    args = p.parse_args(argv)
    try:
        if args.command == 'from-torchvision':
            line = from_torchvision(args.state, args.out, args.variant, args.classes)
        else:
            if not args.out.endswith(('.pth', '.pt', '.safetensors') if args.command ==
                                     'torchvision' else ('.onnx',)):
                raise model_file.ModelFileError(
                    '{}: the {} export writes {}'.format(
                        args.out, args.command, '.pth, .pt or .safetensors'
                        if args.command == 'torchvision' else '.onnx'))
            model = model_file.load(args.model, evaluate.given_recipe(args))
            line = (to_torchvision if args.command == 'torchvision' else to_onnx)(
                model, args.out)
    except (model_file.ModelFileError, recipes.RecipeError, OSError) as e:
        print('error: {}'.format(e), file=sys.stderr, flush=True)
        return 2
    print(line, flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
