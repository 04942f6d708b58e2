#!/usr/bin/env python
"""Images/s per core of the training input pipeline, ours beside torchvision's.

    make bench-env                                   # once: .venv-bench with torch
    nice -n 10 .venv-bench/bin/python benchmarks/loader.py
    .venv/bin/python benchmarks/loader.py            # the same without torchvision

All rows read the same files, the benchmark photographs of
``benchmarks/photos.py`` (512 JPEGs at ImageNet's spread of sizes, from the
page cache), in one run:

- ``decode``: PIL ``Image.open`` + ``load`` only;
- ``read_image``: our decode + ``convert('RGB')`` + array;
- ``ours, uint8`` (the trainer's path): ``PILImages`` (decoded PIL images)
  + ``TrainTransform(224, normalize=False)`` through ``AugmentedDataset``, in
  this process, then through Chainer's ``MultiprocessIterator`` with 1 and 2
  loader processes, batch 32, ``EpochOrderSampler``, forkserver workers, as
  ``train_imagenet.py`` builds them, and in the main process either
  ``concat_examples`` (what the host does when ``loader.Normalize``
  normalises on a GPU) or ``loader.Normalize`` on the CPU (NumPy, in the
  main process: CPU training);
- ``ours`` (float32): ``read_image`` arrays + ``TrainTransform(224)``,
  normalised in the loader processes, + ``concat_examples``;
- ``before``: the same with the transform as phase 1 of issue 13 measured it
  (``PhaseOneTrainTransform``, kept here only to be measured beside ours:
  the whole image as an array, the crop copied out, five float32 passes);
- ``torchvision`` (when torch is importable): ``ImageFolder`` over the same
  files, ``RandomResizedCrop(224)``, ``RandomHorizontalFlip``, ``ToTensor``,
  ``Normalize``, in this process and through ``torch.utils.data.DataLoader``
  with the same worker counts and batch 32.

All our rows give bit-identical images for the same (seed, epoch, index)
(the stage re-runs check it on every image they time).

"Per core" is images per CPU-second of every process involved (this one,
the forkserver, the loader workers; read from ``/proc``), so a busy machine
slows the wall-clock rate more than the per-core one. Then: what each stage
costs (CPU ms per image, the stages re-run one by one, checked to give the
transforms' exact output) before and now, and torchvision's, what moving a
batch between processes costs, a short cProfile of our transform, and a
what-if the pipeline does not do (JPEG draft decoding). The goals (issue
13): ours >= 1.2x torchvision per core, and >= 126 images/s per core end to
end (2 x the 63 per core the paper needs). Numbers are recorded in
benchmarks/README.md.
"""

import argparse
import collections
import cProfile
import io
import json
import math
import multiprocessing
import os
import platform
import pstats
import sys
import time

import numpy
import PIL
from PIL import Image

import chainer_resnet  # noqa: F401  (chainer compatibility hook first)
import chainer

from chainer_resnet import communication
from chainer_resnet.data import layouts, loader, sampling, transforms

import photos

GOAL_VS_TORCHVISION = 1.2
PAPER_PER_CORE = 63.0
GOAL_PER_CORE = 2 * PAPER_PER_CORE
CROP = 224
BATCH = 32
_TICK = os.sysconf('SC_CLK_TCK')
_BILINEAR = getattr(Image, 'Resampling', Image).BILINEAR
_MIRROR = getattr(Image, 'Transpose', Image).FLIP_LEFT_RIGHT

Row = collections.namedtuple('Row', 'name workers images wall cpu main_cpu')


# ---- CPU time of this process and all its descendants -------------------------------

