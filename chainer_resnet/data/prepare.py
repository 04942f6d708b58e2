"""From ImageNet's official archives to the trainer's two layouts, in one command.

::

    python -m chainer_resnet.data.prepare --out /data/imagenet \\
        --train-tar ILSVRC2012_img_train.tar --val-tar ILSVRC2012_img_val.tar \\
        --devkit ILSVRC2012_devkit_t12.tar.gz [--resize shorter|square --size 256]

writes, from the archives as downloaded (nothing is fetched)::

    OUT/train/<wnid>/<wnid>_<n>.JPEG        class folders (FolderDataset)
    OUT/val/<wnid>/ILSVRC2012_val_<k>.JPEG
    OUT/train.txt, OUT/val.txt               "train/<wnid>/<file> <label>" lines
                                             (ListDataset; root: OUT)
    OUT/classes.txt                          "<wnid> <words>": line k is label k
    OUT/prepared.json                        the record, written last
                                             (chainer_resnet.data.preparation)

Labels are positions in the sorted WordNet ids, shared by train and val and
by both layouts (:mod:`~chainer_resnet.data.inventory` checks the archives
and the labels first). At the end, the four datasets are opened with the
trainer's own :func:`~chainer_resnet.data.layouts.open_dataset` checks and the
two layouts must list the same images with the same labels.

At ImageNet's size (1.33 million files, ~147 GB), on one node: ``--jobs``
processes (default: the CPUs this process may use) each write one class
folder at a time, reading its images straight from the archive at their
offsets (no unpacked copy); the largest classes go first. A class folder is
written under ``OUT/.prepare/staging`` and renamed into place when complete,
then recorded in ``OUT/.prepare/done.jsonl``: after a kill, the same command
continues with the classes not recorded (and rewrites a folder renamed but
not recorded). Progress: a bar on a terminal, a line every ``--progress-seconds``
in a batch log; at the end, the counts, time and bytes.

Exit status: 0 done (or already done), 2 a problem with the archives, labels
or output folder (one ``error:`` line saying what to do), 128 + signal number
when stopped by SIGTERM or SIGINT (run the same command to continue).
"""

import argparse
import multiprocessing
import os
import signal
import sys
import time

import numpy

from chainer_resnet import status
from chainer_resnet.data import archives, inventory, layouts, preparation, workspace
from chainer_resnet.data.layouts import DatasetError

SPLITS = workspace.SPLITS


