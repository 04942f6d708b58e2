#!/usr/bin/env python
"""The exports of a model against its Chainer logits, in torchvision and onnxruntime.

    python -m chainer_resnet.export torchvision RUN/model.npz RUN/model.pth
    python -m chainer_resnet.export onnx RUN/model.npz RUN/model.onnx
    .venv-ref/bin/python benchmarks/export_check.py RUN [IMAGE_GLOB]

Every 10th image of IMAGE_GLOB (default: the demo's validation digits) through
the model file's validation transform; prints the largest logit difference
and whether the top-1 classes agree. Needs torch, torchvision and onnxruntime
(the reference virtualenv, ``make .venv-ref/.installed``).
"""

import glob
import os
import sys

import numpy

import chainer_resnet  # noqa: F401  (must precede chainer: compatibility hook)
import chainer
import onnxruntime
import torch
import torchvision

from chainer_resnet import model_file
from chainer_resnet.data import demo, layouts, transforms


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    run = argv[0]
    pattern = argv[1] if len(argv) > 1 else os.path.join(
        demo.default_data_dir(), 'mnist5k', 'val', '*', '*.jpg')
    model = model_file.load(os.path.join(run, 'model.npz'))
    t = transforms.from_recipe(model.recipe)[1]
    x = numpy.stack([t(layouts.read_image(p)) for p in sorted(glob.glob(pattern))[::10]])
    with chainer.using_config('train', False):
        y = model.predictor(x).array
    tv = torchvision.models.resnet50(
        num_classes=model.description['architecture']['num_classes'])
    tv.load_state_dict(torch.load(os.path.join(run, 'model.pth'), weights_only=True))
    with torch.no_grad():
        by_torch = tv.eval()(torch.from_numpy(x)).numpy()
    by_onnx = onnxruntime.InferenceSession(os.path.join(run, 'model.onnx')).run(
        None, {'input': x})[0]
    for name, got in (('torchvision', by_torch), ('onnxruntime', by_onnx)):
        print('{}: {} images, max |logit difference| {:.1e} (largest logit {:.1f}), same '
              'top-1: {}'.format(name, len(x), abs(got - y).max(), abs(y).max(),
                                 bool((got.argmax(1) == y.argmax(1)).all())))


if __name__ == '__main__':
    main()
