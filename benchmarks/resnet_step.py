"""One synthetic ResNet-50 training step, shared by the benchmarks that time it.

:func:`chainer_step` builds what ``train_imagenet.py`` steps through, without
data loading: our ResNet-50 with LastBatchNormalization, RMSpropWarmup,
softmax cross-entropy, fp32, random inputs of one batch; :func:`timed` times
any step after a warm-up. Used by ``gpu_step.py`` (the GPU check) and
``throughput.py`` (images/s on CPU or GPU).
"""

import time

import numpy


def chainer_step(device, size, batch):
    """(step, sync) for a ResNet-50 training step of `batch` images of `size`^2 on `device`.

    ``step()`` runs forward, backward and the optimizer update; ``sync()``
    waits for the device (CuPy launches are asynchronous; nothing on NumPy).
    The model is seeded (``numpy.random.seed(0)``), so every call builds the
    same weights and inputs.
    """
    import chainer_resnet  # noqa: F401  (chainer compatibility hook first)
    import chainer.functions as F
    from chainer_resnet import batch_normalization, optimizers, resnet

    numpy.random.seed(0)
    model = resnet.ResNet50(n_class=1000, bn=batch_normalization.LastBatchNormalization)
    model.to_device(device)
    opt = optimizers.RMSpropWarmup(lr=0.1, alpha_sgd=0.5)
    opt.setup(model)
    xp = device.xp
    x = xp.asarray(numpy.random.standard_normal((batch, 3, size, size)).astype(numpy.float32))
    t = xp.asarray(numpy.random.randint(0, 1000, batch).astype(numpy.int32))

    def step():
        loss = F.softmax_cross_entropy(model(x), t)
        model.cleargrads()
        loss.backward()
        opt.update()

    return step, lambda: sync(device)


def sync(device):
    """Wait until `device` (a Chainer device) has run the work queued on it."""
    if device.xp is not numpy:
        device.device.synchronize()   # CuPy launches are asynchronous


def timed(step, sync, warmup, iters):
    """(seconds of the `warmup` steps, seconds per step over the next `iters`)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    t1 = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    t2 = time.perf_counter()
    return t1 - t0, (t2 - t1) / iters
