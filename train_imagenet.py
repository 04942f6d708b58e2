#!/usr/bin/env python
"""Train ResNet-50 the way Akiba, Suzuki & Fukuda (2017) did.

One process per GPU (or a CPU process), launched directly or under mpiexec:

    python train_imagenet.py                                 # demo data, CPU
    mpiexec -n 2 python train_imagenet.py --recipe smoke     # 2 CPU ranks
    mpiexec -n 8 python train_imagenet.py --recipe akiba2017 --device gpu \\
        --train train.txt --val val.txt --root /data/imagenet \\
        --set world_size_check=false

Every number of the run is in the recipe (chainer_resnet/recipes.py);
``--set key=value`` overrides one field. Re-launching the same command
resumes from the newest snapshot in ``--out``.
"""

import argparse
import collections
import os
import signal
import sys

import numpy

import chainer_resnet  # noqa: F401  (must precede chainer: compatibility hook)
import chainer
import chainer.links as L

from chainer_resnet import communication, gpu
from chainer_resnet import extensions as cr_ext
from chainer_resnet import (batch_normalization, optimizers, recipes, resnet, schedules,
                            snapshots, status)
from chainer_resnet.communication import print0
from chainer_resnet.data import demo, layouts, loader, sampling, transforms

# What the trainer reports as a one-line error (exit status 2), not a traceback.
USER_ERRORS = (recipes.RecipeError, layouts.DatasetError, communication.CommunicationError,
               snapshots.SnapshotError)
# Exit status of a run stopped because its state stopped being finite.
EXIT_DIVERGED = 3


class Diverged(Exception):
    """Training stopped on a non-finite state; ``collective``: every rank stopped together."""

    def __init__(self, message, rank, collective):
        super().__init__(message)
        self.rank = rank
        self.collective = collective


def parse_args(argv):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--recipe', default='demo',
                   help='one of: ' + ', '.join(sorted(recipes.RECIPES)))
    p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                   help='override one recipe field (repeatable)')
    p.add_argument('--train', help='training list file (path label per line) or '
                   'class-folder root; default: the embedded demo dataset')
    p.add_argument('--val', help='validation list file or class-folder root')
    p.add_argument('--root', help='folder the list files\' paths are relative to '
                   '(default: the list file\'s folder)')
    p.add_argument('--out', help='output folder (default: results/<recipe>)')
    p.add_argument('--resume', help='snapshot file to resume from (default: the '
                   'newest snapshot in --out, if any)')
    p.add_argument('--device', default='cpu', type=_device_name,
                   help="'cpu', 'gpu' (the GPU of this rank's node-local rank) "
                   "or a GPU id")
    p.add_argument('--cudnn-autotune', choices=('on', 'off'), default='on',
                   help='cuDNN times the convolution algorithms of each shape once and '
                   'keeps the fastest (default: %(default)s; chainer_resnet/gpu.py)')
    p.add_argument('--cudnn-workspace', type=_count(0), default=gpu.DEFAULT_WORKSPACE_MIB,
                   metavar='MIB', help='scratch memory a cuDNN convolution algorithm may '
                   'use (default: %(default)s MiB; Chainer\'s own is 8)')
    p.add_argument('--loaderjobs', type=_count(0), default=2,
                   help='data-loading processes per rank (0: load in the main '
                   'process)')
    p.add_argument('--stop-after-epochs', type=_positive_float,
                   help='stop (with a snapshot) after this many epochs of this '
                   'launch, to fit a wall-time limit; re-launch to continue')
    p.add_argument('--stop-after-iters', type=_count(1),
                   help='like --stop-after-epochs, in iterations')
    p.add_argument('--skip-bad-images', type=_count(0), default=0, metavar='N',
                   help='replace (training) or leave out (evaluation) up to N unreadable '
                   'images per rank, counted in the log as data/bad_images; default 0: '
                   'the first unreadable image ends the run, naming the file')
    p.add_argument('--check-images', action='store_true',
                   help='before training, read every image of each rank\'s shards once '
                   'and report all unreadable ones (a full pass over the data)')
    p.add_argument('--allow-recipe-change', action='store_true',
                   help='continue from a snapshot made with other recipe values (the '
                   'differences are printed; recipe.json keeps the old values as '
                   'recipe.<iteration>.json)')
    p.add_argument('--data-cache', help='where the demo dataset is built '
                   '(default: $CHAINER_RESNET_DATA or ~/.cache/chainer_resnet)')
    p.add_argument('--no-progress', action='store_true',
                   help='no progress bar (batch jobs)')
    return p.parse_args(argv)


