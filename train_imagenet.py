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
import functools
import json
import os
import sys

import numpy

import chainer_resnet  # noqa: F401  (must precede chainer: compatibility hook)
from chainer_resnet import communication
from chainer_resnet import datasets
from chainer_resnet import recipes
from chainer_resnet.communication import print0


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
    p.add_argument('--device', default='cpu',
                   help="'cpu', 'gpu' (the GPU of this rank's node-local rank) "
                   "or a GPU id")
    p.add_argument('--loaderjobs', type=int, default=2,
                   help='data-loading processes per rank (0: load in the main '
                   'process)')
    p.add_argument('--stop-after-epochs', type=float,
                   help='stop (with a snapshot) after this many epochs of this '
                   'launch, to fit a wall-time limit; re-launch to continue')
    p.add_argument('--stop-after-iters', type=int,
                   help='like --stop-after-epochs, in iterations')
    p.add_argument('--data-cache', help='where the demo dataset is built '
                   '(default: $CHAINER_RESNET_DATA or ~/.cache/chainer_resnet)')
    p.add_argument('--no-progress', action='store_true',
                   help='no progress bar (batch jobs)')
    return p.parse_args(argv)


def load_dataset(path, root, num_classes):
    if os.path.isdir(path):
        return datasets.FolderDataset(path)
    return datasets.ListDataset(path, root or os.path.dirname(os.path.abspath(path)),
                                num_classes=num_classes)


def subset(n, size, seed):
    """Global indices of the first `size` images of a fixed permutation."""
    if size is None or size >= n:
        return numpy.arange(n)
    return numpy.sort(numpy.random.default_rng([seed, 7]).permutation(n)[:size])


def make_transforms(recipe):
    if recipe.augmentation == 'pre_resized':
        train = datasets.PreResizedRandomCropTransform(
            recipe.crop_size, recipe.mean, recipe.std,
            pre_size=recipe.pre_resize_size, flip=recipe.horizontal_flip)
        val = datasets.PreResizedCenterCropTransform(
            recipe.crop_size, recipe.mean, recipe.std,
            pre_size=recipe.pre_resize_size)
    else:
        train = datasets.TrainTransform(
            recipe.crop_size, recipe.mean, recipe.std,
            scale=(recipe.crop_area_min, 1.0), flip=recipe.horizontal_flip)
        val = datasets.ValTransform(recipe.crop_size, recipe.mean, recipe.std)
    return train, val


def main(argv=None):
    """Command-line entry point; returns the exit status."""
    try:
        run(argv)
    except (recipes.RecipeError, datasets.DatasetError,
            communication.CommunicationError) as e:
        # A user error: say it without a traceback, and end every rank.
        print('error: {}'.format(e), file=sys.stderr, flush=True)
        communication.abort_if_distributed(2)
        return 2
    return 0


def run(argv=None):
    """Parse `argv`, train, and return the finished Chainer Trainer."""
    args = parse_args(argv)
    recipe = recipes.resolve(args.recipe, args.set)
    out = args.out or os.path.join('results', recipe.name)

    # 1. Forkserver before the communicator: loader processes forked after
    #    MPI/InfiniBand or CUDA initialisation can crash (field-notes.md #1).
    if args.loaderjobs > 0:
        communication.start_forkserver()

    # 2. Communicator and device. An exception on any rank aborts all ranks.
    gpu = args.device != 'cpu'
    comm = communication.create_communicator(
        gpu=gpu, allreduce_grad_dtype=recipe.allreduce_grad_dtype)
    communication.install_abort_on_error()
    return _train(args, recipe, out, comm, gpu)


