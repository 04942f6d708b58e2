"""Named training recipes: the paper's numbers as code.

A recipe is a frozen dataclass; one named instance per row we reproduce.
Small variants are derived with :func:`dataclasses.replace` so they cannot
drift from the recipe they come from. Section numbers (§) refer to
``docs/method.md``, the project's specification of Akiba et al. (2017).

``train_imagenet.py --recipe NAME --set key=value`` selects and overrides
them; :func:`resolve` does the parsing and :meth:`Recipe.validate` the checks.
"""

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, replace

IMAGENET_TRAIN_IMAGES = 1281167
IMAGENET_VAL_IMAGES = 50000


class RecipeError(ValueError):
    """A recipe or a ``--set`` override is invalid."""


@dataclass(frozen=True)
class Recipe:
    """Every number of a training run. Units are in the field names."""

    name: str

    # --- model (§4) ---------------------------------------------------------
    # v1.5 puts the stride on the 3x3 conv (Goyal et al.); v1 on the first
    # 1x1 conv (the Chainer ImageNet example of 2017).
    resnet_variant: str = 'v1.5'
    # Zero-initialised gamma of the last BN in each bottleneck (Goyal et al.).
    zero_init_residual: bool = True
    # 'last_batch': BN without moving averages, statistics of the last
    # training batch averaged over workers before evaluation (§3).
    # 'moving_average': Chainer's BatchNormalization (decay 0.9).
    batch_norm: str = 'last_batch'
    # How kept BN statistics are averaged over workers before evaluation:
    # 'mean' averages means and variances (ChainerMN AllreducePersistent, the
    # paper's tool); 'union' gives the exact variance of the global batch.
    bn_stats_average: str = 'mean'
    num_classes: int = 1000
    # Start from these weights (--init-model: model.npz, snapshot, torchvision
    # state dict); the classifier keeps its initialisation if num_classes differs.
    init_model: typing.Optional[str] = None

    # --- data (§4) ----------------------------------------------------------
    # Size of the training set the recipe was written for; the trainer
    # derives iterations from the dataset it is given and warns if they differ.
    train_images: int = IMAGENET_TRAIN_IMAGES
    # Use only the first N images of a fixed permutation (tests, smoke runs).
    train_subset: typing.Optional[int] = None
    val_subset: typing.Optional[int] = None
    crop_size: int = 224
    # 'random_resized': random-resized crop (area crop_area_min..1, aspect
    # 3/4..4/3) + flip; validation: shorter side crop*256/224, centre crop.
    # 'pre_resized': the Chainer example's random crop of images resized to
    # pre_resize_size^2, validation centre crop of the same.
    augmentation: str = 'random_resized'
    crop_area_min: float = 0.08
    pre_resize_size: int = 256
    horizontal_flip: bool = True
    # Validation resize: 'round' (longer side rounded, crop offset floored: how
    # every run so far was evaluated) or 'torchvision' (truncated, rounded: the
    # geometry of torchvision's published numbers; benchmarks/README.md).
    val_resize_rounding: str = 'round'
    mean: typing.Tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: typing.Tuple[float, float, float] = (0.229, 0.224, 0.225)

    # --- batch and workers (§4, §5) -----------------------------------------
    batch_per_worker: int = 32
    # Virtual workers (k): each rank runs k micro-batches of batch_per_worker
    # images per iteration, each with its own BN statistics, and averages
    # their gradients before the allreduce; the update is the mean over
    # ranks x k workers, the paper's mathematics on k times fewer GPUs (§8).
    # Everything that counts workers counts ranks x k.
    virtual_workers_per_rank: int = 1
    # The world size the recipe was written for; a different one is an error
    # unless world_size_check is False (guards against a launcher that
    # silently starts N single-process jobs). None: any world size.
    expected_workers: typing.Optional[int] = None
    world_size_check: bool = True

    # --- optimizer (§1) -----------------------------------------------------
    # 'rmsprop_warmup' (the paper) or 'momentum_sgd' (Goyal et al. baseline).
    optimizer: str = 'rmsprop_warmup'
    # Linear scaling rule: eta_base = lr_per_256 * global_batch / 256 (§2).
    lr_per_256: float = 0.1
    lr_rmsprop: float = 3e-4
    mu1: float = 0.9          # momentum (also MomentumSGD's)
    mu2: float = 0.99         # RMSprop second-moment decay
    eps: float = 1e-8
    # alpha_SGD(e): ELU-shaped hand-over from RMSprop to SGD (§1).
    warmup_center_epochs: float = 10.0   # beta_c
    warmup_period_epochs: float = 5.0    # beta_p
    warmup_k: float = 1.0                # printed sources say 2 (overshoots)
    # Progress e is continuous (iteration / iterations per epoch) unless True.
    whole_epoch_progress: bool = False
    # L2 term added to the gradient after the allreduce (§1); not on BN
    # gamma/beta unless weight_decay_bn.
    weight_decay: float = 1e-4
    weight_decay_bn: bool = False

    # --- learning-rate schedule (§2) ----------------------------------------
    # 'slow_start': 0.5/0.075/0.01/0.001 x eta_base, boundaries at
    # 40/70/85 of 90 epochs, scaled to `epochs`. 'goyal': linear warm-up from
    # goyal_start_lr over goyal_warmup_epochs, x0.1 at goyal_milestones_epochs.
    lr_schedule: str = 'slow_start'
    epochs: float = 90
    goyal_warmup_epochs: float = 5
    goyal_start_lr: float = 0.1
    goyal_milestones_epochs: typing.Tuple[float, ...] = (30, 60, 80)

    # --- system (§5) --------------------------------------------------------
    # Gradients are cast to this dtype only for the allreduce.
    allreduce_grad_dtype: str = 'float16'
    seed: int = 0
    eval_interval_epochs: float = 1
    snapshot_interval_epochs: float = 1
    log_interval_iters: int = 10

    # --- derived quantities ---------------------------------------------------
    # `workers` below is always the number of (virtual) workers, ranks x
    # virtual_workers_per_rank: use workers(ranks).
    def workers(self, ranks):
        """Workers of a launch on `ranks` processes: ranks x virtual_workers_per_rank."""
        return ranks * self.virtual_workers_per_rank

    def global_batch(self, workers):
        """Images per iteration over all workers."""
        return self.batch_per_worker * workers

    def base_lr(self, workers):
        """eta_base by the linear scaling rule (§2): 12.8 for 1,024 x 32."""
        return self.lr_per_256 * self.global_batch(workers) / 256

    def iters_per_epoch(self, workers, train_images=None):
        """Iterations per epoch (fractional): 39.1 for ImageNet at 32,768.

        `train_images` is the size of the training set actually used
        (default: the recipe's `train_images`).
        """
        n = self.train_images if train_images is None else train_images
        return n / self.global_batch(workers)

    def total_iters(self, workers, train_images=None):
        """Iterations of the whole run (rounded up): 3,519 for the paper."""
        return math.ceil(self.epochs * self.iters_per_epoch(workers, train_images))

    # --- checks ---------------------------------------------------------------
    def validate(self):
        """Raise RecipeError naming the first inconsistent field.

        Every number must be finite (``inf`` and ``nan`` pass most range
        checks, and ``nan`` silently switches a comparison-guarded feature
        off), choices must be known and ranges respected.
        """
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            numbers = value if isinstance(value, tuple) else (value,)
            for number in numbers:
                if isinstance(number, float) and not math.isfinite(number):
                    raise RecipeError('recipe {!r}: {} must be a finite number, got {!r}'
                                      .format(self.name, field.name, value))
        if self.seed < 0:
            raise RecipeError('recipe {!r}: seed must be >= 0, got {!r}'.format(
                self.name, self.seed))
        choices = {
            'resnet_variant': ('v1', 'v1.5'),
            'batch_norm': ('last_batch', 'moving_average'),
            'bn_stats_average': ('mean', 'union'),
            'augmentation': ('random_resized', 'pre_resized'),
            'val_resize_rounding': ('round', 'torchvision'),
            'optimizer': ('rmsprop_warmup', 'momentum_sgd'),
            'lr_schedule': ('slow_start', 'goyal'),
            'allreduce_grad_dtype': ('float16', 'float32'),
        }
        for field, allowed in choices.items():
            value = getattr(self, field)
            if value not in allowed:
                raise RecipeError('recipe {!r}: {} = {!r} is not one of {}'.format(
                    self.name, field, value, ', '.join(allowed)))
        positive = ('num_classes', 'crop_size', 'batch_per_worker',
                    'virtual_workers_per_rank', 'epochs',
                    'train_images', 'lr_per_256', 'lr_rmsprop',
                    'warmup_period_epochs', 'eval_interval_epochs',
                    'snapshot_interval_epochs', 'log_interval_iters',
                    'pre_resize_size')
        for field in positive:
            if not getattr(self, field) > 0:
                raise RecipeError('recipe {!r}: {} must be > 0, got {!r}'.format(
                    self.name, field, getattr(self, field)))
        if not 0 < self.crop_area_min <= 1:
            raise RecipeError('recipe {!r}: crop_area_min must be in (0, 1], '
                              'got {!r}'.format(self.name, self.crop_area_min))
        for field in ('mu1', 'mu2'):
            if not 0 <= getattr(self, field) < 1:
                raise RecipeError('recipe {!r}: {} must be in [0, 1), got {!r}'
                                  .format(self.name, field, getattr(self, field)))
        if self.weight_decay < 0:
            raise RecipeError('recipe {!r}: weight_decay must be >= 0'.format(
                self.name))
        if self.augmentation == 'pre_resized' and self.pre_resize_size < self.crop_size:
            raise RecipeError('recipe {!r}: pre_resize_size ({}) < crop_size ({})'
                              .format(self.name, self.pre_resize_size, self.crop_size))
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise RecipeError('recipe {!r}: mean and std need 3 values, std > 0'
                              .format(self.name))
        for field in ('train_subset', 'val_subset'):
            if getattr(self, field) is not None and getattr(self, field) < 1:
                raise RecipeError('recipe {!r}: {} must be >= 1 or None'.format(
                    self.name, field))
        if self.expected_workers is not None and self.expected_workers < 1:
            raise RecipeError('recipe {!r}: expected_workers must be >= 1 or None'
                              .format(self.name))
        return self

    def fitting_virtual_workers(self, ranks):
        """Virtual workers per rank that give ``ranks`` the workers the recipe pins,
        or None (no pinned number, or not a multiple of ``ranks``)."""
        if self.expected_workers is None or self.expected_workers % ranks:
            return None
        return self.expected_workers // ranks

    def check_world_size(self, ranks):
        """Raise RecipeError if the recipe pins another number of workers than
        ``ranks`` x virtual_workers_per_rank."""
        workers = self.workers(ranks)
        k = self.virtual_workers_per_rank
        if (self.world_size_check and self.expected_workers is not None
                and workers != self.expected_workers):
            started = '{} process(es) were started'.format(ranks)
            if k > 1:
                started += ' x {} virtual workers = {} workers'.format(k, workers)
            hint = ''
            fit = self.fitting_virtual_workers(ranks)
            if fit:
                hint = (' To run its mathematics on {} ranks, give each rank {} virtual '
                        'workers: --set virtual_workers_per_rank={}.'.format(ranks, fit, fit))
            raise RecipeError(
                'recipe {!r} is written for {} workers but {}. If the launcher was meant '
                'to start {} ranks, it did not (e.g. srun without --mpi=pmix starts '
                'singletons).{} To run at this scale on purpose, pass --set '
                'world_size_check=false; the learning rate then follows the linear scaling '
                'rule for a global batch of {}.'.format(
                    self.name, self.expected_workers, started,
                    self.expected_workers // k if self.expected_workers % k == 0
                    else self.expected_workers, hint, self.global_batch(workers)))

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def summary(self, ranks, train_images=None):
        """Derived quantities, as rank 0 prints them (the trainer adds the
        schedules' peak lr, :meth:`chainer_resnet.schedules.RecipeSchedules.peak`)."""
        n = self.train_images if train_images is None else train_images
        workers = self.workers(ranks)
        return {
            'recipe': self.name,
            'ranks': ranks,
            'virtual_workers_per_rank': self.virtual_workers_per_rank,
            'workers': workers,
            'train_images': n,
            'global_batch': self.global_batch(workers),
            'iters_per_epoch': round(self.iters_per_epoch(workers, n), 2),
            'total_iters': self.total_iters(workers, n),
            'base_lr': self.base_lr(workers),
        }