def _proc_table():
    table = {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/{}/stat'.format(entry)) as f:
                text = f.read()
        except OSError:
            continue
        fields = text[text.rindex(')') + 2:].split()
        # fields[1]: ppid; fields[11], fields[12]: utime, stime (clock ticks).
        table[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK)
    return table


def tree_cpu_seconds(root=None):
    """User + system CPU seconds of `root` (default: this process) and its live
    descendants (forkserver children included)."""
    table = _proc_table()
    children = collections.defaultdict(list)
    for pid, (ppid, _) in table.items():
        children[ppid].append(pid)
    total, stack = 0.0, [root or os.getpid()]
    while stack:
        pid = stack.pop()
        total += table.get(pid, (0, 0.0))[1]
        stack.extend(children[pid])
    return total


class Meter(object):
    """Wall, tree-CPU and this process's CPU seconds between start() and stop()."""

    def start(self):
        self.cpu0, self.wall0 = tree_cpu_seconds(), time.perf_counter()
        self.main0 = time.process_time()

    def stop(self):
        self.wall = time.perf_counter() - self.wall0
        self.main_cpu = time.process_time() - self.main0
        self.cpu = tree_cpu_seconds() - self.cpu0

    def row(self, name, workers, images):
        return Row(name, workers, images, self.wall, self.cpu, self.main_cpu)


# ---- our pipeline --------------------------------------------------------------------

def train_transform():
    """Ours, float32 out (as the trainer was wired before the converter)."""
    return transforms.TrainTransform(CROP, transforms.IMAGENET_MEAN, transforms.IMAGENET_STD)


class Uint8TrainTransform(transforms.TrainTransform):
    """Ours, uint8 out (the trainer's, with ``loader.Normalize``)."""

    def __init__(self, crop_size, mean, std, **kwargs):
        super().__init__(crop_size, mean, std, normalize=False, **kwargs)


class PhaseOneTrainTransform(transforms.TrainTransform):
    """Before: TrainTransform as phase 1 of issue 13 measured it, not ours any
    more, kept to be measured beside ours. An RGB array in; the crop copied out
    of it, resized in PIL, flipped, then five float32 passes over HWC. Step by
    step so that our_stages can time each."""

    def crop(self, image, rng):
        top, left, h, w = transforms.sample_crop_box(
            image.shape[0], image.shape[1], self.scale, self.ratio, rng)
        return numpy.ascontiguousarray(image[top:top + h, left:left + w])

    def resize(self, crop):
        return numpy.asarray(Image.fromarray(crop).resize((self.crop_size, self.crop_size),
                                                          _BILINEAR))

    def mirror(self, out, rng):
        return out[:, ::-1] if self.flip and rng.random() < 0.5 else out

    def normalize(self, out):
        x = out.astype(numpy.float32) / numpy.float32(255)
        x -= numpy.asarray(self.mean, dtype=numpy.float32)
        x /= numpy.asarray(self.std, dtype=numpy.float32)
        return numpy.ascontiguousarray(x.transpose(2, 0, 1))

    def __call__(self, image, rng):
        return self.normalize(self.mirror(self.resize(self.crop(image, rng)), rng))

    @classmethod
    def like(cls, t):
        return cls(t.crop_size, t.mean, t.std, scale=t.scale, ratio=t.ratio, flip=t.flip)


def our_dataset(photo_set, transform, pil=False):
    """(base, dataset, sampler); ``pil``: read through ``loader.PILImages``."""
    base = layouts.ListDataset(photo_set.list_path, photo_set.root)
    images = loader.PILImages(base) if pil else base
    dataset = sampling.AugmentedDataset(images, transform, seed=0)
    return base, dataset, sampling.EpochOrderSampler(len(dataset), seed=0)


def measure_in_process(name, function, items):
    meter = Meter()
    meter.start()
    for item in items:
        function(item)
    meter.stop()
    return meter.row(name, 0, len(items))


def measure_multiprocess(name, dataset, sampler, workers, batches, warmup,
                         converter=chainer.dataset.concat_examples):
    it = chainer.iterators.MultiprocessIterator(
        dataset, BATCH, n_processes=workers, order_sampler=sampler)
    try:
        for _ in range(warmup):
            converter(it.next())
        meter = Meter()
        meter.start()
        for _ in range(batches):
            x, t = converter(it.next())
        meter.stop()
    finally:
        it.finalize()
    return meter.row(name, workers, batches * BATCH), x.nbytes


def _staged_images(base, order, n_images, clock):
    """For the first `n_images` of `order`: (path, generator AugmentedDataset
    seeds for it, file bytes, decoded PIL image, read s, decode s)."""
    size = len(base)
    for index in order[:n_images]:
        tag, pos = divmod(int(index), size)
        path = base.paths[pos]
        t0 = clock()
        with open(path, 'rb') as f:
            data = f.read()
        t1 = clock()
        img = Image.open(io.BytesIO(data))
        img.load()
        yield path, [0, tag, pos], data, img, t1 - t0, clock() - t1


def _add(stages, times):
    for key, dt in zip(stages, times):
        stages[key] += dt


def our_stages(base, transform, order, n_images, draft_lever=True):
    """Before: CPU seconds per stage of read_image + phase 1's TrainTransform,
    re-run step by step with the generators AugmentedDataset uses, each image
    checked against ours (`transform`, float32): the same bits."""
    old = PhaseOneTrainTransform.like(transform)
    stages = collections.OrderedDict((k, 0.0) for k in (
        'read file', 'decode (PIL)', 'RGB convert + array', 'crop box + copy',
        'resize to 224 (PIL bilinear)', 'flip', 'normalise + CHW (float32)'))
    draft = {'full decode': 0.0, 'draft decode': 0.0, 'reduced': 0}
    clock = time.process_time
    for path, seed, data, img, read_s, decode_s in _staged_images(base, order, n_images,
                                                                  clock):
        rng = numpy.random.default_rng(seed)
        t2 = clock()
        image = numpy.array(img.convert('RGB'), dtype=numpy.uint8)
        t3 = clock()
        crop = old.crop(image, rng)
        t4 = clock()
        out = old.resize(crop)
        t5 = clock()
        out = old.mirror(out, rng)
        t6 = clock()
        x = old.normalize(out)
        t7 = clock()
        _add(stages, (read_s, decode_s, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6))
        expected = transform(layouts.read_image(path), numpy.random.default_rng(seed))
        if not numpy.array_equal(x, expected):
            raise AssertionError('phase 1 stage re-run differs from TrainTransform for '
                                 + path)
        if draft_lever:
            # What-if: libjpeg's DCT scaling (1/2, 1/4, 1/8) to the smallest
            # size that keeps the crop box at least 224 px on each side.
            need = (math.ceil(img.size[0] * CROP / crop.shape[1]),
                    math.ceil(img.size[1] * CROP / crop.shape[0]))
            d0 = clock()
            full = Image.open(io.BytesIO(data))
            full.load()
            d1 = clock()
            small = Image.open(io.BytesIO(data))
            small.draft(small.mode if small.mode in ('L', 'CMYK') else 'RGB', need)
            small.load()
            d2 = clock()
            draft['full decode'] += d1 - d0
            draft['draft decode'] += d2 - d1
            draft['reduced'] += small.size != full.size
    n = min(n_images, len(order))
    return {k: v / n for k, v in stages.items()}, draft, n


def pil_stages(base, transform, order, n_images):
    """Ours now: CPU seconds per stage of PILImages + TrainTransform(normalize=False),
    re-run step by step, each image checked against `transform`'s uint8 output;
    and, apart, the float32 normalisation that loader.Normalize does (on the
    device when training on a GPU, in the main process on a CPU)."""
    stages = collections.OrderedDict((k, 0.0) for k in (
        'read file', 'decode (PIL)', 'crop box', 'crop (PIL) + RGB convert',
        'resize to 224 (PIL bilinear)', 'flip (PIL) + planes to array (uint8 CHW)'))
    normalise = 0.0
    clock = time.process_time
    for path, seed, _, img, read_s, decode_s in _staged_images(base, order, n_images, clock):
        rng = numpy.random.default_rng(seed)
        t2 = clock()
        top, left, h, w = transforms.sample_crop_box(
            img.size[1], img.size[0], transform.scale, transform.ratio, rng)
        t3 = clock()
        crop = img.crop((left, top, left + w, top + h))
        crop = crop if crop.mode == 'RGB' else crop.convert('RGB')
        t4 = clock()
        out = crop.resize((transform.crop_size, transform.crop_size), _BILINEAR)
        t5 = clock()
        if transform.flip and rng.random() < 0.5:
            out = out.transpose(_MIRROR)
        x = numpy.stack([numpy.frombuffer(out.tobytes('raw', band), numpy.uint8)
                         for band in 'RGB']).reshape(3, out.size[1], out.size[0])
        t6 = clock()
        transforms.normalize(x, transform.mean, transform.std)
        normalise += clock() - t6
        _add(stages, (read_s, decode_s, t3 - t2, t4 - t3, t5 - t4, t6 - t5))
        expected = transform(layouts.read_image(path, as_array=False),
                             numpy.random.default_rng(seed))
        if not numpy.array_equal(x, expected):
            raise AssertionError('stage re-run differs from TrainTransform for ' + path)
    n = min(n_images, len(order))
    return {k: v / n for k, v in stages.items()}, normalise / n


def short_profile(function, items, top=10):
    profile = cProfile.Profile()
    profile.enable()
    for item in items:
        function(item)
    profile.disable()
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats('tottime').print_stats(top)
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if 'ncalls' in line)
    keep = []
    for line in lines[start:start + top + 1]:
        keep.append(line.replace(os.path.dirname(numpy.__file__) + '/', 'numpy/')
                    .replace(os.path.dirname(PIL.__file__) + '/', 'PIL/')
                    .replace(os.path.dirname(os.path.dirname(chainer_resnet.__file__)) + '/',
                             ''))
    return keep


