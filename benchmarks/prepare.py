#!/usr/bin/env python
"""Time per million images of ``python -m chainer_resnet.data.prepare``.

    .venv/bin/python benchmarks/prepare.py                 # 2,048 images, 3 modes
    .venv/bin/python benchmarks/prepare.py --copies 8 --jobs 16
    .venv/bin/python benchmarks/prepare.py --tiny 1300 --classes 100 --modes none --end-phase

The images are the benchmark photographs of ``benchmarks/photos.py`` (real
photographs at ImageNet's spread of sizes, 58 KB and 0.25 Mpixel on
average). They are packed as ImageNet packs its images: a training archive
of ``--classes`` class archives ``<wnid>.tar`` holding every photograph
``--copies`` times (renamed; 1 in 8 goes to the validation archive instead),
a flat validation archive, and a ``file wnid`` label file (no devkit: reading
it costs a fraction of a second once). Then the command runs once per mode
(``--subset``, ``--jobs``): copying the files, ``--resize shorter``,
``--resize square`` (size 256), each into a fresh output folder, and the
table gives wall time, CPU time of the whole process tree (the command and
its workers, from ``getrusage``) and both per million images. The archives
are read from the page cache (they were just written), so copying measures
the command, not a disk; on a cluster the filesystem sets the copy's pace.
``--tiny`` packs one 8x8 JPEG many times instead, to time what every file
costs whatever its size (tar headers, creating the file, the list files and
the final checks) at a tenth of ImageNet's 1.33 million files or more.
"""

import argparse
import io
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import time

from PIL import Image

import photos
from chainer_resnet.data.demo import default_data_dir


