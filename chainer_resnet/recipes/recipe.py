"""The :class:`Recipe`: every number of a training run, its sources, its checks.

Section numbers (§) refer to ``docs/method.md``. Derived quantities (global
batch, the linear scaling rule, iterations) are methods, so no caller
recomputes them; :meth:`Recipe.validate` refuses what cannot run.
"""

import dataclasses
import json
import math
import typing
from dataclasses import dataclass

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


def filled(values):
    """A recipe dict (a run's recipe.json) with the fields added since it was written at
    their defaults, so that a run made before a field existed continues unchanged."""
    defaults = {f.name: f.default for f in dataclasses.fields(Recipe)
                if f.default is not dataclasses.MISSING}
    return dict(json.loads(json.dumps(defaults)), **values)


def differences(saved, current):
    """``['field: saved -> current', ...]`` between two recipe dicts (sorted by field); a
    field added since ``saved`` was written counts at its default (:func:`filled`)."""
    saved, lines = filled(saved), []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, '(absent)'), current.get(key, '(absent)')
        if a != b:
            lines.append('{}: {!r} -> {!r}'.format(key, a, b))
    return lines