def _count(minimum):
    def parse(text):
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError('must be an integer >= {}'.format(minimum))
        return value
    parse.__name__ = 'integer >= {}'.format(minimum)
    return parse


def _device_name(text):
    if text in ('cpu', 'gpu') or text.isdigit():
        return text
    raise argparse.ArgumentTypeError("use 'cpu', 'gpu' or a GPU id")


def _positive_float(text):
    value = float(text)
    if not 0 < value < float('inf'):
        raise argparse.ArgumentTypeError('must be a positive number')
    return value


def main(argv=None):
    """Command-line entry point; returns the exit status."""
    # The wall-time warning (SIGUSR1) may come at any time, also before or
    # after the training loop: its default action would kill this rank alone.
    flag = cr_ext.SignalFlag(signal.SIGUSR1)
    try:
        run(argv, stop_flag=flag)
    except USER_ERRORS as e:
        # A user error: say it without a traceback (once, on rank 0, if every
        # rank raised the same one: communication.from_rank0), and end every rank.
        collective_rank = getattr(e, 'collective_rank', None)
        if not collective_rank:
            print('error: {}'.format(e), file=sys.stderr, flush=True)
        if collective_rank is None:
            # Raised on this rank alone: the others may wait in a collective.
            communication.abort_if_distributed(2)
        return 2
    except Diverged as e:
        if e.rank == 0:
            print('error: {}'.format(e), file=sys.stderr, flush=True)
        if not e.collective:
            communication.abort_if_distributed(EXIT_DIVERGED)
        return EXIT_DIVERGED
    finally:
        flag.restore()
    return 0