# ---- torchvision's pipeline ------------------------------------------------------------

def torchvision_pipeline():
    try:
        import torch
        import torchvision
        from torchvision import transforms as T
    except ImportError as exc:
        return None, 'torch/torchvision not importable ({}); run `make bench-env` and use ' \
            '.venv-bench/bin/python'.format(exc)
    tf = T.Compose([T.RandomResizedCrop(CROP), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(transforms.IMAGENET_MEAN, transforms.IMAGENET_STD)])
    return (torch, torchvision, T, tf), None


def measure_dataloader(tv, dataset, workers, batches, warmup):
    torch = tv[0]
    sampler = torch.utils.data.RandomSampler(
        dataset, num_samples=(batches + warmup + 2) * BATCH,
        generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, sampler=sampler,
                                         num_workers=workers, drop_last=True)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    meter = Meter()
    meter.start()
    for _ in range(batches):
        x, t = next(it)
    meter.stop()
    del it
    return meter.row('torchvision DataLoader', workers, batches * BATCH)


def torchvision_stages(tv, paths, n_images):
    torch, torchvision, T, _ = tv
    from torchvision.datasets.folder import pil_loader
    import torchvision.transforms.functional as TF
    rrc, norm = T.RandomResizedCrop(CROP), T.Normalize(transforms.IMAGENET_MEAN,
                                                      transforms.IMAGENET_STD)
    stages = collections.OrderedDict((k, 0.0) for k in (
        'read + decode + RGB (pil_loader)', 'RandomResizedCrop (PIL crop + bilinear)',
        'RandomHorizontalFlip', 'ToTensor (float32 CHW, /255)', 'Normalize'))
    clock = time.process_time
    for path in paths[:n_images]:
        t0 = clock()
        img = pil_loader(path)
        t1 = clock()
        top, left, h, w = rrc.get_params(img, rrc.scale, rrc.ratio)
        img = TF.resized_crop(img, top, left, h, w, rrc.size, rrc.interpolation,
                              antialias=rrc.antialias)
        t2 = clock()
        if torch.rand(1) < 0.5:
            img = TF.hflip(img)
        t3 = clock()
        x = TF.to_tensor(img)
        t4 = clock()
        norm(x)
        t5 = clock()
        for key, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            stages[key] += dt
    n = min(n_images, len(paths))
    return {k: v / n for k, v in stages.items()}


