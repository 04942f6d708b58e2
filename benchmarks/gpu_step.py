#!/usr/bin/env python
"""The timed pieces of the GPU check (benchmarks/gpu_check.sh), one per call.

    python benchmarks/gpu_step.py chainer --device gpu --size 224 [--cudnn never]
    python benchmarks/gpu_step.py torch --device gpu --size 224
    python benchmarks/gpu_step.py allreduce --device gpu      # under mpiexec -n 1, or alone
    python benchmarks/gpu_step.py chainer --device cpu --size 32   # the dry run's rehearsal

- ``chainer``: one training step of our ResNet-50 (LastBatchNormalization,
  RMSpropWarmup, softmax cross-entropy), fp32, synthetic inputs, batch 32,
  with ``use_cudnn`` 'auto' (cuDNN where CuPy has it) or 'never', and the
  trainer's cuDNN options (``--cudnn-autotune``, ``--cudnn-workspace``: by
  default the trainer's defaults, chainer_resnet/gpu.py);
- ``torch``: the same step in PyTorch: torchvision's ``resnet50``, SGD with
  momentum 0.9, fp32 (TF32 off, so both frameworks do fp32 arithmetic),
  cuDNN autotuning on;
- ``allreduce``: ChainerMN ``pure_nccl`` with ``allreduce_grad_dtype=float16``
  at world size 1, through ``communication.create_communicator`` as the
  trainer calls it, on gradients the size of ResNet-50's (25.6 M), checked
  against the fp16 rounding of the input; on the CPU the ``naive``
  communicator (fp32) instead.

Every call ends with one line ``RESULT status=OK|SKIP|FAIL key=value ...``
(``reason=`` last, the rest of the line) that gpu_check.sh puts into its
report; the exit status is 0 (OK), 3 (SKIP) or 1 (FAIL).
"""

import argparse
import os
import sys
import traceback

import numpy

import resnet_step   # benchmarks/resnet_step.py, beside this file
from chainer_resnet.gpu import DEFAULT_AUTOTUNE, DEFAULT_WORKSPACE_MIB

OK, FAIL, SKIP = 0, 1, 3


def result(status, reason=None, **values):
    fields = ['status=' + {OK: 'OK', FAIL: 'FAIL', SKIP: 'SKIP'}[status]]
    fields += ['{}={}'.format(k, v) for k, v in values.items()]
    if reason:
        fields.append('reason=' + ' '.join(str(reason).split()))
    print('RESULT ' + ' '.join(fields), flush=True)
    return status


def chainer_step(args):
    import chainer_resnet  # noqa: F401  (chainer compatibility hook first)
    import chainer
    from chainer_resnet import gpu as gpu_stack

    gpu = args.device == 'gpu'
    info = {}
    gpu_stack.configure_cudnn(args.cudnn_autotune == 'on', args.cudnn_workspace)
    if gpu:
        import cupy
        from chainer.backends import cuda
        info['cupy'] = cupy.__version__
        info['gpu'] = _cupy_gpu_name(cupy)
        if args.cudnn == 'auto':
            if not cuda.cudnn_enabled:
                return result(SKIP, 'CuPy {} has no cuDNN (the use_cudnn=never row is the '
                              'one that runs)'.format(cupy.__version__), **info)
            try:
                info['cudnn'] = cuda.cuda.cudnn.getVersion()
            except Exception:   # where CuPy keeps it differs between releases
                info['cudnn'] = 'yes'
            info['autotune'] = args.cudnn_autotune
            info['workspace_mib'] = args.cudnn_workspace
    device = chainer.get_device('@cupy:0' if gpu else '@numpy')
    device.use()
    step, sync = resnet_step.chainer_step(device, args.size, args.batch)

    with chainer.using_config('use_cudnn', args.cudnn):
        warm, per_iter = resnet_step.timed(step, sync, args.warmup, args.iters)
    return result(OK, images_per_s='{:.1f}'.format(args.batch / per_iter),
                  s_per_iter='{:.4f}'.format(per_iter), warmup_s='{:.1f}'.format(warm),
                  size=args.size, batch=args.batch, use_cudnn=args.cudnn, **info)


def _cupy_gpu_name(cupy):
    name = cupy.cuda.runtime.getDeviceProperties(0)['name']
    return (name.decode() if isinstance(name, bytes) else name).replace(' ', '_')