# The paper: 1,024 P100 x 32 images, 90 epochs, 74.9 % top-1.
AKIBA2017 = Recipe(
    name='akiba2017',
    expected_workers=1024,
)

# Goyal et al. (arXiv:1706.02677), the natural baseline: 256 workers x 32,
# momentum SGD, 5-epoch linear warm-up, x0.1 at 30/60/80, moving-average BN.
GOYAL2017 = replace(
    AKIBA2017,
    name='goyal2017',
    expected_workers=256,
    optimizer='momentum_sgd',
    lr_schedule='goyal',
    batch_norm='moving_average',
)


def scaled_schedule(recipe, *, name, epochs, **changes):
    """The recipe with every epoch boundary scaled to `epochs` epochs.

    The warm-up hand-over and the slow-start boundaries keep their place as a
    fraction of training (the slow-start boundaries scale by themselves, since
    they are defined as fractions of `epochs`).
    """
    factor = epochs / recipe.epochs
    return replace(
        recipe, name=name, epochs=epochs,
        warmup_center_epochs=recipe.warmup_center_epochs * factor,
        warmup_period_epochs=recipe.warmup_period_epochs * factor,
        goyal_warmup_epochs=recipe.goyal_warmup_epochs * factor,
        goyal_milestones_epochs=tuple(
            m * factor for m in recipe.goyal_milestones_epochs),
        **changes)