# ---- report ---------------------------------------------------------------------------

def per_core(row):
    return row.images / row.cpu if row.cpu > 0 else float('nan')


def print_rows(rows):
    print('| pipeline | loader processes | images | wall s | images/s | CPU s (main) '
          '| cores busy | images/s per core |')
    print('|---|---|---|---|---|---|---|---|')
    for r in rows:
        print('| {} | {} | {} | {:.2f} | {:.1f} | {:.2f} ({:.2f}) | {:.2f} | **{:.1f}** |'
              .format(r.name, r.workers if r.workers else 'in process', r.images, r.wall,
                      r.images / r.wall, r.cpu, r.main_cpu, r.cpu / r.wall, per_core(r)))


def print_stages(title, stages):
    total = sum(stages.values())
    print('\n{}: {:.2f} ms CPU per image'.format(title, 1e3 * total))
    print('| stage | ms per image | share |')
    print('|---|---|---|')
    for k, v in stages.items():
        print('| {} | {:.3f} | {:.0f} % |'.format(k, 1e3 * v, 100 * v / total))


def machine_line():
    try:
        with open('/proc/cpuinfo') as f:
            model = next(line.split(':', 1)[1].strip() for line in f
                         if line.startswith('model name'))
    except (OSError, StopIteration):
        model = platform.processor() or 'unknown CPU'
    return '{} cores ({}), load average {}; Python {}, NumPy {}, Pillow {}, chainer {}'.format(
        os.cpu_count(), model, ' '.join('{:.2f}'.format(x) for x in os.getloadavg()),
        platform.python_version(), numpy.__version__, PIL.__version__, chainer.__version__)