def _tar_bytes(files):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode='w', format=tarfile.GNU_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def build_archives(photo_set, folder, classes, copies):
    """The two archives and a label file from ``photo_set``; returns their paths
    and the numbers of training and validation images."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    with open(photo_set.list_path) as f:
        for line in f:
            if line.strip():
                paths.append(os.path.join(photo_set.root, line.split()[0]))
    wnids = ['n{:08d}'.format(1000 + 37 * k) for k in range(classes)]
    train = {wnid: [] for wnid in wnids}
    val, labels = [], []
    for copy in range(copies):
        for i, path in enumerate(paths):
            with open(path, 'rb') as f:
                data = f.read()
            k = copy * len(paths) + i
            wnid = wnids[k % classes]
            if (k // classes) % 8 == 7:
                name = 'ILSVRC2012_val_{:08d}.JPEG'.format(len(val) + 1)
                val.append((name, data))
                labels.append('{} {}\n'.format(name, wnid))
            else:
                train[wnid].append(('{}_{}.JPEG'.format(wnid, k), data))
    inner = [(wnid + '.tar', _tar_bytes(train[wnid])) for wnid in wnids]
    return (_write_archives(folder, inner, val, labels), sum(len(v) for v in train.values()),
            len(val))


def build_tiny_archives(folder, classes, per_class, val_per_class):
    """Archives of one 8x8 JPEG repeated: the per-file costs alone (tar headers,
    file creation, list files, the final checks) at a chosen file count."""
    os.makedirs(folder, exist_ok=True)
    encoded = io.BytesIO()
    Image.new('RGB', (8, 8), (20, 120, 220)).save(encoded, format='JPEG')
    data = encoded.getvalue()
    wnids = ['n{:08d}'.format(1000 + 37 * k) for k in range(classes)]
    inner = [(w + '.tar', _tar_bytes([('{}_{}.JPEG'.format(w, j), data)
                                      for j in range(per_class)])) for w in wnids]
    val = [('ILSVRC2012_val_{:08d}.JPEG'.format(k + 1), data)
           for k in range(classes * val_per_class)]
    labels = ['{} {}\n'.format(name, wnids[k % classes]) for k, (name, _) in enumerate(val)]
    return _write_archives(folder, inner, val, labels), classes * per_class, len(val)


def _write_archives(folder, inner, val, labels):
    """The training tar of class tars ``inner``, the flat validation tar of ``val``
    and the label lines, in ``folder``; their paths."""
    out = {'train_tar': os.path.join(folder, 'ILSVRC2012_img_train.tar'),
           'val_tar': os.path.join(folder, 'ILSVRC2012_img_val.tar'),
           'labels': os.path.join(folder, 'val_labels.txt')}
    for key, files in (('train_tar', inner), ('val_tar', val)):
        with open(out[key], 'wb') as f:
            f.write(_tar_bytes(files))
    with open(out['labels'], 'w') as f:
        f.writelines(labels)
    return out


def run_mode(archives, out, jobs, resize, size, again=False):
    """Run the command once; returns (wall seconds, CPU seconds of its process tree).

    ``again``: on the finished output without its record, so that only the
    list files and the final checks run.
    """
    if again:
        os.remove(os.path.join(out, 'prepared.json'))
    else:
        shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, '-m', 'chainer_resnet.data.prepare',
               '--train-tar', archives['train_tar'], '--val-tar', archives['val_tar'],
               '--val-labels', archives['labels'], '--out', out, '--subset',
               '--jobs', str(jobs), '--progress-seconds', '1e9']
    if resize:
        command += ['--resize', resize, '--size', str(size)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--count', type=int, default=512, help='photographs (photos.py)')
    p.add_argument('--copies', type=int, default=4, help='times each photograph is packed')
    p.add_argument('--classes', type=int, default=16)
    p.add_argument('--jobs', type=int, default=2, help="the command's --jobs")
    p.add_argument('--size', type=int, default=256)
    p.add_argument('--modes', default='none,shorter,square')
    p.add_argument('--work', default=None, help='folder for the archives and outputs '
                   '(default: <photo cache>/prepare-bench; removed at the end)')
    p.add_argument('--cache-dir', help='the photo cache (photos.py)')
    p.add_argument('--wheel', help='a scikit-image wheel for photos.py')
    p.add_argument('--tiny', type=int, metavar='PER_CLASS', help='instead of photographs: '
                   'PER_CLASS copies of one 8x8 JPEG per class (and PER_CLASS/26 validation '
                   'images per class, ImageNet\'s ratio), to time the per-file costs')
    p.add_argument('--end-phase', action='store_true', help='after each mode, time the list '
                   'files and final checks alone (the command again, its record removed)')
    args = p.parse_args(argv)
    if args.tiny:
        work = args.work or os.path.join(args.cache_dir or default_data_dir(), 'prepare-bench')
    else:
        photo_set = photos.photo_set(args.count, 0, args.cache_dir, args.wheel)
        work = args.work or os.path.join(os.path.dirname(photo_set.root), 'prepare-bench')
    try:
        if args.tiny:
            archives, n_train, n_val = build_tiny_archives(
                os.path.join(work, 'archives'), args.classes, args.tiny,
                max(1, args.tiny // 26))
        else:
            archives, n_train, n_val = build_archives(
                photo_set, os.path.join(work, 'archives'), args.classes, args.copies)
        images = n_train + n_val
        size = sum(os.path.getsize(archives[k]) for k in ('train_tar', 'val_tar'))
        print('{:,} images ({:,} train in {} classes, {:,} val), {:.1f} MB of archives, '
              '--jobs {}'.format(images, n_train, args.classes, n_val, size / 1e6, args.jobs))
        print('{:<8} {:>8} {:>8} {:>10} {:>14} {:>18}'.format(
            'mode', 'wall s', 'CPU s', 'images/s', 'wall per 1M', 'CPU h per 1M'))
        for mode in args.modes.split(','):
            resize = None if mode == 'none' else mode
            wall, cpu = run_mode(archives, os.path.join(work, 'out'), args.jobs, resize,
                                 args.size)
            print('{:<8} {:8.1f} {:8.1f} {:10.0f} {:>12.1f} h {:>16.2f} h'.format(
                mode, wall, cpu, images / wall, wall / images * 1e6 / 3600,
                cpu / images * 1e6 / 3600))
            if args.end_phase:
                wall, cpu = run_mode(archives, os.path.join(work, 'out'), args.jobs, resize,
                                     args.size, again=True)
                print('{:<8} {:8.1f} {:8.1f}   (list files and final checks alone, with '
                      'start-up)'.format('  end', wall, cpu))
            sys.stdout.flush()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