# `make demo`: the paper's recipe on the embedded 4,000/1,000 MNIST-digit
# images (28x28 RGB JPEGs). What changes besides the data, and why:
# - 24x24 crops: ResNet-50's 32x downsampling still ends on a 1x1 map, and on
#   2 CPU cores a step costs 0.45 s at 24 px against 0.51 s at 32 px
#   (benchmarks/README.md), which buys the epochs the digits need;
# - crops keep >= 75 % of the image and are not mirrored: a digit does not
#   survive an 8 %-area crop or a flip (measured: 35 % crops held the demo
#   near 91 % top-1);
# - 10 epochs, every epoch boundary scaled by 10/90 (warm-up hand-over at
#   epoch 1.4, lr steps at 4.4, 7.8 and 9.4);
# - lr_per_256 = 0.2 instead of 0.1: the paper spends 40 epochs at the peak
#   rate, the demo 4.4; with 0.1 two seeds ended at exactly 95.0 %, with 0.2
#   near 96 % (benchmarks/README.md).
# Workers and batch follow the launch: `make demo` runs 2 ranks x 32, so the
# linear scaling rule gives eta_base = 0.2 x 64 / 256 = 0.05.
DEMO = scaled_schedule(
    AKIBA2017, name='demo', epochs=10,
    expected_workers=None,
    num_classes=10,
    train_images=4000,
    crop_size=24,
    crop_area_min=0.75,
    horizontal_flip=False,
    lr_per_256=0.2,
    eval_interval_epochs=1,
    log_interval_iters=25,
)