OURS_UINT8 = 'ours, uint8: MultiprocessIterator + concat_examples (the device normalises)'
OURS_UINT8_CPU = 'ours, uint8: MultiprocessIterator + Normalize on the CPU'
OURS_FLOAT = 'ours: MultiprocessIterator + concat_examples'
BEFORE = 'before (phase 1): MultiprocessIterator + concat_examples'
TORCH = 'torchvision DataLoader'


def goal_line(label, row, torch_row):
    line = '    {}: {:.1f}/core = {:.2f}x the {:.0f}/core goal'.format(
        label, per_core(row), per_core(row) / GOAL_PER_CORE, GOAL_PER_CORE)
    if torch_row is not None:
        line += '; / torchvision = {:.2f}x (goal >= {}x)'.format(
            per_core(row) / per_core(torch_row), GOAL_VS_TORCHVISION)
    return line


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--count', type=int, default=512, help='photographs in the set')
    p.add_argument('--cache-dir', help='photo cache (default: the demo data cache)')
    p.add_argument('--wheel', help='scikit-image wheel for photos.py (default: download)')
    p.add_argument('--workers', type=int, action='append',
                   help='loader process counts (repeatable; default 1 and 2)')
    p.add_argument('--batches', type=int, default=16, help='timed batches per iterator row')
    p.add_argument('--warmup', type=int, default=3,
                   help='untimed batches first (the first is fetched in the main process and '
                   'the workers start after it)')
    p.add_argument('--stage-images', type=int, default=160,
                   help='images for the stage breakdowns and the profile')
    p.add_argument('--no-torch', action='store_true', help='skip the torchvision rows')
    p.add_argument('--json', help='also write the numbers to this file')
    args = p.parse_args(argv)
    workers = args.workers or [1, 2]

    photo_set = photos.photo_set(args.count, cache_dir=args.cache_dir, wheel=args.wheel)
    print('loader benchmark, {}'.format(time.strftime('%Y-%m-%d %H:%M %Z')))
    print('machine: ' + machine_line())
    print('photos: ' + photos.describe(photo_set))
    # As train_imagenet.py does before anything else when it has loader processes.
    communication.start_forkserver()

    mean, std = transforms.IMAGENET_MEAN, transforms.IMAGENET_STD
    tf = train_transform()
    base, dataset, sampler = our_dataset(photo_set, tf)
    u8_tf = Uint8TrainTransform(CROP, mean, std)
    _, u8_set, u8_sampler = our_dataset(photo_set, u8_tf, pil=True)
    _, f32_set, f32_sampler = our_dataset(photo_set, tf, pil=True)
    _, old_set, old_sampler = our_dataset(photo_set, PhaseOneTrainTransform.like(tf))
    order = sampler(numpy.arange(len(dataset)), 0)   # epoch 1's indices (tag 1)
    paths = base.paths
    rows = []

    def decode(path):
        with Image.open(path) as img:
            img.load()

    rows.append(measure_in_process('decode only (PIL open + load)', decode, paths))
    rows.append(measure_in_process('read_image (decode + RGB + array)', layouts.read_image,
                                   paths))
    rows.append(measure_in_process('ours: read_image + TrainTransform(224)',
                                   dataset.get_example, order))
    rows.append(measure_in_process('ours, uint8: PILImages + TrainTransform(224, '
                                   'normalize=False)', u8_set.get_example, order))
    rows.append(measure_in_process('ours, float32: PILImages + TrainTransform(224)',
                                   f32_set.get_example, order))
    rows.append(measure_in_process('before (phase 1): read_image + TrainTransform(224)',
                                   old_set.get_example, order))

    tv, why_not = (None, 'skipped (--no-torch)') if args.no_torch else torchvision_pipeline()
    if tv is not None:
        torch = tv[0]
        torch.manual_seed(0)
        torch.set_num_threads(1)   # as in DataLoader workers: per-core comparison
        tv_set = tv[1].datasets.ImageFolder(photo_set.train_dir, transform=tv[3])
        tv_order = numpy.random.default_rng(0).permutation(len(tv_set))
        rows.append(measure_in_process('torchvision: ImageFolder + transforms',
                                       tv_set.__getitem__, tv_order))

    nbytes = {}
    normalize = loader.Normalize(mean, std)
    for n in workers:
        # Side by side for each worker count, ours first, torchvision last.
        for name, data, smp, converter, key in (
                (OURS_UINT8, u8_set, u8_sampler, chainer.dataset.concat_examples, 'uint8'),
                (OURS_UINT8_CPU, u8_set, u8_sampler, normalize, None),
                (OURS_FLOAT, f32_set, f32_sampler, chainer.dataset.concat_examples,
                 'float32'),
                (BEFORE, old_set, old_sampler, chainer.dataset.concat_examples, None)):
            row, size = measure_multiprocess(name, data, smp, n, args.batches, args.warmup,
                                             converter)
            rows.append(row)
            if key:
                nbytes[key] = size
        if tv is not None:
            rows.append(measure_dataloader(tv, tv_set, n, args.batches, args.warmup))

    print('\nthroughput (batch {}, {} timed batches per iterator row after {} untimed):'
          .format(BATCH, args.batches, args.warmup))
    print_rows(rows)

    def end_to_end(name):
        return {r.workers: r for r in rows if r.name == name}

    ours_end = end_to_end(OURS_UINT8)
    theirs_end = end_to_end(TORCH)
    print('\ngoals (per core = images per CPU-second):')
    for n in sorted(ours_end):
        print('  {} loader process(es):'.format(n))
        for label, name in (('ours (uint8; the device normalises)', OURS_UINT8),
                            ('ours, Normalize on the CPU in the main process', OURS_UINT8_CPU),
                            ('ours, float32 from the workers (PILImages)', OURS_FLOAT),
                            ('before (phase 1)', BEFORE)):
            print(goal_line(label, end_to_end(name)[n], theirs_end.get(n)))
    in_process = {r.name.split(':')[0]: r for r in rows if not r.workers}
    if tv is None:
        print('  torchvision: ' + why_not)
    else:
        tv_in = in_process['torchvision']
        print('  in process, / torchvision per core: ours uint8 {:.2f}x, ours float32 {:.2f}x '
              '(on read_image arrays {:.2f}x), before {:.2f}x'.format(
                  *(per_core(in_process[k]) / per_core(tv_in) for k in (
                      'ours, uint8', 'ours, float32', 'ours', 'before (phase 1)'))))

    stages, draft, n_staged = our_stages(base, tf, order, args.stage_images)
    now, normalise_s = pil_stages(base, u8_tf, order, args.stage_images)
    print_stages('ours, stage by stage ({} images, checked equal to TrainTransform(normalize='
                 'False))'.format(n_staged), now)
    print('  + float32 normalisation (loader.Normalize: on the device, or in the main process '
          'on a CPU): {:.3f} ms per image'.format(1e3 * normalise_s))
    print_stages('before (phase 1), stage by stage ({} images, checked equal to ours, '
                 'float32)'.format(n_staged), stages)
    tv_stages = None
    if tv is not None:
        tv_stages = torchvision_stages(tv, [tv_set.samples[i][0] for i in tv_order],
                                       args.stage_images)
        print_stages('torchvision, stage by stage ({} images)'.format(n_staged), tv_stages)

    print('\ninter-process transfer and batching: a float32 batch is {:.1f} MB, '
          'uint8 {:.1f} MB'.format(nbytes['float32'] / 1e6, nbytes['uint8'] / 1e6))
    for label, name, in_name in (
            ('ours, uint8', OURS_UINT8, 'ours, uint8'),
            ('ours, uint8 + Normalize on the CPU', OURS_UINT8_CPU, 'ours, uint8'),
            ('ours, float32', OURS_FLOAT, 'ours, float32')):
        for n, r in sorted(end_to_end(name).items()):
            ref = in_process[in_name]
            extra = r.cpu / r.images - ref.cpu / ref.images
            print('  {}, {} loader process(es): {:.2f} ms CPU per image above the in-process '
                  'transform, of which the main process {:.2f} ms'.format(
                      label, n, 1e3 * extra, 1e3 * r.main_cpu / r.images))
    print('\nwhat-if (measured here; the pipeline does not do it):')
    print('  JPEG draft decoding to the crop\'s scale: {:.2f} -> {:.2f} ms per decode '
          '({:.0f} % less); {} of {} images could be decoded reduced'.format(
              1e3 * draft['full decode'] / n_staged, 1e3 * draft['draft decode'] / n_staged,
              100 * (1 - draft['draft decode'] / draft['full decode']), draft['reduced'],
              n_staged))

    print('\nshort profile of ours (uint8) in process ({} images, by own time):'.format(
        min(args.stage_images, len(order))))
    for line in short_profile(u8_set.get_example, order[:args.stage_images]):
        print('  ' + line)
    print('\nload average at the end: {}'.format(
        ' '.join('{:.2f}'.format(x) for x in os.getloadavg())))

    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'rows': [r._asdict() for r in rows], 'stages': now,
                       'normalise_s': normalise_s, 'phase1_stages': stages,
                       'torchvision_stages': tv_stages, 'draft': draft,
                       'batch_bytes': nbytes, 'machine': machine_line()}, f, indent=1)
    return 0


if __name__ == '__main__':
    # Forkserver workers re-import this file as __mp_main__: keep work under this guard.
    multiprocessing.freeze_support()
    sys.exit(main())