def _train(args, recipe, out, comm, gpu):
    import chainer
    import chainer.links as L
    from chainer.training import extensions
    import chainermn

    from chainer_resnet import batch_normalization, extensions as cr_ext
    from chainer_resnet import optimizers, resnet, schedules

    recipe.check_world_size(comm.size)
    if gpu:
        gpu_id = (communication.select_gpu(comm) if args.device == 'gpu'
                  else int(args.device))
        device = chainer.get_device('@cupy:{}'.format(gpu_id))
    else:
        device = chainer.get_device('@numpy')
    device.use()

    # 3. Data: every rank opens the same dataset description; the demo
    #    dataset is built once per node (a file lock serialises the ranks).
    if args.train is None:
        demo = datasets.demo_dataset(cache_dir=args.data_cache)
        train_path, val_path, root = demo.train_list, demo.val_list, demo.root
    else:
        if args.val is None:
            raise datasets.DatasetError('--train given without --val')
        train_path, val_path, root = args.train, args.val, args.root
    train_base = load_dataset(train_path, root, recipe.num_classes)
    val_base = load_dataset(val_path, root, recipe.num_classes)
    train_ids = subset(len(train_base), recipe.train_subset, recipe.seed)
    val_ids = subset(len(val_base), recipe.val_subset, recipe.seed)
    n_train = len(train_ids)
    if comm.rank == 0 and recipe.train_subset is None and n_train != recipe.train_images:
        communication.warn0(comm, 'recipe {!r} expects {} training images, the '
                            'dataset has {}; iterations follow the dataset.'.format(
                                recipe.name, recipe.train_images, n_train))

    # 4. Rank 0 prints the derived quantities and writes the effective recipe.
    summary = recipe.summary(comm.size, n_train)
    ipe = recipe.iters_per_epoch(comm.size, n_train)
    total_iters = summary['total_iters']
    if comm.rank == 0:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, 'recipe.json'), 'w') as f:
            f.write(recipe.to_json())
        print0(comm, 'chainer_resnet: ' + ', '.join(
            '{}={}'.format(k, v) for k, v in summary.items()))
        print0(comm, 'device={} communicator={} allreduce_grad_dtype={} out={}'
               .format(device, type(comm).__name__,
                       recipe.allreduce_grad_dtype if gpu else 'float32', out))

    # 5. Model. BN link per recipe; zero-gamma per Goyal et al. (2017) §5.1.
    if recipe.batch_norm == 'last_batch':
        bn = batch_normalization.LastBatchNormalization
    else:
        bn = L.BatchNormalization
    # Seeded initialisation; rank 0's weights are broadcast with the optimizer.
    numpy.random.seed(recipe.seed)
    predictor = resnet.ResNet50(
        n_class=recipe.num_classes, variant=recipe.resnet_variant,
        zero_init_residual=recipe.zero_init_residual, bn=bn)
    model = L.Classifier(predictor)
    model.to_device(device)

    # 6. Scatter indices, not data: each rank reads its own images.
    # Training indices are shuffled before they are split (list files are
    # usually sorted by class); validation is split as it is, exactly once.
    train_local = communication.scatter_indices(
        train_ids, comm.size, comm.rank, equal=True, shuffle_seed=recipe.seed)
    val_local = communication.scatter_indices(val_ids, comm.size, comm.rank,
                                              equal=False)
    train_tf, val_tf = make_transforms(recipe)
    train_set = datasets.AugmentedDataset(train_base, train_tf, recipe.seed,
                                          indices=train_local)
    val_set = datasets.AugmentedDataset(val_base, val_tf, recipe.seed,
                                        indices=val_local)
    sampler = datasets.EpochOrderSampler(len(train_set), recipe.seed)
    train_iter, val_iter = _iterators(train_set, val_set, recipe, sampler,
                                      args.loaderjobs)

    # 7. Optimizer: gradients averaged over ranks (fp16 on the wire with
    #    pure_nccl), then weight decay, then the update (method.md §1, §5).
    base_lr = recipe.base_lr(comm.size)
    if recipe.optimizer == 'rmsprop_warmup':
        warmup = functools.partial(
            schedules.alpha_sgd, center=recipe.warmup_center_epochs,
            period=recipe.warmup_period_epochs, k=recipe.warmup_k)
        optimizer = optimizers.RMSpropWarmup(
            lr=recipe.peak_lr(comm.size), alpha_sgd=warmup(0.0),
            lr_rmsprop=recipe.lr_rmsprop, mu1=recipe.mu1, mu2=recipe.mu2,
            eps=recipe.eps)
    else:
        warmup = None
        optimizer = chainer.optimizers.CorrectedMomentumSGD(
            lr=recipe.peak_lr(comm.size), momentum=recipe.mu1)
    optimizer = communication.create_multi_node_optimizer(optimizer, comm, model)
    if recipe.weight_decay > 0:
        optimizer.add_hook(optimizers.WeightDecayExceptBN(
            rate=recipe.weight_decay, include_bn=recipe.weight_decay_bn))
    if recipe.lr_schedule == 'slow_start':
        lr_fn = functools.partial(schedules.slow_start_lr, base_lr=base_lr,
                                  total_epochs=recipe.epochs)
    else:
        lr_fn = functools.partial(
            schedules.goyal_lr, base_lr=base_lr,
            warmup_epochs=recipe.goyal_warmup_epochs,
            milestones=recipe.goyal_milestones_epochs,
            start_lr=recipe.goyal_start_lr)

    # 8. Updater and trainer; iteration triggers derived from global numbers,
    #    so every rank evaluates and snapshots at the same iterations.
    updater = cr_ext.TimedUpdater(train_iter, optimizer, workers=comm.size,
                                  device=device)
    stop = cr_ext.ChunkStopTrigger(
        total_iters, chunk_iters=_chunk_iters(args, ipe))
    trainer = chainer.training.Trainer(updater, stop, out=out)
    eval_points = _points(recipe.eval_interval_epochs * ipe, total_iters)
    snap_points = _points(recipe.snapshot_interval_epochs * ipe, total_iters)
    eval_trigger = cr_ext.PointsTrigger(eval_points)
    snap_trigger = cr_ext.PointsTrigger(snap_points, stop)

    # 9. On all ranks: schedules, BN statistics averaging, evaluation,
    #    snapshots. The schedules also run at initialisation (resume-safe).
    trainer.extend(schedules.HyperparameterSchedule(
        'lr', lr_fn, ipe, whole_epochs=recipe.whole_epoch_progress), name='lr_schedule')
    if warmup is not None:
        trainer.extend(schedules.HyperparameterSchedule(
            'alpha_sgd', warmup, ipe, whole_epochs=recipe.whole_epoch_progress),
            name='alpha_sgd_schedule')
    if recipe.batch_norm == 'last_batch':
        bn_sync = cr_ext.BNStatisticsAllreduce(comm, predictor,
                                               mode=recipe.bn_stats_average)
        trainer.extend(bn_sync, trigger=eval_trigger, name='bn_allreduce_eval')
        trainer.extend(bn_sync, trigger=snap_trigger, name='bn_allreduce_snapshot')
    else:
        bn_sync = None
    trainer.extend(cr_ext.ExactEvaluator(val_iter, model, comm, device=device),
                   trigger=eval_trigger)
    trainer.extend(chainermn.extensions.multi_node_snapshot(
        comm, extensions.snapshot(
            # Uncompressed: zlib on ~300 MB of weights and optimizer state
            # costs more time than the disk space is worth.
            savefun=functools.partial(chainer.serializers.save_npz,
                                      compression=False),
            filename='snapshot_iter_{.updater.iteration}',
            autoload=args.resume is None, n_retains=2),
        [range(comm.size)]),
        # ChainerMN's wrapper would run at the default priority (100), before
        # LogReport, and a snapshot at a log iteration would lose that entry;
        # -100 is Chainer's own snapshot priority.
        trigger=snap_trigger, priority=-100)

    # 10. Reporting on rank 0 only.
    if comm.rank == 0:
        log_trigger = (recipe.log_interval_iters, 'iteration')
        trainer.extend(extensions.LogReport(trigger=log_trigger))
        trainer.extend(extensions.observe_lr(), trigger=log_trigger)
        if warmup is not None:
            trainer.extend(extensions.observe_value(
                'alpha_sgd', lambda t: t.updater.get_optimizer('main').alpha_sgd),
                trigger=log_trigger)
        keys = ['epoch', 'iteration', 'main/loss', 'main/accuracy',
                'validation/main/loss', 'validation/main/accuracy',
                'validation/main/top5', 'lr', 'alpha_sgd',
                'perf/images_per_sec', 'elapsed_time']
        trainer.extend(cr_ext.ResumablePrintReport(
            [k for k in keys if warmup is not None or k != 'alpha_sgd']),
            trigger=log_trigger)
        for name, plot_keys in (
                ('loss.png', ['main/loss', 'validation/main/loss']),
                ('accuracy.png', ['main/accuracy', 'validation/main/accuracy',
                                  'validation/main/top5']),
                ('lr.png', ['lr'] + (['alpha_sgd'] if warmup else []))):
            trainer.extend(extensions.PlotReport(
                plot_keys, x_key='iteration', file_name=name,
                trigger=log_trigger))
        if not args.no_progress:
            trainer.extend(extensions.ProgressBar(update_interval=1))

    # 11. Resume from an explicit snapshot (autoload covers re-launches).
    if args.resume:
        chainer.serializers.load_npz(args.resume, trainer)

    # 12. Run, then save the model with averaged BN statistics.
    trainer.run()
    done = updater.iteration >= total_iters
    if bn_sync is not None:
        bn_sync()
    if comm.rank == 0:
        model_path = os.path.join(out, 'model.npz')
        chainer.serializers.save_npz(model_path, predictor)
        status = {'iteration': updater.iteration, 'total_iters': total_iters,
                  'complete': done, 'log': os.path.join(out, 'log'),
                  'model': model_path,
                  'plots': [os.path.join(out, n) for n in
                            ('loss.png', 'accuracy.png', 'lr.png')]}
        log = _read_log(out)
        final = [e for e in log if 'validation/main/accuracy' in e]
        if final:
            status['val_top1'] = final[-1]['validation/main/accuracy']
            status['val_top5'] = final[-1]['validation/main/top5']
        with open(os.path.join(out, 'status.json'), 'w') as f:
            json.dump(status, f, indent=2)
        print0(comm, '\n{} at iteration {}/{}.'.format(
            'Training complete' if done else 'Stopped (re-launch to continue)',
            updater.iteration, total_iters))
        if 'val_top1' in status:
            print0(comm, 'validation top-1 {:.2%}, top-5 {:.2%}'.format(
                status['val_top1'], status['val_top5']))
        print0(comm, 'log:   {}\nplots: {}\nmodel: {}'.format(
            status['log'], ', '.join(status['plots']), model_path))
    return trainer


