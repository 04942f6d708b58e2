"""Record every CUDA kernel one training step and one evaluation launch, without a GPU.

Runs, under :mod:`meta_cupy` (a NumPy-backed CuPy that records kernels), the
trainer itself: ``train_imagenet.main`` with ``--device gpu`` on the smoke
recipe for one iteration and the evaluation after it (ResNet-50 without cuDNN,
LastBatchNormalization, the uint8 normalisation on the device, RMSpropWarmup
with the weight-decay hook, ChainerMN's ``pure_nccl`` communicator with the fp16
allreduce, the BN-statistics allreduce, the exact evaluator, the health signals at
their interval). Then the paths a
training step of another configuration takes: RMSpropWarmup's update in
float16 and float64, and the fp32 allreduce (``allreduce_grad_dtype=None``).

Writes the records (JSON: one entry per distinct kernel and argument types)
for ``compile_kernels.py`` and checks that every kernel this project knows of
was seen, so a change that moves a kernel out of the captured path fails
here instead of shrinking the check.

    python tests/cuda_compile/capture.py OUT.json
"""

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# The kernels a GPU step must launch, by name (ours, ChainerMN's and Chainer's on
# the ResNet-50 path without cuDNN), each with the dtypes it must be seen in
# (None: any).
EXPECTED = {
    'rmsprop_warmup': {'float16', 'float32', 'float64'},
    'weight_decay_except_bn': {'float32'},
    'chainer_resnet_normalize_uint8': None,
    'cupy_batched_pack_params': None,
    'cupy_batched_unpack_params': None,
    'div_by_size': {'float16', 'float32'},
    'im2col': None, 'col2im': None,                     # convolution without cuDNN
    'max_pool_2d_fwd': None, 'max_pool_2d_bwd': None,
    'bn_fwd': None, 'bn_bwd': None, 'relu_bwd': None,
    'crossent_fwd': None, 'softmax_crossent_bwd': None,
    'softmax_crossent_no_reduce_fwd': None,             # the evaluator's per-image loss
    # the health signals at their interval (fp16 census, per-layer norms, BN agreement)
    'health_count_between': None, 'health_abs_max': None,
    'health_sum_of_squares': None, 'health_sum_of_squared_differences': None,
}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('out', help='the JSON file to write')
    return p.parse_args(argv)


def train_one_step(out):
    """train_imagenet.main on the GPU path: 1 iteration, then an evaluation."""
    sys.path.insert(0, ROOT)
    import train_imagenet
    train_imagenet.main([
        '--recipe', 'smoke', '--device', 'gpu', '--out', out, '--loaderjobs', '0',
        '--no-progress', '--stop-after-iters', '1',
        # the health signals (chainer_resnet/health.py) at this iteration too
        '--health-interval', '1',
        # one iteration per epoch: the evaluation after epoch 1 runs at iteration 1
        '--set', 'train_subset=8', '--set', 'train_images=8', '--set', 'val_subset=8'])


def other_dtypes():
    """RMSpropWarmup's update in fp16 and fp64; pure_nccl's fp32 allreduce."""
    import chainer
    import chainermn
    import numpy
    from chainer_resnet import optimizers
    for dtype in (numpy.float16, numpy.float64):
        link = chainer.Link()
        with link.init_scope():
            link.w = chainer.Parameter(numpy.ones(5, dtype=dtype))
        link.to_device('@cupy:0')
        opt = optimizers.RMSpropWarmup(lr=0.1, alpha_sgd=0.5, eps=1e-4)
        opt.setup(link)
        link.w.grad = link.xp.ones(5, dtype=dtype)
        opt.update()
    comm = chainermn.create_communicator('pure_nccl', allreduce_grad_dtype=None)
    link = chainer.Link()
    with link.init_scope():
        link.w = chainer.Parameter(numpy.ones(5, dtype=numpy.float32))
    link.to_device('@cupy:0')
    link.w.grad = link.xp.ones(5, dtype=numpy.float32)
    comm.multi_node_mean_grad(link)


def unpatched_controls():
    """ChainerMN's pack/unpack kernels as it ships them (no _compat point 5): the
    negative controls, which must fail to compile where CuPy lacks cuda_fp16.h."""
    import importlib.util
    from chainermn.communicators import _memory_utility as patched
    # Under another module name the compatibility hook does not rewrite it.
    spec = importlib.util.spec_from_file_location('memory_utility_as_shipped',
                                                  patched.__file__)
    shipped = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shipped)
    controls = []
    for name in ('_cupy_batched_pack_params', '_cupy_batched_unpack_params'):
        definition = getattr(shipped, name)().definition
        if definition['code'] == getattr(patched, name)().definition['code']:
            # No patch in force: the recorded launch is the shipped source itself.
            print('capture: {} runs as ChainerMN ships it (no control)'.format(name))
            continue
        controls.append({'kind': 'raw', 'definition': definition, 'args': [],
                         'caller': 'chainermn as shipped',
                         'control': {'what': 'ChainerMN source without _compat point 5',
                                     'expect': {'13': 'compiles', '14': 'fails'}}})
    return controls


def missing(records):
    """The EXPECTED kernels (or dtypes) that no record shows."""
    seen = {}
    for r in records:
        name = r['definition']['name']
        dtypes = {a['dtype'] for a in r['args'] if a['kind'] == 'ndarray'}
        seen.setdefault(name, set()).update(dtypes)
    gaps = []
    for name, dtypes in EXPECTED.items():
        if name not in seen:
            gaps.append(name)
        elif dtypes is not None and not dtypes <= seen[name]:
            gaps.append('{} in {}'.format(name, ', '.join(sorted(dtypes - seen[name]))))
    return gaps


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, HERE)
    import meta_cupy
    meta_cupy.install()
    import chainer_resnet  # noqa: F401  (the compatibility hook, before chainer)
    import chainer
    if not chainer.backends.cuda.available or chainer.backends.cuda.cudnn_enabled:
        raise SystemExit('capture: Chainer did not take meta-CuPy as a GPU without cuDNN')
    start = time.time()
    with tempfile.TemporaryDirectory(prefix='cuda-capture-') as tmp:
        train_one_step(os.path.join(tmp, 'run'))
    other_dtypes()
    records = meta_cupy.RECORDS
    gaps = missing(records)
    records = records + unpatched_controls()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump({'records': records}, f, indent=1, sort_keys=True)
    names = sorted({r['definition']['name'] for r in records})
    print('capture: {} kernel launches of {} kernels in {:.0f} s -> {}'.format(
        len(records), len(names), time.time() - start, args.out))
    print('capture: ' + ', '.join(names))
    if gaps:
        print('capture: FAIL: not seen: {}'.format('; '.join(gaps)), file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
