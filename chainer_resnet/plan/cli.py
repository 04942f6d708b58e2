"""``python -m chainer_resnet.plan``: the command line of the time-to-train model."""

import argparse
import sys

from chainer_resnet import recipes
from chainer_resnet.plan.hardware import GPUS, INTRA, NETS, sources_lines
from chainer_resnet.plan.model import ALGORITHMS, OVERLAPS, make_plan, plot, report
from chainer_resnet.plan.records import records_lines


def build_parser():
    p = argparse.ArgumentParser(
        prog='python -m chainer_resnet.plan',
        description='Predict time to train a recipe on a cluster (alpha-beta model; '
                    'see the module docstring and docs/time-to-train.md).')
    p.add_argument('--recipe', default='akiba2017')
    p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                   help='recipe override, repeatable (as train_imagenet.py)')
    p.add_argument('--gpus', type=int, default=1024)
    p.add_argument('--gpus-per-node', type=int, default=8)
    p.add_argument('--gpu', default='p100',
                   help='one of {} or a measured rate in images/s (then the intra-node '
                        'link defaults to pcie)'.format(', '.join(GPUS)))
    p.add_argument('--interconnect', default='fdr', choices=sorted(NETS))
    p.add_argument('--rails', type=int, default=1, help='network links per node (MN-1: 2)')
    p.add_argument('--intra', choices=sorted(INTRA), default=None,
                   help='GPU-to-GPU link in a node (default: the GPU\'s usual one)')
    p.add_argument('--cores-per-gpu', type=float, default=2, help='loader cores (MN-1: 2)')
    p.add_argument('--virtual-workers', type=int, default=None, metavar='K',
                   help='micro-batches per GPU per iteration (default: the recipe\'s, or 1)')
    p.add_argument('--allreduce', choices=ALGORITHMS, default='ring')
    p.add_argument('--overlap', choices=OVERLAPS, default='none',
                   help='hide the allreduce behind backward (none: the paper\'s system)')
    p.add_argument('--startup-s', type=float, default=0.0,
                   help='start-up seconds (MPI, NCCL, CuPy compile); measure yours')
    p.add_argument('--load-per-core', type=float, default=400.0,
                   help='images/s one core decodes and augments (assumed 400)')
    p.add_argument('--snapshot-gbps', type=float, default=1.0,
                   help='GB/s rank 0 writes a snapshot at (assumed 1)')
    p.add_argument('--plot', metavar='FILE.png', help='time and efficiency vs 8..4,096 GPUs')
    p.add_argument('--records', action='store_true',
                   help='print the model beside published record runs and exit')
    p.add_argument('--sources', action='store_true',
                   help='print the GPU, network and intra-node tables with sources and exit')
    return p


def plan_from_args(args):
    recipe = recipes.resolve(args.recipe, args.set)
    return make_plan(recipe, args.gpus, gpus_per_node=args.gpus_per_node, gpu=args.gpu,
                     interconnect=args.interconnect, rails=args.rails, intra=args.intra,
                     cores_per_gpu=args.cores_per_gpu, virtual_workers=args.virtual_workers,
                     algorithm=args.allreduce, overlap=args.overlap,
                     startup_s=args.startup_s, load_per_core=args.load_per_core,
                     snapshot_gbps=args.snapshot_gbps)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.records or args.sources:
            print('\n'.join(records_lines() if args.records else sources_lines()))
            return 0
        plan_ = plan_from_args(args)
        lines = report(plan_)
        if args.plot:
            plot(plan_, args.plot)
            lines.insert(-1, 'plot: {}'.format(args.plot))
        print('\n'.join(lines))
    except (recipes.RecipeError, ValueError) as e:
        print('error: {}'.format(e), file=sys.stderr)
        return 2
    return 0
