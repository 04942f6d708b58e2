#!/usr/bin/env python
"""Train ResNet-50 the way Akiba, Suzuki & Fukuda (2017) did.

One process per GPU (or a CPU process), launched directly or under mpiexec:

    python train_imagenet.py                                 # demo data, CPU
    mpiexec -n 2 python train_imagenet.py --recipe smoke     # 2 CPU ranks
    mpiexec -n 8 python train_imagenet.py --recipe akiba2017 --device gpu \\
        --train train.txt --val val.txt --root /data/imagenet \\
        --set world_size_check=false

Every number of the run is in the recipe (chainer_resnet/recipes/named.py);
``--set key=value`` overrides one field. Re-launching the same command
resumes from the newest snapshot in ``--out``.
"""

import argparse
import os
import sys

import numpy

import chainer_resnet  # noqa: F401  (must precede chainer: compatibility hook)
import chainer
import chainer.links as L

from chainer_resnet import (arguments, batch_normalization, communication, evaluator, gpu,
                            health, initial_weights, model_file, optimizers, outcome,
                            output_folder, recipes, reporting, resnet, runlock, schedules, signals,
                            snapshots, triggers, updater, watchdog)
from chainer_resnet.communication import print0
from chainer_resnet.data import layouts, loader, shards, workers

# What the trainer reports as a one-line error (exit status 2), not a traceback.
USER_ERRORS = (recipes.RecipeError, layouts.DatasetError, communication.CommunicationError,
               snapshots.SnapshotError, model_file.ModelFileError, runlock.LockError)


def parse_args(argv):
    p = arguments.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--recipe', default='demo',
                   help='one of: {} (default: demo)'.format(', '.join(sorted(recipes.RECIPES))))
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
    p.add_argument('--init-model', help='start from these weights (model.npz, snapshot or '
                   'torchvision .pth/.safetensors; recorded in recipe.json as init_model)')
    p.add_argument('--device', default='cpu', type=arguments.device_name,
                   help="'cpu', 'gpu' (the GPU of this rank's node-local rank) "
                   "or a GPU id")
    p.add_argument('--cudnn-autotune', choices=('on', 'off'), default='on',
                   help='cuDNN times the convolution algorithms of each shape once and '
                   'keeps the fastest (default: %(default)s; chainer_resnet/gpu.py)')
    p.add_argument('--cudnn-workspace', type=arguments.count(0), default=gpu.DEFAULT_WORKSPACE_MIB,
                   metavar='MIB', help='scratch memory a cuDNN convolution algorithm may '
                   'use (default: %(default)s MiB; Chainer\'s own is 8)')
    p.add_argument('--loaderjobs', type=arguments.count(0), default=2,
                   help='data-loading processes per rank (0: load in the main '
                   'process; default: 2)')
    p.add_argument('--stop-after-epochs', type=arguments.positive_float,
                   help='stop (with a snapshot) after this many epochs of this '
                   'launch, to fit a wall-time limit; re-launch to continue')
    p.add_argument('--stop-after-iters', type=arguments.count(1),
                   help='like --stop-after-epochs, in iterations')
    p.add_argument('--skip-bad-images', type=arguments.count(0), default=0, metavar='N',
                   help='replace (training) or leave out (evaluation) up to N unreadable '
                   'images per rank, counted in the log as data/bad_images; default 0: '
                   'the first unreadable image ends the run, naming the file')
    p.add_argument('--check-images', action='store_true',
                   help='before training, read every image of each rank\'s shards once '
                   'and report all unreadable ones (a full pass over the data)')
    p.add_argument('--take-over-lock', action='store_true',
                   help='run although <out>/run.lock names another job that holds the '
                   'folder (only when you know it does not run any more)')
    p.add_argument('--stall-report', type=arguments.seconds, default=watchdog.REPORT_AFTER,
                   metavar='S', help='print every rank\'s stacks after S s without progress '
                   '(default %(default)g; 0: never)')
    p.add_argument('--stall-abort', type=arguments.seconds, default=watchdog.ABORT_AFTER,
                   metavar='S', help='end the job (exit status 4) after S s without '
                   'progress, so that a re-launch resumes (default %(default)g; 0: never)')
    p.add_argument('--allow-recipe-change', action='store_true',
                   help='continue from a snapshot made with other recipe values (the '
                   'differences are printed; recipe.json keeps the old values as '
                   'recipe.<iteration>.json)')
    p.add_argument('--data-cache', help='where the demo dataset is built '
                   '(default: $CHAINER_RESNET_DATA or ~/.cache/chainer_resnet)')
    p.add_argument('--no-progress', action='store_true',
                   help='no progress bar (batch jobs)')
    p.add_argument('--health-interval', type=arguments.count(0), metavar='N',
                   help='measure the health signals every N iterations (README.md, '
                   '"Watching a run"; default: the recipe\'s log interval; 0: never)')
    args = p.parse_args(argv)
    if args.train is not None and args.val is None:
        p.error('--train given without --val (the validation list file or class folders)')
    return args