def run(argv=None, stop_flag=None):
    """Parse `argv`, train, and return the finished Chainer Trainer.

    `stop_flag` (extensions.SignalFlag): the process-wide wall-time warning
    flag; without one, the handler is installed for the training loop only.
    """
    args = parse_args(argv)
    recipe = recipes.resolve(args.recipe, args.set)
    out = args.out or os.path.join('results', recipe.name)

    # 1. Forkserver before the communicator: loader processes forked after
    #    MPI/InfiniBand or CUDA initialisation can crash (field-notes.md #1).
    if args.loaderjobs > 0:
        communication.start_forkserver()

    # 2. Communicator and device. An exception on any rank aborts all ranks:
    #    the hook goes first, so that a rank failing while the communicator
    #    is created cannot leave the others blocked in a collective.
    communication.install_abort_on_error()
    comm = communication.create_communicator(
        gpu=args.device != 'cpu', allreduce_grad_dtype=recipe.allreduce_grad_dtype)
    try:
        recipe.check_world_size(comm.size)
    except recipes.RecipeError as error:
        # Every rank raises it at the same point: rank 0 says it once and no
        # rank aborts (an MPI_Abort can cut rank 0's message short).
        error.collective_rank = comm.rank
        raise
    device = _device(args.device, comm)
    device.use()
    gpu.configure_cudnn(args.cudnn_autotune == 'on', args.cudnn_workspace)

    # 3. Data: rank 0 reads the index, every rank takes and checks its shard
    #    (open_data: start-up costs per rank that do not grow with the ranks).
    data = open_data(args, recipe, comm)
    n_train = len(data.train_ids)
    # Workers are ranks x virtual workers per rank: batch, lr, iterations.
    k = recipe.virtual_workers_per_rank
    sched = schedules.from_recipe(recipe, recipe.workers(comm.size), n_train)
    ipe, total_iters = sched.iters_per_epoch, sched.total_iters

    # 4. Rank 0 prints the derived quantities and writes the effective recipe.
    if comm.rank == 0:
        if recipe.train_subset is None and n_train != recipe.train_images:
            communication.warn0(comm, 'recipe {!r} expects {} training images, the '
                                'dataset has {}; iterations follow the dataset.'.format(
                                    recipe.name, recipe.train_images, n_train))
        snapshots.check_output_folder(out)
        snapshots.keep_recipe(out, recipe, args.allow_recipe_change)
        summary = dict(recipe.summary(comm.size, n_train), peak_lr=sched.peak('lr'))
        print0(comm, 'chainer_resnet: ' + ', '.join(
            '{}={}'.format(k, v) for k, v in summary.items()))
        print0(comm, 'device={} communicator={} allreduce_grad_dtype={} out={}'.format(
            device, type(comm).__name__,
            recipe.allreduce_grad_dtype if args.device != 'cpu' else 'float32', out))

    # 5. Model: seeded initialisation; rank 0's weights are broadcast with
    #    the optimizer. BN link and zero-gamma per recipe (resnet.from_recipe).
    numpy.random.seed(recipe.seed)
    predictor = resnet.from_recipe(recipe)
    model = L.Classifier(predictor)
    model.to_device(device)

    # 6. Each rank reads its own images (indices were scattered, not data).
    #    Decoded images stay PIL until the crop, and the loader processes send
    #    uint8: the converters normalise on the device (loader.Normalize; the
    #    same pixels as float32 transforms, a quarter of the bytes).
    train_tf, val_tf = transforms.from_recipe(recipe, normalize=False)
    #    With k virtual workers one stream gives each iteration's k
    #    micro-batches, each the batch that worker would read as a rank.
    shards = [sampling.AugmentedDataset(loader.PILImages(data.train_base), train_tf,
                                        recipe.seed, indices=shard)
              for shard in data.train_shards]
    if k == 1:
        train_set = shards[0]
        sampler = sampling.EpochOrderSampler(len(train_set), recipe.seed)
    else:
        train_set = sampling.VirtualWorkerStream(shards, recipe.batch_per_worker, recipe.seed)
        sampler = sampling.StreamOrderSampler(len(train_set))
    val_set = sampling.AugmentedDataset(loader.PILImages(data.val_base), val_tf,
                                        recipe.seed, indices=data.val_local)
    train_iter, val_iter = loader.iterators(
        train_set, val_set, recipe.batch_per_worker * k, sampler, args.loaderjobs,
        val_batch=recipe.batch_per_worker)
    normalize = loader.Normalize(recipe.mean, recipe.std)
    if args.check_images:
        _check_images(comm, data, args.skip_bad_images)

    # 7. Optimizer: gradients averaged over ranks (fp16 on the wire with
    #    pure_nccl), then weight decay, then the update (docs/method.md §1, §5).
    optimizer = communication.create_multi_node_optimizer(
        optimizers.from_recipe(recipe, **sched.initial_values()), comm, model)
    for hook in optimizers.hooks_from_recipe(recipe):
        optimizer.add_hook(hook)

    # 8. Updater and trainer; iteration triggers derived from global numbers,
    #    so every rank evaluates and snapshots at the same iterations.
    bn_statistics = None
    if k > 1 and recipe.batch_norm == 'last_batch':
        bn_statistics = batch_normalization.VirtualWorkerStatistics(predictor, k)
    updater = cr_ext.TimedUpdater(
        train_iter, optimizer, workers=comm.size, virtual_workers=k,
        bn_statistics=bn_statistics, device=device,
        converter=loader.BadSampleGuard(args.skip_bad_images, converter=normalize,
                                         mode='replace'))
    stop = cr_ext.ChunkStopTrigger(total_iters, chunk_iters=_chunk_iters(args, ipe))
    trainer = chainer.training.Trainer(updater, stop, out=out)
    eval_points = cr_ext.points(recipe.eval_interval_epochs * ipe, total_iters)
    eval_trigger = cr_ext.PointsTrigger(eval_points)
    snap_trigger = cr_ext.PointsTrigger(
        cr_ext.points(recipe.snapshot_interval_epochs * ipe, total_iters), stop)

    # 9. On all ranks: schedules, a wall-time warning signal (SIGUSR1 ends the
    #    launch cleanly with a snapshot), BN statistics averaging, evaluation,
    #    snapshots. The schedules also run at initialisation (resume-safe).
    for name, extension in sched.extensions():
        trainer.extend(extension, name=name)
    stop_signal = cr_ext.StopOnSignal(comm, stop, flag=stop_flag)
    trainer.extend(stop_signal)
    bn_sync = None
    if recipe.batch_norm == 'last_batch':
        bn_sync = cr_ext.BNStatisticsAllreduce(comm, predictor, mode=recipe.bn_stats_average,
                                               virtual=bn_statistics)
        trainer.extend(bn_sync, trigger=eval_trigger, name='bn_allreduce_eval')
        trainer.extend(bn_sync, trigger=snap_trigger, name='bn_allreduce_snapshot')
    trainer.extend(cr_ext.ExactEvaluator(
        val_iter, model, comm, device=device,
        converter=loader.BadSampleGuard(args.skip_bad_images, converter=normalize,
                                         mode='drop')),
        trigger=eval_trigger)
    # Written atomically by rank 0 in a background thread (uncompressed: zlib
    # on ~300 MB costs more time than the disk space is worth); on resume rank
    # 0 reads the newest loadable one and broadcasts it (snapshots.py).
    snapshot = snapshots.Snapshot(comm, recipe, keep=2, resume=args.resume,
                                  allow_recipe_change=args.allow_recipe_change)
    trainer.extend(snapshot, trigger=snap_trigger)

    # 10. Reporting on rank 0 only.
    plots = []
    if comm.rank == 0:
        plots = cr_ext.extend_reporting(
            trainer, recipe.log_interval_iters, sched.names,
            plot_trigger=cr_ext.PointsTrigger(eval_points, stop),
            progress_bar=not args.no_progress)

    # 11. Run (the snapshot extension resumes first), then save the model
    #     with averaged BN statistics, and the status.
    try:
        # The loop's own traceback print is off: main() reports user errors and
        # divergence in one line, and the except hook prints anything else.
        trainer.run(show_loop_exception_msg=False)
        snapshot.wait()          # the last snapshot is on disk before the status says so
        if bn_sync is not None:
            bn_sync()
        if comm.rank == 0:
            _finish(trainer, predictor, out, total_iters, plots, stop_signal.stopped_by)
    except (optimizers.TrainingDiverged, snapshots.NonFiniteStateError) as e:
        raise _diverged(e, comm, trainer, out, total_iters) from None
    return trainer


