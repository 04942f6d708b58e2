#!/usr/bin/env python
"""Training throughput of our ResNet-50 step, and of the data pipeline.

Model: synthetic inputs (no data loading), one process, forward + backward +
RMSpropWarmup update with LastBatchNormalization, as train_imagenet.py does.
Data: the real transforms on the embedded demo JPEGs, one process.

    python benchmarks/throughput.py --device cpu --size 32 --size 64
    python benchmarks/throughput.py --device gpu --size 224      # one GPU

Prints one line per measurement; results are recorded in benchmarks/README.md.
"""

import argparse
import time

import numpy

import chainer_resnet  # noqa: F401
import chainer
import chainer.functions as F

from chainer_resnet import batch_normalization, optimizers, resnet
from chainer_resnet.data import demo, layouts, sampling, transforms


def _sync(device):
    if device.xp is not numpy:
        device.device.synchronize()   # CuPy launches are asynchronous


def model_step_rate(device, size, batch, iters, warmup=2):
    numpy.random.seed(0)
    model = resnet.ResNet50(n_class=1000, bn=batch_normalization.LastBatchNormalization)
    model.to_device(device)
    opt = optimizers.RMSpropWarmup(lr=0.1, alpha_sgd=0.5)
    opt.setup(model)
    xp = device.xp
    x = xp.asarray(numpy.random.standard_normal((batch, 3, size, size)).astype('f'))
    t = xp.asarray(numpy.random.randint(0, 1000, batch).astype('i'))

    def step():
        loss = F.softmax_cross_entropy(model(x), t)
        model.cleargrads()
        loss.backward()
        opt.update()

    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    elapsed = time.perf_counter() - start
    return batch * iters / elapsed, elapsed / iters


def data_rate(size, n=400):
    data = demo.demo_dataset()
    base = layouts.ListDataset(data.train_list, data.root)
    tf = transforms.TrainTransform(size, transforms.IMAGENET_MEAN, transforms.IMAGENET_STD)
    ds = sampling.AugmentedDataset(base, tf, seed=0)
    start = time.perf_counter()
    for i in range(n):
        ds[i * 7 % len(base)]
    return n / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--device', default='cpu', help="'cpu' or 'gpu' (GPU 0)")
    p.add_argument('--size', type=int, action='append')
    p.add_argument('--batch', type=int, default=32)
    p.add_argument('--iters', type=int, default=5)
    args = p.parse_args()
    device = chainer.get_device('@numpy' if args.device == 'cpu' else '@cupy:0')
    device.use()
    for size in args.size or [32]:
        rate, per_iter = model_step_rate(device, size, args.batch, args.iters)
        print('model  device={} size={} batch={}: {:.1f} images/s ({:.3f} s/iteration)'
              .format(args.device, size, args.batch, rate, per_iter), flush=True)
        print('data   transforms size={} (28x28 JPEG source), 1 process: {:.0f} images/s'
              .format(size, data_rate(size)), flush=True)


if __name__ == '__main__':
    main()