def torch_step(args):
    try:
        import torch
        import torchvision
    except ImportError as exc:
        return result(SKIP, 'torch/torchvision not importable ({})'.format(exc))
    gpu = args.device == 'gpu'
    if gpu and not torch.cuda.is_available():
        return result(SKIP, 'torch {} sees no CUDA device'.format(torch.__version__))
    dev = torch.device('cuda' if gpu else 'cpu')
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    model = torchvision.models.resnet50(weights=None).to(dev)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    x = torch.randn(args.batch, 3, args.size, args.size, device=dev)
    t = torch.randint(0, 1000, (args.batch,), device=dev)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), t).backward()
        opt.step()

    def sync():
        if gpu:
            torch.cuda.synchronize()

    warm, per_iter = resnet_step.timed(step, sync, args.warmup, args.iters)
    info = {'torch': torch.__version__}
    if gpu:
        info['gpu'] = torch.cuda.get_device_name(0).replace(' ', '_')
        info['cudnn'] = torch.backends.cudnn.version()
    return result(OK, images_per_s='{:.1f}'.format(args.batch / per_iter),
                  s_per_iter='{:.4f}'.format(per_iter), warmup_s='{:.1f}'.format(warm),
                  size=args.size, batch=args.batch, **info)


def allreduce(args):
    import chainer_resnet  # noqa: F401
    import chainer
    from chainer_resnet import communication

    gpu = args.device == 'gpu'
    comm = communication.create_communicator(gpu=gpu, allreduce_grad_dtype='float16')
    if comm.size != 1:
        return result(FAIL, 'expected world size 1, got {}'.format(comm.size))
    # Gradients the size of ResNet-50's (25,557,032 values) in a few arrays.
    sizes = [9408, 2359296, 2048000, 21140328] if args.size >= 224 else [64, 1000]
    model = chainer.ChainList(*[chainer.Link() for _ in sizes])
    rng = numpy.random.default_rng(0)
    grads = []
    for link, n in zip(model, sizes):
        with link.init_scope():
            link.w = chainer.Parameter(numpy.zeros(n, dtype=numpy.float32))
        grads.append((rng.standard_normal(n) * 0.01).astype(numpy.float32))
    if gpu:
        import cupy
        model.to_device('@cupy:0')
        xp, sync = cupy, cupy.cuda.Device().synchronize
    else:
        xp, sync = numpy, (lambda: None)

    def step():
        for link, g in zip(model, grads):
            link.w.grad = xp.asarray(g)
        comm.multi_node_mean_grad(model)

    warm, per_call = resnet_step.timed(step, sync, args.warmup, args.iters)
    step()
    sync()
    worst = 0.0
    for link, g in zip(model, grads):
        got = chainer.backends.cuda.to_cpu(link.w.grad)
        expected = communication.fp16_allreduce_mean(g.reshape(1, -1)) if gpu else g
        numpy.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-6)
        worst = max(worst, float(numpy.max(numpy.abs(got - g))))
    return result(OK, communicator=type(comm).__name__,
                  dtype='float16' if gpu else 'float32', values=sum(sizes),
                  ms_per_allreduce='{:.2f}'.format(1e3 * per_call),
                  max_abs_change='{:.1e}'.format(worst))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('what', choices=['chainer', 'torch', 'allreduce'])
    p.add_argument('--device', choices=['gpu', 'cpu'], default='gpu')
    p.add_argument('--size', type=int, default=224, help='input height and width')
    p.add_argument('--batch', type=int, default=32)
    p.add_argument('--cudnn', choices=['auto', 'never'], default='auto',
                   help="chainer.config.use_cudnn for the chainer step")
    p.add_argument('--cudnn-autotune', choices=['on', 'off'],
                   default='on' if DEFAULT_AUTOTUNE else 'off',
                   help="the trainer's --cudnn-autotune (default: its default)")
    p.add_argument('--cudnn-workspace', type=int, default=DEFAULT_WORKSPACE_MIB,
                   metavar='MIB', help="the trainer's --cudnn-workspace (default: its default)")
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--iters', type=int, default=10)
    args = p.parse_args(argv)
    os.environ.setdefault('PYTHONUNBUFFERED', '1')
    try:
        return {'chainer': chainer_step, 'torch': torch_step, 'allreduce': allreduce}[
            args.what](args)
    except Exception as exc:
        traceback.print_exc()
        return result(FAIL, '{}: {}'.format(type(exc).__name__, exc))


if __name__ == '__main__':
    sys.exit(main())
