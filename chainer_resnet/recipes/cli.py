"""``python -m chainer_resnet.recipes``: the recipes as the job scripts read them."""

import argparse
import sys
from dataclasses import replace

from chainer_resnet.recipes.named import RECIPES, get
from chainer_resnet.recipes.recipe import RecipeError


def main(argv=None):
    """``python -m chainer_resnet.recipes``: list recipes, or print one's facts.

    ``facts NAME RANKS [K]`` prints, space-separated on one line, what a job
    script needs before it launches: the number of workers the recipe pins (0
    for any), the global batch and eta_base at ``RANKS`` x ``K`` workers (``K``
    virtual workers per rank, default the recipe's), and the virtual workers
    per rank that would give ``RANKS`` the pinned workers (0 for none). ``show NAME`` prints the
    recipe as JSON; no arguments lists the names. Exit status 2 on a bad name.
    """
    p = argparse.ArgumentParser(prog='python -m chainer_resnet.recipes',
                                description=main.__doc__.split('\n\n')[0])
    sub = p.add_subparsers(dest='command')
    facts = sub.add_parser('facts', help='expected_workers global_batch base_lr '
                           'fitting_virtual_workers')
    facts.add_argument('name')
    facts.add_argument('ranks', type=int)
    facts.add_argument('virtual_workers', type=int, nargs='?', default=None,
                       help='virtual workers per rank (default: the recipe\'s)')
    show = sub.add_parser('show', help='the recipe as JSON')
    show.add_argument('name')
    args = p.parse_args(argv)
    try:
        if args.command == 'facts':
            if args.ranks < 1:
                raise RecipeError('RANKS must be >= 1, got {}'.format(args.ranks))
            r = get(args.name)
            if args.virtual_workers is not None:
                if args.virtual_workers < 1:
                    raise RecipeError('VIRTUAL_WORKERS must be >= 1, got {}'.format(
                        args.virtual_workers))
                r = replace(r, virtual_workers_per_rank=args.virtual_workers)
            workers = r.workers(args.ranks)
            print(r.expected_workers or 0, r.global_batch(workers), r.base_lr(workers),
                  r.fitting_virtual_workers(args.ranks) or 0)
        elif args.command == 'show':
            print(get(args.name).to_json())
        else:
            print('\n'.join(sorted(RECIPES)))
    except RecipeError as e:
        print('error: {}'.format(e), file=sys.stderr)
        return 2
    return 0
