"""The large-batch study: does the paper's recipe hold accuracy as the batch grows?

``python -m chainer_resnet.study`` trains ResNet-50 on the embedded digits
(``make demo``'s data) at a fixed epoch budget for each global batch and
each arm, on ``--ranks`` processes with virtual workers making up the rest
of the workers (``virtual_workers_per_rank``: the same mathematics as that
many ranks, tests/test_virtual_workers.py), and writes in ``--out``:

- ``results.json``: one record per finished run (arm, global batch,
  workers, iterations per epoch and in all, top-1/top-5 and loss, seconds);
- ``results.md``: the table (top-1 per arm and batch, iterations per epoch);
- ``study.png``: top-1 against global batch, one line per arm, the
  iterations per epoch on the upper axis;
- one folder per run (the trainer's log, status, recipe.json and its output
  in ``train.out``; snapshots and the model are deleted once a run is
  recorded: ~400 MB each).

Resumable: a finished run (recorded in ``results.json``) is not run again;
an unfinished one is re-launched in its folder and the trainer continues
from its newest snapshot. Change the study's settings with another ``--out``.

Arms (docs/large-batch-study.md says why these):

- ``paper``: Akiba et al. (RMSprop warm-up, slow-start lr, BN without
  moving averages), the demo recipe;
- ``goyal``: Goyal et al. (momentum SGD, linear warm-up from lr_per_256 (or
  the scaled rate when that is lower) over 5/90 of the epochs, x0.1 steps at
  30, 60, 80 of 90, BN moving averages);
- ``sgd-no-warmup``: ``goyal`` without the warm-up: momentum SGD at the
  scaled rate from the first iteration;
- ``paper-bn-moving-average``: ``paper`` with Chainer's moving-average BN.

All arms share the demo recipe's data settings, linear scaling rule
(``lr_per_256``), weight decay and seed; every epoch boundary is scaled to
``--epochs`` (``recipes.scaled_schedule``).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace

from chainer_resnet import recipes, status

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARMS = ('paper', 'goyal', 'sgd-no-warmup', 'paper-bn-moving-average')
DEFAULTS = dict(batches=(64, 256, 1024, 2048), epochs=6, crop_size=16, ranks=2)
# Fields that differ between arms or runs; the rest is the demo recipe's.
_RUN_FIELDS = ('optimizer', 'lr_schedule', 'batch_norm', 'epochs', 'warmup_center_epochs',
               'warmup_period_epochs', 'goyal_warmup_epochs', 'goyal_start_lr',
               'goyal_milestones_epochs', 'crop_size', 'virtual_workers_per_rank',
               'eval_interval_epochs', 'snapshot_interval_epochs', 'log_interval_iters',
               'batch_per_worker', 'train_subset', 'val_subset', 'seed')


class StudyError(ValueError):
    """A study setting that cannot be run."""


def arm_recipe(arm, global_batch, ranks, epochs, crop_size, base=recipes.DEMO, **changes):
    """The recipe of one run: ``arm`` at ``global_batch`` on ``ranks`` processes."""
    if arm not in ARMS:
        raise StudyError('unknown arm {!r}; arms are {}'.format(arm, ', '.join(ARMS)))
    b = changes.pop('batch_per_worker', base.batch_per_worker)
    if global_batch % (ranks * b):
        raise StudyError('global batch {} is not a multiple of {} ranks x {} images'.format(
            global_batch, ranks, b))
    k = global_batch // (ranks * b)
    n = min(changes.get('train_subset') or base.train_images, base.train_images)
    r = recipes.scaled_schedule(base, name='study-' + arm, epochs=epochs)
    r = replace(r, crop_size=crop_size, batch_per_worker=b, virtual_workers_per_rank=k,
                eval_interval_epochs=epochs, snapshot_interval_epochs=max(epochs / 3, 1e-3),
                log_interval_iters=max(1, min(25, int(n / (b * ranks * k)))), **changes)
    if arm in ('goyal', 'sgd-no-warmup'):
        workers = r.workers(ranks)
        r = replace(r, optimizer='momentum_sgd', lr_schedule='goyal',
                    batch_norm='moving_average',
                    goyal_start_lr=min(r.lr_per_256, r.base_lr(workers)))
        if arm == 'sgd-no-warmup':
            r = replace(r, goyal_warmup_epochs=0)
    elif arm == 'paper-bn-moving-average':
        r = replace(r, batch_norm='moving_average')
    return r.validate()


def set_args(recipe):
    """``--set`` arguments that turn the demo recipe into ``recipe``."""
    out = []
    for field in _RUN_FIELDS:
        value = getattr(recipe, field)
        if value == getattr(recipes.DEMO, field):
            continue
        if isinstance(value, tuple):
            text = ','.join(repr(float(v)) for v in value)
        elif value is None:
            text = 'none'
        elif isinstance(value, float):
            text = repr(value)
        else:
            text = str(value).lower() if isinstance(value, bool) else str(value)
        out += ['--set', '{}={}'.format(field, text)]
    return out


def run_name(arm, global_batch):
    return '{}-b{}'.format(arm, global_batch)


def _load_results(out):
    path = os.path.join(out, 'results.json')
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)


def _save_results(out, results):
    status.write_text_atomic(os.path.join(out, 'results.json'),
                             json.dumps(results, indent=1, sort_keys=True))


def _final_validation(run_dir):
    with open(os.path.join(run_dir, 'log')) as f:
        log = json.load(f)
    evaluated = [e for e in log if 'validation/main/accuracy' in e]
    if not evaluated:
        raise StudyError('{}: the log has no evaluation'.format(run_dir))
    return evaluated[-1]


def _mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), 'mpiexec')
    found = here if os.path.exists(here) else shutil.which('mpiexec')
    if not found:
        raise StudyError('no mpiexec next to {} or on PATH (make installs MPICH in the '
                         'virtualenv)'.format(sys.executable))
    return found


def train_command(recipe, ranks, run_dir, data_cache, loaderjobs):
    cmd = [_mpiexec(), '-n', str(ranks), sys.executable, os.path.join(ROOT, 'train_imagenet.py'),
           '--recipe', 'demo', '--out', run_dir, '--loaderjobs', str(loaderjobs), '--no-progress']
    if data_cache:
        cmd += ['--data-cache', data_cache]
    return cmd + set_args(recipe)


def run_one(recipe, arm, global_batch, ranks, out, data_cache, loaderjobs):
    """Train (or finish) one run; its record for results.json."""
    run_dir = os.path.join(out, run_name(arm, global_batch))
    os.makedirs(run_dir, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS='1', OPENBLAS_NUM_THREADS='1', MPLBACKEND='Agg')
    start = time.time()
    with open(os.path.join(run_dir, 'train.out'), 'a') as log:
        code = subprocess.call(train_command(recipe, ranks, run_dir, data_cache, loaderjobs),
                               stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    seconds = time.time() - start
    if code != 0:
        raise StudyError('{} failed (exit status {}); see {}'.format(
            run_name(arm, global_batch), code, os.path.join(run_dir, 'train.out')))
    final = _final_validation(run_dir)
    workers = recipe.workers(ranks)
    n = min(recipe.train_subset or recipe.train_images, recipe.train_images)
    record = {
        'arm': arm, 'global_batch': global_batch, 'ranks': ranks,
        'virtual_workers_per_rank': recipe.virtual_workers_per_rank, 'workers': workers,
        'train_images': n, 'iters_per_epoch': recipe.iters_per_epoch(workers, n),
        'total_iters': recipe.total_iters(workers, n), 'epochs': recipe.epochs,
        'crop_size': recipe.crop_size,
        'base_lr': recipe.base_lr(workers), 'top1': final['validation/main/accuracy'],
        'top5': final.get('validation/main/top5'), 'loss': final['validation/main/loss'],
        'iteration': final['iteration'], 'seconds': seconds, 'seed': recipe.seed,
    }
    for name in os.listdir(run_dir):          # snapshots (~300 MB) and the model (~100 MB)
        if name.startswith('snapshot_iter_') or name == 'model.npz':
            os.remove(os.path.join(run_dir, name))
    return record


def table(results, arms, batches):
    """The markdown table: top-1 (%) per arm (rows) and global batch (columns)."""
    by = {(r['arm'], r['global_batch']): r for r in results}
    some = {b: next((r for r in results if r['global_batch'] == b), None) for b in batches}
    lines = ['| arm | ' + ' | '.join('batch {:,}'.format(b) for b in batches) + ' |',
             '|---|' + '---:|' * len(batches)]
    lines.append('| workers (ranks x k) | ' + ' | '.join(
        '{} ({} x {})'.format(s['workers'], s['ranks'], s['virtual_workers_per_rank'])
        if s else '' for s in some.values()) + ' |')
    lines.append('| iterations per epoch (in all) | ' + ' | '.join(
        '{:.2f} ({})'.format(s['iters_per_epoch'], s['total_iters']) if s else ''
        for s in some.values()) + ' |')
    for arm in arms:
        lines.append('| {} | '.format(arm) + ' | '.join(
            '{:.1f}'.format(100 * by[arm, b]['top1']) if (arm, b) in by else 'not run'
            for b in batches) + ' |')
    return '\n'.join(lines)


def plot(results, arms, batches, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm in arms:
        rows = sorted((r['global_batch'], 100 * r['top1']) for r in results if r['arm'] == arm)
        if rows:
            ax.plot(*zip(*rows), marker='o', label=arm)
    ax.set_xscale('log', base=2)
    ax.set_xticks(batches)
    ax.set_xticklabels(['{:,}'.format(b) for b in batches])
    ax.set_xlabel('global batch (images per iteration)')
    ax.set_ylabel('top-1 accuracy (%), validation')
    ax.grid(True, alpha=0.3)
    ax.legend(loc='lower left')
    ipe = {r['global_batch']: r['iters_per_epoch'] for r in results}
    top = ax.twiny()
    top.set_xscale('log', base=2)
    top.set_xlim(ax.get_xlim())
    top.set_xticks(batches)
    top.set_xticklabels(['{:.1f}'.format(ipe[b]) if b in ipe else '' for b in batches])
    top.set_xlabel('iterations per epoch')
    fig.tight_layout()
    tmp = path + '.tmp.png'
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def _write_outputs(out, results, arms, batches, settings):
    _save_results(out, results)
    text = '# Large-batch study\n\n{}\n\nTop-1 (%) on the 1,000 validation images:\n\n{}\n'.format(
        settings, table(results, arms, batches))
    status.write_text_atomic(os.path.join(out, 'results.md'), text)
    plot(results, arms, batches, os.path.join(out, 'study.png'))


def _numbers(text, kind=int):
    try:
        values = tuple(kind(v) for v in text.split(',') if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError('expected comma-separated numbers, got {!r}'.format(
            text)) from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError('expected positive numbers, got {!r}'.format(text))
    return values


def _names(text):
    names = tuple(v.strip() for v in text.split(',') if v.strip())
    bad = [n for n in names if n not in ARMS]
    if not names or bad:
        raise argparse.ArgumentTypeError('unknown arm(s) {}; arms are {}'.format(
            ', '.join(bad) or '(none)', ', '.join(ARMS)))
    return names


def build_parser():
    p = argparse.ArgumentParser(prog='python -m chainer_resnet.study',
                                description=__doc__.split('\n\n')[0])
    p.add_argument('--out', default=os.path.join('results', 'large-batch-study'))
    p.add_argument('--batches', type=_numbers, default=DEFAULTS['batches'],
                   help='global batches (default 64,256,1024,2048)')
    p.add_argument('--arms', type=_names, default=ARMS, help=', '.join(ARMS))
    p.add_argument('--epochs', type=float, default=DEFAULTS['epochs'])
    p.add_argument('--crop-size', type=int, default=DEFAULTS['crop_size'])
    p.add_argument('--ranks', type=int, default=DEFAULTS['ranks'],
                   help='MPI processes (CPU); virtual workers make up the rest')
    p.add_argument('--batch-per-worker', type=int, default=recipes.DEMO.batch_per_worker)
    p.add_argument('--train-subset', type=int, default=None,
                   help='train on this many images only (tests)')
    p.add_argument('--val-subset', type=int, default=None)
    p.add_argument('--loaderjobs', type=int, default=1)
    p.add_argument('--data-cache', default=None, help="the demo data's cache folder")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.epochs <= 0 or args.ranks < 1:
            raise StudyError('--epochs must be > 0 and --ranks >= 1')
        plan = []
        for arm in args.arms:
            for batch in args.batches:
                plan.append((arm, batch, arm_recipe(
                    arm, batch, args.ranks, args.epochs, args.crop_size,
                    batch_per_worker=args.batch_per_worker, train_subset=args.train_subset,
                    val_subset=args.val_subset)))
        os.makedirs(args.out, exist_ok=True)
        settings = ('Embedded digits (4,000 train / 1,000 validation, 28x28), {:g} epochs, {}x{} '
                    'crops, {} rank(s) x virtual workers, batch {} per worker, seed {}; command: '
                    '`python -m chainer_resnet.study {}`'.format(
                        args.epochs, args.crop_size, args.crop_size, args.ranks,
                        args.batch_per_worker, recipes.DEMO.seed,
                        ' '.join(argv if argv is not None else sys.argv[1:])))
        results = [r for r in _load_results(args.out)
                   if (r['arm'], r['global_batch']) in {(a, b) for a, b, _ in plan}]
        done = {(r['arm'], r['global_batch']) for r in results}
        started = time.time()
        todo = [p for p in plan if (p[0], p[1]) not in done]
        print('study: {} run(s), {} recorded already, {} to run; out {}'.format(
            len(plan), len(plan) - len(todo), len(todo), args.out), flush=True)
        for n, (arm, batch, recipe) in enumerate(todo, 1):
            print('study: [{}/{}] {} at batch {:,} ({} rank(s) x {} virtual workers)...'.format(
                n, len(todo), arm, batch, args.ranks, recipe.virtual_workers_per_rank),
                flush=True)
            record = run_one(recipe, arm, batch, args.ranks, args.out, args.data_cache,
                             args.loaderjobs)
            results.append(record)
            _write_outputs(args.out, results, args.arms, args.batches, settings)
            elapsed = time.time() - started
            print('study: [{}/{}] {} at batch {:,}: top-1 {:.1f} % in {:.0f} s; about {:.0f} '
                  'min left'.format(n, len(todo), arm, batch, 100 * record['top1'],
                                    record['seconds'], elapsed / n * (len(todo) - n) / 60),
                  flush=True)
        _write_outputs(args.out, results, args.arms, args.batches, settings)
        print(table(results, args.arms, args.batches))
        print('study: results in {}'.format(', '.join(os.path.join(args.out, name) for name in (
            'results.json', 'results.md', 'study.png'))))
    except (StudyError, recipes.RecipeError) as e:
        print('error: {}'.format(e), file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