def main(argv=None):
    """Command-line entry point; returns the exit status (outcome.py lists them)."""
    # Stop requests (the wall-time warning SIGUSR1; SIGTERM, SIGINT, SIGHUP from
    # schedulers and terminals: signals.py) may come at any time, also before or
    # after the training loop: their default actions would kill this rank alone.
    flag = signals.SignalFlag()
    try:
        trainer = run(argv, stop_flag=flag)
    except USER_ERRORS as e:
        # A user error: say it without a traceback (once, on rank 0, if every
        # rank raised the same one: communication.from_rank0), and end every rank.
        collective_rank = getattr(e, 'collective_rank', None)
        if not collective_rank:
            print('error: {}'.format(e), file=sys.stderr, flush=True)
        if collective_rank is None:
            # Raised on this rank alone: the others may wait in a collective.
            communication.abort_if_distributed(outcome.EXIT_USER_ERROR)
        return outcome.EXIT_USER_ERROR
    except workers.LoaderDied as e:
        # On this rank alone; the others wait in the next allreduce.
        print('error: {}'.format(e), file=sys.stderr, flush=True)
        communication.abort_if_distributed(outcome.EXIT_FAULT)
        return outcome.EXIT_FAULT
    except outcome.Diverged as e:
        if e.rank == 0:
            print('error: {}'.format(e), file=sys.stderr, flush=True)
        if not e.collective:
            communication.abort_if_distributed(outcome.EXIT_DIVERGED)
        return outcome.EXIT_DIVERGED
    finally:
        flag.restore()
    return signals.exit_status(trainer.get_extension('StopOnSignal').stopped_by)