def _device(name, comm):
    """The Chainer device of this rank: 'cpu', 'gpu' (by node-local rank) or a GPU id."""
    if name == 'cpu':
        return chainer.get_device('@numpy')
    gpu_id = communication.bind_gpu(comm, explicit=None if name == 'gpu' else int(name))
    return chainer.get_device('@cupy:{}'.format(gpu_id))


Data = collections.namedtuple(
    'Data', 'train_base val_base train_ids val_ids train_local val_local train_shards')


def open_data(args, recipe, comm):
    """The datasets and this rank's shards, at a cost per rank that does not grow with the ranks.

    Rank 0 alone reads the list files (or walks the class folders) and the
    index reaches every rank in one broadcast (a dataset error ends every rank
    with rank 0's message). Every rank then takes its shard: training indices
    are shuffled before they are split (list files are usually sorted by
    class) and padded to equal length; validation indices are split in
    disjoint blocks, each image exactly once. Each rank checks that the files
    of its own shards exist (the demo dataset is built once per node under a
    file lock).
    """
    train_path, val_path, root = _dataset_paths(args)

    def index():
        train = layouts.open_dataset(train_path, root, recipe.num_classes, check_files=False)
        val = layouts.open_dataset(val_path, root, recipe.num_classes, check_files=False,
                                   classes=getattr(train, 'classes', None))
        return train, val
    train_base, val_base = communication.from_rank0(comm, index)
    train_ids = sampling.subset(len(train_base), recipe.train_subset, recipe.seed)
    val_ids = sampling.subset(len(val_base), recipe.val_subset, recipe.seed)
    # Virtual worker j of this rank is worker rank * k + j of ranks * k: its
    # shard is the one that rank of a k-times larger launch would take.
    k = recipe.virtual_workers_per_rank
    train_shards = sampling.scatter_worker_shards(
        train_ids, comm.size * k, comm.rank * k, k, shuffle_seed=recipe.seed)
    train_local = numpy.concatenate(train_shards)
    val_local = sampling.scatter_indices(val_ids, comm.size, comm.rank, equal=False)
    train_base.check_files(numpy.unique(train_local))
    val_base.check_files(val_local)
    return Data(train_base, val_base, train_ids, val_ids, train_local, val_local, train_shards)


def _dataset_paths(args):
    """(train, val, root) from the flags; the embedded demo dataset by default."""
    if args.train is None:
        data = demo.demo_dataset(cache_dir=args.data_cache)
        return data.train_list, data.val_list, data.root
    if args.val is None:
        raise layouts.DatasetError('--train given without --val')
    return args.train, args.val, args.root