class Stopped(Exception):
    """SIGTERM or SIGINT reached the command."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum, frame):
    raise Stopped(signum)


# --- the worker processes ----------------------------------------------------------

_WORKER = {}


def _init_worker(converter, parent):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        # Linux: the kernel kills this process when its parent dies, so no
        # orphan keeps writing (or holds the output's lock) after a kill -9.
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    _WORKER.update(converter=converter, parent=parent)


def _still_wanted():
    return os.getppid() == _WORKER['parent']


def _work(task):
    return archives.extract_class(task, _WORKER['converter'], _still_wanted)


# --- progress ----------------------------------------------------------------------

def _duration(seconds):
    seconds = int(round(seconds))
    if seconds < 60:
        return '{}s'.format(seconds)
    if seconds < 3600:
        return '{}m{:02d}s'.format(seconds // 60, seconds % 60)
    return '{}h{:02d}m'.format(seconds // 3600, seconds % 3600 // 60)


def _size(nbytes):
    for unit, scale in (('GB', 1e9), ('MB', 1e6), ('kB', 1e3)):
        if nbytes >= scale / 10:
            return '{:.1f} {}'.format(nbytes / scale, unit)
    return '{} bytes'.format(nbytes)


class Progress:
    """Class folders, images and bytes done: a bar on a terminal, else a line
    every ``interval`` seconds (and one at the end)."""

    def __init__(self, stream, tasks, total_bytes, bar, interval, clock=time.monotonic):
        self.stream, self.tasks, self.total = stream, tasks, max(total_bytes, 1)
        self.bar, self.interval, self.clock = bar, interval, clock
        self.done = self.images = self.read = 0
        self.start = self.last = clock()

    def add(self, result):
        self.done += 1
        self.images += result.images
        self.read += result.bytes_read
        now = self.clock()
        if self.bar:
            self._show(now)
        elif now - self.last >= self.interval or self.done == self.tasks:
            self.last = now
            self._show(now)

    def _show(self, now):
        elapsed = max(now - self.start, 1e-9)
        fraction = self.read / self.total
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else 0
        facts = ('{:3.0f}% {}/{} class folders, {:,} images, {} of {}, {:,.0f} images/s, '
                 'ETA {}'.format(100 * fraction, self.done, self.tasks, self.images,
                                 _size(self.read), _size(self.total), self.images / elapsed,
                                 _duration(eta)))
        if self.bar:
            filled = int(round(20 * fraction))
            self.stream.write('\r[{}{}] {}  '.format('#' * filled, '.' * (20 - filled), facts))
        else:
            self.stream.write('prepare: {}\n'.format(facts))
        self.stream.flush()

    def close(self):
        if self.bar and self.done:
            self.stream.write('\n')
            self.stream.flush()


def _options(args, found):
    resize = args.resize
    return {'resize': resize, 'size': args.size if resize else None,
            'jpeg_quality': args.quality if resize else None,
            'train_tar': {'name': os.path.basename(args.train_tar),
                          'bytes': os.path.getsize(args.train_tar)},
            'val_tar': {'name': os.path.basename(args.val_tar),
                        'bytes': os.path.getsize(args.val_tar)},
            'val_labels_sha256': found.fingerprint}


# --- the run -------------------------------------------------------------------------

def _tasks(space, found, done, args):
    tasks = []
    for name in found.classes:
        for split, members in (('train', [found.train[name]]), ('val', found.val[name])):
            if (split, name) not in done:
                tasks.append(archives.Task(
                    split, name, args.train_tar if split == 'train' else args.val_tar,
                    members, space.staging(split, name)))
    # Largest first, so that no large class starts last while the others idle.
    tasks.sort(key=lambda t: -sum(m.size for m in t.members))
    return tasks


def _run(tasks, space, done, converter, args, stream):
    if not tasks:
        return
    progress = Progress(stream, len(tasks), sum(m.size for t in tasks for m in t.members),
                        bar=stream.isatty() and not args.no_progress,
                        interval=args.progress_seconds)
    # fork: the workers start at once and share the lock on the output (a
    # second run waits for them). The only other thread in this process is
    # OpenBLAS's idle pool, which has its own fork handlers.
    pool = multiprocessing.get_context('fork').Pool(
        min(args.jobs, len(tasks)), _init_worker, (converter, os.getpid()))
    try:
        for result in pool.imap_unordered(_work, tasks):
            done[result.task.split, result.task.name] = space.publish(result)
            progress.add(result)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
        space.close()
        progress.close()


def _write_lists(out, found, done):
    """Write the list files and classes.txt; return the images per class and split."""
    counts = {}
    for split in SPLITS:
        lines = []
        for label, name in enumerate(found.classes):
            folder = os.path.join(out, split, name)
            files = sorted(os.listdir(folder))
            if len(files) != done[split, name]['images']:
                raise DatasetError(
                    '{} holds {} files but {} were written there. Remove the folder and run '
                    'the same command again to write it anew.'.format(
                        folder, len(files), done[split, name]['images']))
            counts[split, name] = len(files)
            lines.extend('{}/{}/{} {}\n'.format(split, name, f, label) for f in files)
        status.write_text_atomic(os.path.join(out, split + '.txt'), ''.join(lines))
    status.write_text_atomic(os.path.join(out, 'classes.txt'), ''.join(
        '{} {}\n'.format(name, found.words.get(name, '')).rstrip(' \n') + '\n'
        for name in found.classes))
    return counts


def _verify(out, num_classes):
    """Open the four datasets as the trainer does; the two layouts must agree."""
    opened = {}
    for split in SPLITS:
        folders = layouts.open_dataset(
            os.path.join(out, split), None, num_classes,
            classes=opened['train', 'folders'].classes if split == 'val' else None)
        lists = layouts.open_dataset(os.path.join(out, split + '.txt'), out, num_classes)
        if folders.paths != lists.paths or not numpy.array_equal(folders.labels, lists.labels):
            raise RuntimeError('{}: the class folders and {}.txt differ'.format(out, split))
        opened[split, 'folders'] = folders
    return {split: len(opened[split, 'folders']) for split in SPLITS}


def prepare(args, stream=None):
    """Run the command for parsed ``args``, printing to ``stream`` (default
    ``sys.stdout``); return the record written."""
    stream = sys.stdout if stream is None else stream
    started = time.monotonic()
    space = workspace.Workspace(os.path.abspath(args.out))
    space.check_new_or_ours()
    found = inventory.take_inventory(args.train_tar, args.val_tar, args.devkit,
                                     args.val_labels, args.subset)
    options = _options(args, found)
    with space.lock(stream):
        return _prepare_locked(args, space, found, options, started, stream)


def _prepare_locked(args, space, found, options, started, stream):
    out = space.out
    record = preparation.read_record(out)
    if record is not None and record.get('options') == options:
        stream.write('prepare: {} is already prepared ({}); nothing to do\n'.format(
            out, preparation.RECORD_NAME))
        return record
    space.check_options(options)
    done = space.read_done()
    space.tidy(found.classes, done)
    tasks = _tasks(space, found, done, args)
    labels = {'devkit': 'the devkit', 'list': args.val_labels,
              'devkit+list': 'the devkit and {} (they agree)'.format(args.val_labels)}
    stream.write('prepare: {} classes, {:,} validation images (labels from {}); resize: {}; '
                 '{} class folders to write{}, {} processes; output {}\n'.format(
                     len(found.classes), len(found.val_labels), labels[found.labels_from],
                     'none' if args.resize is None else '{} {}'.format(args.resize, args.size),
                     len(tasks), ' ({} done before)'.format(len(done)) if done else '',
                     min(args.jobs, max(len(tasks), 1)), out))
    stream.flush()
    converter = archives.Converter(args.resize, args.size, args.quality)
    _run(tasks, space, done, converter, args, stream)
    counts = _write_lists(out, found, done)
    if not args.subset:
        inventory.check_train_counts({c: counts['train', c] for c in found.classes}, found,
                                     args.train_tar)
    sizes = _verify(out, len(found.classes))
    bytes_read = sum(e['bytes_read'] for e in done.values())
    bytes_written = sum(e['bytes_written'] for e in done.values())
    record = {
        'options': options, 'resize': args.resize, 'size': options['size'],
        'num_classes': len(found.classes), 'train_images': sizes['train'],
        'val_images': sizes['val'], 'subset': bool(args.subset),
        'val_labels_from': found.labels_from, 'train_dir': 'train', 'val_dir': 'val',
        'train_list': 'train.txt', 'val_list': 'val.txt', 'classes': 'classes.txt',
        'bytes_read': bytes_read, 'bytes_written': bytes_written}
    preparation.write_record(out, record)
    stream.write(
        'prepared {} in {}: {} classes, {:,} training and {:,} validation images; {} read from '
        'the archives, {} written{}\n'.format(
            out, _duration(time.monotonic() - started), len(found.classes), sizes['train'],
            sizes['val'], _size(bytes_read), _size(bytes_written),
            ' ({} class folders were written by an earlier run)'.format(
                2 * len(found.classes) - len(tasks)) if len(tasks) < 2 * len(found.classes)
            else ''))
    stream.write('train with: --train {0}/train.txt --val {0}/val.txt (or the class folders '
                 '{0}/train and {0}/val)\n'.format(out))
    return record


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError('expected a positive integer, got {!r}'.format(text))
    return value


def _default_jobs():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def parse_args(argv=None):
    """The command's arguments (see the module docstring)."""
    p = argparse.ArgumentParser(
        prog='python -m chainer_resnet.data.prepare',
        description='Write the ILSVRC-2012 archives as class folders and list files for '
        'train_imagenet.py, with labels in one order for train and val.')
    p.add_argument('--train-tar', required=True, help='ILSVRC2012_img_train.tar')
    p.add_argument('--val-tar', required=True, help='ILSVRC2012_img_val.tar')
    p.add_argument('--devkit', help='ILSVRC2012_devkit_t12.tar.gz (or its folder): the '
                   'validation labels and the classes\' names')
    p.add_argument('--val-labels', help='a file of "file wnid" lines labelling the validation '
                   'images (instead of the devkit, or checked against it)')
    p.add_argument('--out', required=True, help='the output folder (new, or of an '
                   'interrupted run: it continues)')
    p.add_argument('--resize', choices=('shorter', 'square'), help='pre-resize: the shorter '
                   'side to --size (keeping the aspect ratio), or to --size x --size (for '
                   'the pre_resized augmentation); default: copy the files unchanged')
    p.add_argument('--size', type=_positive_int, default=256, help='pixels (default 256)')
    p.add_argument('--quality', type=_positive_int, default=90,
                   help='JPEG quality of resized images (default 90)')
    p.add_argument('--subset', action='store_true', help='accept other counts than '
                   'ILSVRC-2012\'s 1,000 classes, 1,281,167 and 50,000 images')
    p.add_argument('--jobs', type=_positive_int, default=_default_jobs(),
                   help='processes (default: the CPUs this process may use)')
    p.add_argument('--no-progress', action='store_true',
                   help='progress lines instead of a bar on a terminal')
    p.add_argument('--progress-seconds', type=float, default=30.0,
                   help='seconds between progress lines when not on a terminal (default 30)')
    return p.parse_args(argv)


def main(argv=None):
    """``python -m chainer_resnet.data.prepare``; returns the exit status."""
    args = parse_args(argv)
    previous = {s: signal.signal(s, _raise_stopped) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        prepare(args)
    except DatasetError as exc:
        print('error: {}'.format(exc), file=sys.stderr)
        return 2
    except OSError as exc:
        # A full disk, a lost mount, no permission: in this process or a worker.
        print('error: {}. The class folders completed so far are kept: fix this and run the '
              'same command again to continue.'.format(exc), file=sys.stderr)
        return 2
    except Stopped as stop:
        name = signal.Signals(stop.signum).name
        print('\nprepare: stopped by {}; the class folders completed so far are kept. Run the '
              'same command again to continue.'.format(name), file=sys.stderr)
        return 128 + stop.signum
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