def run(argv=None, stop_flag=None):
    """Parse `argv`, train, and return the finished Chainer Trainer.

    `stop_flag` (signals.SignalFlag): the process-wide stop requests; without
    one, the handlers are installed for the training loop only.
    """
    args = parse_args(argv)
    try:
        recipe = recipes.resolve(args.recipe, args.set + (
            ['init_model=' + os.path.abspath(args.init_model)] if args.init_model else []))
    except recipes.RecipeError as error:
        # Every rank reads the same command line: said once, by rank 0.
        error.collective_rank = communication.process_rank()
        raise
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
    device = communication.device(args.device, comm)
    device.use()
    gpu.configure_cudnn(args.cudnn_autotune == 'on', args.cudnn_workspace)

    # 3. Rank 0 takes the output folder's lock (runlock.py: one running job per
    #    folder, before anything in it is touched; a refusal is said once).
    #    Data: rank 0 reads the index, every rank takes and checks its shard
    #    (shards.open_data: start-up costs per rank that do not grow with the ranks).
    lock = runlock.take(comm, out, args.take_over_lock,
                        check_folder=output_folder.check,
                        errors=(snapshots.SnapshotError,))
    data = shards.open_data(comm, recipe, args.train, args.val, args.root, args.data_cache)
    n_train = len(data.train_ids)
    # Workers are ranks x virtual workers per rank: batch, lr, iterations.
    k = recipe.virtual_workers_per_rank
    sched = schedules.from_recipe(recipe, recipe.workers(comm.size), n_train)
    ipe, total_iters = sched.iters_per_epoch, sched.total_iters

    # 4. Rank 0 writes the effective recipe (an error there ends every rank
    #    with its message), then prints the derived quantities.
    communication.from_rank0(comm, output_folder.keep_recipe, out, recipe,
                             args.allow_recipe_change, errors=(snapshots.SnapshotError,))
    if comm.rank == 0:
        if recipe.train_subset is None and n_train != recipe.train_images:
            communication.warn0(comm, 'recipe {!r} expects {} training images, the '
                                'dataset has {}; iterations follow the dataset.'.format(
                                    recipe.name, recipe.train_images, n_train))
        print0(comm, outcome.summary_lines(recipe, comm, n_train, sched, device, out))

    # 5. Model: seeded initialisation (or --init-model's weights); rank 0's
    #    weights are broadcast with the optimizer. BN link and zero-gamma per
    #    recipe (resnet.from_recipe).
    numpy.random.seed(recipe.seed)
    predictor = resnet.from_recipe(recipe)
    if recipe.init_model:    # fine-tuning: rank 0 reads, every rank copies (initial_weights)
        print0(comm, initial_weights.load_into(predictor, recipe.init_model, recipe, comm))
    model = L.Classifier(predictor)
    model.to_device(device)

    # 6. Each rank reads its own images (indices were scattered, not data);
    #    with k virtual workers one stream gives each iteration's k
    #    micro-batches. The loader processes send uint8: the converters
    #    normalise on the device (loader.Normalize; a quarter of the bytes).
    train_set, sampler, val_set = shards.datasets(data, recipe)
    train_iter, val_iter = loader.iterators(
        train_set, val_set, recipe.batch_per_worker * k, sampler, args.loaderjobs,
        val_batch=recipe.batch_per_worker)
    normalize = loader.Normalize(recipe.mean, recipe.std)
    if args.check_images:
        shards.check_images(comm, data, args.skip_bad_images)

    # 7. Optimizer: gradients averaged over ranks (fp16 on the wire with
    #    pure_nccl), then weight decay, then the update (docs/method.md §1, §5).
    optimizer = communication.create_multi_node_optimizer(
        optimizers.from_recipe(recipe, **sched.initial_values()), comm, model)
    for hook in optimizers.hooks_from_recipe(recipe):
        optimizer.add_hook(hook)
    # The health signals (README.md, "Watching a run"): fp16 allreduce range,
    # per-layer update ratios, stragglers, workers' BN statistics agreement.
    interval = recipe.log_interval_iters if args.health_interval is None else args.health_interval
    monitor = health.RunHealth(comm, model, interval) if interval else None
    if monitor is not None:
        monitor.attach(optimizer)

    # 8. Updater and trainer; iteration triggers derived from global numbers,
    #    so every rank evaluates and snapshots at the same iterations.
    bn_statistics = None
    if k > 1 and recipe.batch_norm == 'last_batch':
        bn_statistics = batch_normalization.VirtualWorkerStatistics(predictor, k)
    step = updater.TimedUpdater(
        train_iter, optimizer, workers=comm.size, virtual_workers=k,
        bn_statistics=bn_statistics, device=device, health=monitor,
        converter=loader.BadSampleGuard(args.skip_bad_images, converter=normalize,
                                         mode='replace'))
    stop = triggers.ChunkStopTrigger(total_iters, chunk_iters=triggers.chunk_iters(
        args.stop_after_iters, args.stop_after_epochs, ipe))
    trainer = chainer.training.Trainer(step, stop, out=out)
    eval_points = triggers.points(recipe.eval_interval_epochs * ipe, total_iters)
    eval_trigger = triggers.PointsTrigger(eval_points)
    snap_trigger = triggers.PointsTrigger(
        triggers.points(recipe.snapshot_interval_epochs * ipe, total_iters), stop)

    # 9. On all ranks: schedules, stop requests (the wall-time warning or a
    #    termination signal ends the launch cleanly with a snapshot), BN
    #    statistics averaging, evaluation, snapshots. The schedules also run
    #    at initialisation (resume-safe).
    for name, extension in sched.extensions():
        trainer.extend(extension, name=name)
    stop_signal = signals.StopOnSignal(comm, stop, flag=stop_flag)
    trainer.extend(stop_signal)
    observations = monitor.observations if monitor is not None else None
    if monitor is not None:
        trainer.extend(monitor, trigger=monitor.trigger)
    # No progress for --stall-report s: every rank's stacks; for --stall-abort s:
    # the job ends (watchdog.py). A step that stalled and recovered is logged.
    stall_watch = watchdog.Watchdog(
        comm.rank, args.stall_report, args.stall_abort, on_abort=lambda message:
        outcome.stalled(out, stall_watch.iteration, total_iters, message))
    trainer.extend(watchdog.StallMonitor(comm, stall_watch))
    bn_sync = None
    if recipe.batch_norm == 'last_batch':
        bn_sync = batch_normalization.BNStatisticsAllreduce(
            comm, predictor, mode=recipe.bn_stats_average, virtual=bn_statistics,
            observations=observations)
        trainer.extend(bn_sync, trigger=eval_trigger, name='bn_allreduce_eval')
        trainer.extend(bn_sync, trigger=snap_trigger, name='bn_allreduce_snapshot')
    trainer.extend(evaluator.ExactEvaluator(
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
        plots = reporting.extend_reporting(
            trainer, recipe.log_interval_iters, sched.names,
            plot_trigger=triggers.PointsTrigger(eval_points, stop),
            progress_bar=not args.no_progress, observations=observations)

    # 11. Run (the snapshot extension resumes first), then save the model
    #     with averaged BN statistics, and the status.
    try:
        # The loop's own traceback print is off: main() reports user errors and
        # divergence in one line, and the except hook prints anything else.
        trainer.run(show_loop_exception_msg=False)
        snapshot.wait()          # the last snapshot is on disk before the status says so
        if bn_sync is not None:
            bn_sync()
        if comm.rank == 0:       # model.npz describes itself (model_file.describe)
            outcome.finish(trainer, predictor, out, total_iters, plots, stop_signal.stopped_by,
                           model_file.describe(recipe, data.classes, model_file.data_paths(
                               args.train, args.val, args.root, args.data_cache)))
        # No rank ends before rank 0 has written everything: after a stop by
        # SIGTERM (exit 143) srun --kill-on-bad-exit ends the rest.
        comm.mpi_comm.Barrier()
    except (optimizers.TrainingDiverged, snapshots.NonFiniteStateError) as e:
        raise outcome.diverged(e, comm, trainer, out, total_iters) from None
    finally:
        stall_watch.stop()
    lock.release()
    return trainer


if __name__ == '__main__':
    sys.exit(main())