def _chunk_iters(args, ipe):
    if args.stop_after_iters is not None:
        return args.stop_after_iters
    if args.stop_after_epochs is not None:
        return max(1, int(round(args.stop_after_epochs * ipe)))
    return None


def _check_images(comm, data, max_bad):
    """--check-images: each rank reads its shards once; all stop together if too many fail."""
    bad = []
    for base, indices, what in ((data.train_base, data.train_local, 'training'),
                                (data.val_base, data.val_local, 'validation')):
        found = loader.check_images(base, numpy.unique(indices))
        for index, path, error in found:
            print('rank {}: unreadable {} image {} (index {}): {}'.format(
                comm.rank, what, path, index, error), file=sys.stderr, flush=True)
        bad.extend(found)
    counts = comm.mpi_comm.allgather(len(bad))
    print0(comm, 'check-images: {} unreadable image(s) over {} rank(s) (at most {} on a rank; '
           '--skip-bad-images allows {} per rank)'.format(sum(counts), comm.size, max(counts),
                                                        max_bad))
    if max(counts) > max_bad:
        error = layouts.DatasetError(
            '--check-images found {} unreadable image(s) (listed above, per rank). Replace '
            'them or remove them from the dataset, or pass --skip-bad-images N to train '
            'without them.'.format(sum(counts)))
        error.collective_rank = comm.rank   # every rank stops here: no abort, one message
        raise error


def _diverged(error, comm, trainer, out, total_iters):
    """Rank 0 records why the run stopped; the error for main() to report."""
    newest = snapshots.list_snapshots(out)
    where = ('The last finite snapshot, {}, is kept'.format(newest[0][1]) if newest
             else 'No snapshot was written yet')
    message = ('{}. {}; nothing non-finite was saved. Lower the learning rate (e.g. '
               '--set lr_per_256=...) and start a new run with another --out, or continue '
               'from that snapshot with the new value and --allow-recipe-change.'
               .format(error, where))
    if comm.rank == 0:
        status.write(out, {'iteration': trainer.updater.iteration, 'total_iters': total_iters,
                           'complete': False, 'failed': 'diverged', 'error': message,
                           'snapshot': newest[0][1] if newest else None})
    return Diverged(message, comm.rank,
                    collective=isinstance(error, optimizers.TrainingDiverged))


def _finish(trainer, predictor, out, total_iters, plots, stopped_by=None):
    """Rank 0 at the end of a launch: model.npz, status.json and the closing lines."""
    iteration = trainer.updater.iteration
    done = iteration >= total_iters
    model_path = os.path.join(out, 'model.npz')
    weights = chainer.serializers.npz.serialize(predictor)
    bad = snapshots.non_finite_entries(weights)
    if bad:
        raise snapshots.NonFiniteStateError(
            'the model at iteration {} holds NaN or infinite values in {} (first: {}); '
            'model.npz was not written'.format(iteration, len(bad), bad[0]))
    snapshots.write_npz_atomic(model_path, weights)
    st = {'iteration': iteration, 'total_iters': total_iters, 'complete': done,
          'log': os.path.join(out, 'log'), 'model': model_path,
          'plots': [os.path.join(out, name) for name in plots]}
    evaluations = [e for e in trainer.get_extension('LogReport').log
                   if 'validation/main/accuracy' in e]
    if evaluations:
        st['val_top1'] = evaluations[-1]['validation/main/accuracy']
        st['val_top5'] = evaluations[-1]['validation/main/top5']
    if stopped_by is not None and not done:
        st['stopped'] = stopped_by
    status.write(out, st)
    if done:
        print('\nTraining complete at iteration {}/{}.'.format(iteration, total_iters))
    elif stopped_by is not None:
        print('\nStopped by {} at iteration {}/{} (re-launch to continue).'.format(
            stopped_by, iteration, total_iters))
    else:
        print('\nStopped at iteration {}/{} (re-launch to continue).'.format(
            iteration, total_iters))
    if evaluations:
        print('validation top-1 {:.2%}, top-5 {:.2%}'.format(st['val_top1'], st['val_top5']))
    print('log:   {}\nplots: {}\nmodel: {}'.format(st['log'], ', '.join(st['plots']),
                                                  model_path), flush=True)


if __name__ == '__main__':
    sys.exit(main())
