#!/usr/bin/env python
"""How large are ResNet-50's per-worker gradients, and does an fp16 sum of
1,024 of them overflow? (The paper's allreduce sums in fp16, then scales.)

Computes one worker's gradient (batch 32, the paper's per-GPU batch) of our
ResNet-50 on the embedded demo images, at initialisation and, if a trained
model file is given, for that model; reports the largest magnitudes per
layer kind, the fraction of elements below fp16's normal range, and the
error of the simulated fp16 mean over 1,024 ranks (each rank's gradient
perturbed by batch-to-batch noise) for both the default (sum, then scale)
and the pre-scaled variant.

    python benchmarks/fp16_allreduce.py [--size 224] [--model results/demo/model.npz]
"""

import argparse
import time

import numpy

import chainer_resnet  # noqa: F401
import chainer
import chainer.functions as F

from chainer_resnet import batch_normalization, communication, resnet
from chainer_resnet.data import demo, layouts, sampling, transforms


def gradients(model, x, t):
    model.cleargrads()
    with chainer.using_config('train', True):
        loss = F.softmax_cross_entropy(model(x), t)
    loss.backward()
    return {name: p.grad.copy() for name, p in model.namedparams()}


def report(title, grads, workers, rng):
    flat = numpy.concatenate([g.ravel() for g in grads.values()])
    absg = numpy.abs(flat)
    top = sorted(((float(numpy.abs(g).max()), n) for n, g in grads.items()),
                 reverse=True)[:3]
    print('\n## {}'.format(title))
    print('elements: {:,}; max |g| = {:.4g} ({}); 99.99th pct = {:.3g}; median = {:.3g}'
          .format(flat.size, absg.max(), top[0][1], numpy.percentile(absg, 99.99),
                  numpy.median(absg)))
    print('largest per parameter: ' + ', '.join('{} {:.3g}'.format(n, v) for v, n in top))
    print('fp16 sum over {} ranks overflows if max |g| > {:.1f}: {}'.format(
        workers, communication.FP16_MAX / workers,
        'YES' if communication.fp16_sum_overflows(absg.max(), workers) else 'no'))
    print('elements below fp16 normal range (6.1e-5): {:.1%} as sent, {:.1%} if '
          'pre-scaled by 1/{}'.format((absg < 6.1e-5).mean(),
                                       (absg / workers < 6.1e-5).mean(), workers))
    # Simulated allreduce on a sample of elements: rank gradients = g + noise.
    idx = rng.choice(flat.size, size=min(20000, flat.size), replace=False)
    g = flat[idx]
    per_rank = g[None, :] * (1 + 0.5 * rng.standard_normal((workers, g.size))).astype(
        numpy.float32)
    exact = per_rank.astype(numpy.float64).mean(axis=0)
    scale = numpy.abs(exact).max()
    for prescale in (False, True):
        got = communication.fp16_allreduce_mean(per_rank, prescale=prescale)
        err = numpy.abs(got - exact)
        print('simulated {} ranks, {}: max abs error {:.3g} ({:.3g} of max |mean|), '
              'median relative error {:.3g}, non-finite {}'.format(
                  workers, 'pre-scaled ' if prescale else 'sum-then-scale',
                  numpy.nanmax(err), numpy.nanmax(err) / scale,
                  numpy.nanmedian(err / numpy.maximum(numpy.abs(exact), 1e-12)),
                  int((~numpy.isfinite(got)).sum())))


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--size', type=int, default=224)
    p.add_argument('--batch', type=int, default=32)
    p.add_argument('--workers', type=int, default=1024)
    p.add_argument('--model', help='trained model.npz (10 classes) to also measure')
    args = p.parse_args()
    rng = numpy.random.default_rng(0)
    data = demo.demo_dataset()
    base = layouts.ListDataset(data.train_list, data.root)
    tf = transforms.TrainTransform(args.size, transforms.IMAGENET_MEAN, transforms.IMAGENET_STD)
    ds = sampling.AugmentedDataset(base, tf, seed=0)
    ids = rng.choice(len(base), args.batch, replace=False)
    x = numpy.stack([ds[i][0] for i in ids])
    t = numpy.array([ds[i][1] for i in ids], numpy.int32)
    for title, path in (('initialisation', None), ('trained model', args.model)):
        if title == 'trained model' and path is None:
            continue
        numpy.random.seed(0)
        model = resnet.ResNet50(n_class=10, bn=batch_normalization.LastBatchNormalization)
        if path:
            chainer.serializers.load_npz(path, model)
        start = time.time()
        grads = gradients(model, x, t)
        report('{} ({}x{} px, batch {}, one step {:.1f} s on this CPU)'.format(
            title, args.size, args.size, args.batch, time.time() - start),
            grads, args.workers, rng)


if __name__ == '__main__':
    main()