# Tests: a few iterations on a slice of the demo data.
SMOKE = scaled_schedule(
    DEMO, name='smoke', epochs=2, train_images=64, train_subset=64,
    val_subset=40, batch_per_worker=8, log_interval_iters=2,
)

RECIPES = {r.name: r for r in (AKIBA2017, GOYAL2017, DEMO, SMOKE)}


def filled(values):
    """A recipe dict (a run's recipe.json) with the fields added since it was written at
    their defaults, so that a run made before a field existed continues unchanged."""
    defaults = {f.name: f.default for f in dataclasses.fields(Recipe)
                if f.default is not dataclasses.MISSING}
    return dict(json.loads(json.dumps(defaults)), **values)


def get(name):
    """The recipe called `name` (case-insensitive)."""
    try:
        return RECIPES[name.lower()]
    except KeyError:
        raise RecipeError('unknown recipe {!r}; choose one of: {}'.format(
            name, ', '.join(sorted(RECIPES)))) from None


def _parse_value(field, text):
    if field.type in (bool, 'bool'):
        lowered = text.lower()
        if lowered in ('1', 'true', 'yes', 'on'):
            return True
        if lowered in ('0', 'false', 'no', 'off'):
            return False
        raise ValueError('expected true or false')
    if field.type in (int, 'int'):
        return int(text)
    if field.type in (float, 'float'):
        return float(text)
    if field.type in (str, 'str'):
        return text
    if field.name == 'init_model':
        return None if text.lower() in ('none', '') else text
    if field.name in ('expected_workers', 'train_subset', 'val_subset'):
        return None if text.lower() in ('none', '') else int(text)
    # Tuples: comma-separated numbers.
    return tuple(float(v) for v in text.split(',') if v.strip())


def override(recipe, assignments):
    """Apply ``key=value`` strings (from ``--set``) to a recipe."""
    fields = {f.name: f for f in dataclasses.fields(Recipe)}
    changes = {}
    for item in assignments:
        key, sep, text = item.partition('=')
        key = key.strip()
        if not sep:
            raise RecipeError('--set {!r}: expected key=value'.format(item))
        if key not in fields or key == 'name':
            raise RecipeError('--set {!r}: unknown recipe field {!r}; fields are: {}'
                              .format(item, key, ', '.join(sorted(
                                  n for n in fields if n != 'name'))))
        try:
            changes[key] = _parse_value(fields[key], text.strip())
        except ValueError as e:
            raise RecipeError('--set {!r}: cannot parse {!r} for {}: {}'.format(
                item, text, key, e)) from None
    return replace(recipe, **changes) if changes else recipe


def resolve(name, assignments=()):
    """Recipe `name` with overrides applied, validated."""
    return override(get(name), assignments).validate()


def main(argv=None):
    """``python -m chainer_resnet.recipes``: list recipes, or print one's facts.

    ``facts NAME RANKS [K]`` prints, space-separated on one line, what a job
    script needs before it launches: the number of workers the recipe pins (0
    for any), the global batch and eta_base at ``RANKS`` x ``K`` workers (``K``
    virtual workers per rank, default the recipe's), and the virtual workers
    per rank that would give ``RANKS`` the pinned workers (0 for none). ``show NAME`` prints the
    recipe as JSON; no arguments lists the names. Exit status 2 on a bad name.
    """
    import argparse
    import sys
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


if __name__ == '__main__':
    raise SystemExit(main())