def _iterators(train_set, val_set, recipe, sampler, loaderjobs):
    import chainer
    b = recipe.batch_per_worker
    if loaderjobs > 0:
        train = chainer.iterators.MultiprocessIterator(
            train_set, b, n_processes=loaderjobs, order_sampler=sampler)
        val = chainer.iterators.MultiprocessIterator(
            val_set, b, repeat=False, shuffle=False, n_processes=loaderjobs)
    else:
        train = chainer.iterators.SerialIterator(train_set, b, order_sampler=sampler)
        val = chainer.iterators.SerialIterator(val_set, b, repeat=False,
                                               shuffle=False)
    return train, val


def _points(interval_iters, total_iters):
    """Iterations k*interval (rounded) up to total, and total itself."""
    interval = max(interval_iters, 1.0)
    points = sorted({int(round(k * interval))
                     for k in range(1, int(total_iters // interval) + 1)}
                    | {total_iters})
    return [p for p in points if 0 < p <= total_iters]


def _chunk_iters(args, ipe):
    if args.stop_after_iters is not None:
        return args.stop_after_iters
    if args.stop_after_epochs is not None:
        return max(1, int(round(args.stop_after_epochs * ipe)))
    return None


def _read_log(out):
    try:
        with open(os.path.join(out, 'log')) as f:
            return json.load(f)
    except (OSError, ValueError):
        return []


if __name__ == '__main__':
    sys.exit(main())
