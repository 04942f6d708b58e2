"""Time to train: the model (one :class:`Plan` per prediction) and its report.

The model (seconds; bytes; images/s)
====================================
With ``p`` GPUs (ranks), ``g`` per node, ``N = ceil(p / g)`` nodes, ``K``
virtual workers per rank (micro-batches of ``b = batch_per_worker`` images that
one GPU runs per iteration, gradients accumulated), the recipe's arithmetic uses
``W = p * K`` workers: global batch ``B = b * W`` and ``I = total_iters(W)``.

    T = T_start + I * t_iter + E * t_eval + S * t_snap

    t_iter   = max(t_comp, t_load) + max(0, t_ar - t_hide)
    t_comp   = K * b / R                     R: the GPU's ResNet-50 training rate
    t_load   = K * b / (c * L)               c cores per GPU, L images/s per core;
                                             the loader prefetches, so loading
                                             costs only what exceeds compute
    t_hide   = f_bwd * b / R  with overlap 'backward' (the last micro-batch's
               backward pass, f_bwd = 2/3: backward ~ twice the forward FLOPs),
               0 with overlap 'none' (ChainerMN pure_nccl as the paper ran it)
    t_ar     = allreduce of n = 25,557,032 * (2 for float16, 4 for float32) bytes
    t_eval   = max(m / (3 R), m / (c L)) + allreduce of the BN statistics,
               m = ceil(50,000 / p) validation images per GPU (forward ~ 1/3 of
               a training step); E = floor(epochs / eval_interval_epochs)
    t_snap   = (1 + s) * 4 * 25,557,032 / D, s optimizer state arrays per
               parameter (2 for RMSpropWarmup, 1 for momentum SGD), D bytes/s
               written by rank 0 while all ranks wait;
               S = floor(epochs / snapshot_interval_epochs)

Allreduce: alpha-beta models (alpha: seconds per step, beta = 1 / bytes/s)
--------------------------------------------------------------------------
Textbook forms on one level (Thakur, Rabenseifner & Gropp 2005; NCCL's
tuning model, src/graph/tuning.cc, counts steps the same way):

    ring(p, n)  = 2 (p - 1) alpha + 2 (p - 1) / p * n * beta
    tree(p, n)  = 2 floor(log2 p) alpha + 2 n beta      (double binary tree,
                  pipelined: each tree carries n/2, each rank sends and
                  receives n in the reduce and n in the broadcast)

Over nodes (intra-node link: alpha_i, B_i; network: alpha_n = NCCL's per-step
network cost + the link's latency, B_net per rail, r rails):

    ring (flat, one ring over all p GPUs, as NCCL 2.0.5 in the paper):
        2 (p - 1 - N) alpha_i + 2 N alpha_n + 2 (p - 1) / p * n / min(B_i, r B_net)
        (the ring leaves and enters each node once per rail's channel)
    tree (NCCL: chain inside the node, double binary tree over nodes):
        2 ((g - 1) alpha_i + floor(log2 N) alpha_n) + 2 n / min(B_i, r B_net)
    hier (reduce-scatter in the node, g concurrent ring allreduces of n/g over
          nodes sharing the node's links, all-gather in the node):
        2 ((g - 1) alpha_i + (g - 1) / g * n / B_i) + ring(N, n/g) with
        alpha_n and r B_net / g
    each collective adds NCCL's base latency (8.4 us, Simple protocol).

Sources (and how sure each input is) are in the tables below and in
docs/time-to-train.md. Inputs that are assumptions, not measurements, are
flags: ``--startup-s``, ``--load-per-core``, ``--snapshot-gbps``.
"""

import dataclasses
import math

from chainer_resnet import recipes
from chainer_resnet.plan.hardware import (
    BACKWARD_FRACTION, DTYPE_BYTES, FORWARD_SPEEDUP, GPU, GPUS, INTRA, NCCL_BASE_US, NETS,
    OPTIMIZER_STATES, RESNET50_BN_CHANNELS, RESNET50_PARAMS, Link)

ALGORITHMS = ('ring', 'tree', 'hier')
OVERLAPS = ('none', 'backward')


# --- alpha-beta allreduce models -------------------------------------------------
def ring_allreduce_s(p, nbytes, alpha_s, bytes_per_s):
    """Ring allreduce on one level: 2(p-1) alpha + 2(p-1)/p * n / bandwidth."""
    if p <= 1:
        return 0.0
    return 2 * (p - 1) * alpha_s + 2 * (p - 1) / p * nbytes / bytes_per_s


def tree_allreduce_s(p, nbytes, alpha_s, bytes_per_s):
    """Double binary tree on one level: 2 floor(log2 p) alpha + 2 n / bandwidth."""
    if p <= 1:
        return 0.0
    return 2 * math.floor(math.log2(p)) * alpha_s + 2 * nbytes / bytes_per_s


def allreduce_s(algorithm, gpus, gpus_per_node, nbytes, intra, net, rails=1):
    """Seconds for one allreduce of `nbytes` over `gpus` ranks (module docstring).

    `intra` and `net` are :class:`Link`; `rails` network links per node.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError('allreduce algorithm {!r} is not one of {}'.format(
            algorithm, ', '.join(ALGORITHMS)))
    if gpus <= 1:
        return 0.0
    g = min(gpus_per_node, gpus)
    nodes = math.ceil(gpus / g)
    base = NCCL_BASE_US * 1e-6
    a_i, b_i = intra.alpha_s, intra.bytes_per_s
    if nodes == 1:
        if algorithm == 'tree':   # NCCL's tree inside one node is a chain
            return base + 2 * (g - 1) * a_i + 2 * nbytes / b_i
        return base + ring_allreduce_s(g, nbytes, a_i, b_i)
    a_n, b_node = net.alpha_s, rails * net.bytes_per_s
    # With one GPU per node every hop is a network hop.
    b_min = b_node if g == 1 else min(b_i, b_node)
    if algorithm == 'ring':
        steps = 2 * (gpus - 1)
        inter = min(2 * nodes, steps)
        return (base + (steps - inter) * a_i + inter * a_n
                + 2 * (gpus - 1) / gpus * nbytes / b_min)
    if algorithm == 'tree':
        return (base + 2 * ((g - 1) * a_i + math.floor(math.log2(nodes)) * a_n)
                + 2 * nbytes / b_min)
    inside = 0.0
    if g > 1:   # reduce-scatter + all-gather inside the node
        inside = 2 * (base + (g - 1) * a_i + (g - 1) / g * nbytes / b_i)
    return inside + base + ring_allreduce_s(nodes, nbytes / g, a_n, b_node / g)


def allreduce_parts(algorithm, gpus, gpus_per_node, nbytes, intra, net, rails=1):
    """(latency part, bandwidth part) of :func:`allreduce_s`, seconds."""
    total = allreduce_s(algorithm, gpus, gpus_per_node, nbytes, intra, net, rails)
    latency = allreduce_s(algorithm, gpus, gpus_per_node, 0, intra, net, rails)
    return latency, total - latency


# --- the plan --------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Plan:
    """Every input and term of one prediction; seconds unless named otherwise."""

    recipe: recipes.Recipe
    gpus: int
    gpus_per_node: int
    gpu: GPU
    net: Link
    rails: int
    intra: Link
    cores_per_gpu: float
    virtual_workers: int
    algorithm: str
    overlap: str
    startup_s: float
    load_per_core: float
    snapshot_bytes_per_s: float
    train_images: int

    # -- recipe arithmetic --
    @property
    def workers(self):
        return self.gpus * self.virtual_workers

    @property
    def nodes(self):
        return math.ceil(self.gpus / min(self.gpus_per_node, self.gpus))

    @property
    def global_batch(self):
        return self.recipe.global_batch(self.workers)

    @property
    def iters_per_epoch(self):
        return self.recipe.iters_per_epoch(self.workers, self.train_images)

    @property
    def iterations(self):
        return self.recipe.total_iters(self.workers, self.train_images)

    @property
    def allreduce_bytes(self):
        return RESNET50_PARAMS * DTYPE_BYTES[self.recipe.allreduce_grad_dtype]

    # -- per iteration --
    @property
    def compute_per_iter_s(self):
        return self.virtual_workers * self.recipe.batch_per_worker / self.gpu.images_per_s

    @property
    def load_per_iter_s(self):
        return (self.virtual_workers * self.recipe.batch_per_worker
                / (self.cores_per_gpu * self.load_per_core))

    def allreduce_per_iter_s(self, algorithm=None):
        return allreduce_s(algorithm or self.algorithm, self.gpus, self.gpus_per_node,
                           self.allreduce_bytes, self.intra, self.net, self.rails)

    @property
    def hidden_s(self):
        if self.overlap == 'none':
            return 0.0
        return BACKWARD_FRACTION * self.recipe.batch_per_worker / self.gpu.images_per_s

    @property
    def exposed_allreduce_per_iter_s(self):
        return max(0.0, self.allreduce_per_iter_s() - self.hidden_s)

    @property
    def iter_s(self):
        return (max(self.compute_per_iter_s, self.load_per_iter_s)
                + self.exposed_allreduce_per_iter_s)

    # -- whole run --
    @property
    def evaluations(self):
        return math.floor(self.recipe.epochs / self.recipe.eval_interval_epochs + 1e-9)

    @property
    def eval_each_s(self):
        per_gpu = math.ceil(recipes.IMAGENET_VAL_IMAGES / self.gpus)
        forward = per_gpu / (FORWARD_SPEEDUP * self.gpu.images_per_s)
        load = per_gpu / (self.cores_per_gpu * self.load_per_core)
        stats = allreduce_s(self.algorithm, self.gpus, self.gpus_per_node,
                            2 * RESNET50_BN_CHANNELS * 4, self.intra, self.net, self.rails)
        return max(forward, load) + stats

    @property
    def snapshots(self):
        return math.floor(self.recipe.epochs / self.recipe.snapshot_interval_epochs + 1e-9)

    @property
    def snapshot_each_s(self):
        states = OPTIMIZER_STATES.get(self.recipe.optimizer, 1)
        return (1 + states) * 4 * RESNET50_PARAMS / self.snapshot_bytes_per_s

    def terms(self):
        """[(name, seconds)] of the whole run; they sum to :attr:`total_s`."""
        n = self.iterations
        return [
            ('start-up', self.startup_s),
            ('compute', n * self.compute_per_iter_s),
            ('data loading (beyond compute)',
             n * max(0.0, self.load_per_iter_s - self.compute_per_iter_s)),
            ('allreduce (exposed)', n * self.exposed_allreduce_per_iter_s),
            ('evaluation', self.evaluations * self.eval_each_s),
            ('snapshots', self.snapshots * self.snapshot_each_s),
        ]

    @property
    def total_s(self):
        return sum(s for _, s in self.terms())

    @property
    def efficiency(self):
        """Images/s per GPU over the whole run / one GPU's rate = compute / total."""
        return self.iterations * self.compute_per_iter_s / self.total_s


def make_plan(recipe, gpus, gpus_per_node=8, gpu='p100', interconnect='fdr', rails=1,
              intra=None, cores_per_gpu=2, virtual_workers=None, algorithm='ring',
              overlap='none', startup_s=0.0, load_per_core=400.0, snapshot_gbps=1.0,
              train_images=None):
    """A :class:`Plan`. `gpu` is a GPUS key or a rate in images/s (e.g. measured
    by ``benchmarks/throughput.py``); `recipe` a Recipe or a recipe name."""
    if isinstance(recipe, str):
        recipe = recipes.get(recipe)
    if isinstance(gpu, (int, float)) or _is_number(gpu):
        gpu = GPU('{:g} img/s'.format(float(gpu)), float(gpu), 'pcie', 'given')
    elif gpu in GPUS:
        gpu = GPUS[gpu]
    else:
        raise ValueError('unknown GPU {!r}; choose one of {} or give images/s'.format(
            gpu, ', '.join(GPUS)))
    if interconnect not in NETS:
        raise ValueError('unknown interconnect {!r}; choose one of {}'.format(
            interconnect, ', '.join(NETS)))
    intra = intra or gpu.intra
    if intra not in INTRA:
        raise ValueError('unknown intra-node link {!r}; choose one of {}'.format(
            intra, ', '.join(INTRA)))
    if virtual_workers is None:
        virtual_workers = getattr(recipe, 'virtual_workers_per_rank', 1) or 1
    if overlap not in OVERLAPS:
        raise ValueError('overlap {!r} is not one of {}'.format(overlap, ', '.join(OVERLAPS)))
    for name, value in (('gpus', gpus), ('gpus_per_node', gpus_per_node), ('rails', rails),
                        ('virtual_workers', virtual_workers)):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError('{} must be an integer >= 1, got {!r}'.format(name, value))
    for name, value in (('cores_per_gpu', cores_per_gpu), ('load_per_core', load_per_core),
                        ('snapshot_gbps', snapshot_gbps), ('gpu rate', gpu.images_per_s)):
        if not value > 0:
            raise ValueError('{} must be > 0, got {!r}'.format(name, value))
    if startup_s < 0:
        raise ValueError('startup_s must be >= 0, got {!r}'.format(startup_s))
    return Plan(recipe=recipe, gpus=gpus, gpus_per_node=gpus_per_node, gpu=gpu,
                net=NETS[interconnect], rails=rails, intra=INTRA[intra],
                cores_per_gpu=float(cores_per_gpu), virtual_workers=virtual_workers,
                algorithm=algorithm, overlap=overlap, startup_s=float(startup_s),
                load_per_core=float(load_per_core), snapshot_bytes_per_s=snapshot_gbps * 1e9,
                train_images=train_images or recipe.train_images)


def _is_number(text):
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def report(plan):
    """The breakdown as lines of text; the last is ``total: <minutes> min``."""
    p = plan
    r = p.recipe
    lat, bw = allreduce_parts(p.algorithm, p.gpus, p.gpus_per_node, p.allreduce_bytes,
                              p.intra, p.net, p.rails)
    lines = [
        'recipe {}: {:,} x {} ({} per node, {:,} node(s)), {} x {} rail(s), intra-node {}'
        .format(r.name, p.gpus, p.gpu.name, min(p.gpus_per_node, p.gpus), p.nodes,
                p.net.name, p.rails, p.intra.name),
        'workers {:,} ({} per GPU), global batch {:,}, {:.2f} iterations/epoch, '
        '{:.4g} epochs, {:,} iterations'.format(
            p.workers, p.virtual_workers, p.global_batch, p.iters_per_epoch, r.epochs,
            p.iterations),
        'per iteration: compute {:.4f} s ({:.0f} img/s per GPU), loading {:.4f} s '
        '({:g} cores x {:g} img/s, prefetched)'.format(
            p.compute_per_iter_s, p.gpu.images_per_s, p.load_per_iter_s,
            p.cores_per_gpu, p.load_per_core),
        'allreduce: {} of {:.1f} MB ({}) = {:.4f} s (latency {:.4f} + bandwidth {:.4f}), '
        'overlap {}: {:.4f} s exposed; iteration {:.4f} s'.format(
            p.algorithm, p.allreduce_bytes / 1e6, r.allreduce_grad_dtype,
            p.allreduce_per_iter_s(), lat, bw, p.overlap, p.exposed_allreduce_per_iter_s,
            p.iter_s),
        'allreduce by algorithm: ' + ', '.join(
            '{} {:.4f} s'.format(a, p.allreduce_per_iter_s(a)) for a in ALGORITHMS),
        '',
        '| term | seconds | share |',
        '|---|---:|---:|',
    ]
    total = p.total_s
    for name, seconds in p.terms():
        lines.append('| {} | {:.1f} | {:.1f} % |'.format(name, seconds, 100 * seconds / total))
    lines.append('| **total** | **{:.1f}** | 100 % |'.format(total))
    lines += ['',
              'scaling efficiency: {:.1f} % (images/s per GPU over the run / one GPU\'s '
              'rate)'.format(100 * p.efficiency),
              'total: {:.2f} min'.format(total / 60)]
    return lines


def sweep(plan, gpu_counts=tuple(2 ** k for k in range(3, 13))):
    """[(gpus, total seconds, efficiency)] with everything else of `plan` fixed."""
    rows = []
    for n in gpu_counts:
        q = dataclasses.replace(plan, gpus=n)
        rows.append((n, q.total_s, q.efficiency))
    return rows


def plot(plan, path, gpu_counts=tuple(2 ** k for k in range(3, 13))):
    """Write time and scaling efficiency vs GPUs (8 to 4,096) to `path` (PNG)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter
    rows = sweep(plan, gpu_counts)
    plain = FuncFormatter(lambda v, _: '{:g}'.format(v))
    fig, (ax_t, ax_e) = plt.subplots(1, 2, figsize=(10, 4))
    ax_t.plot([n for n, _, _ in rows], [t / 60 for _, t, _ in rows], 'o-')
    ax_t.set_yscale('log')
    ax_t.yaxis.set_major_formatter(plain)
    ax_t.set_ylabel('time to train (min)')
    ax_e.plot([n for n, _, _ in rows], [100 * e for _, _, e in rows], 'o-')
    ax_e.set_ylabel('scaling efficiency (%)')
    ax_e.set_ylim(0, 100)
    for ax in (ax_t, ax_e):
        ax.set_xscale('log', base=2)
        ax.xaxis.set_major_formatter(plain)
        ax.set_xlabel('GPUs')
        ax.grid(True, which='both', alpha=0.3)
    fig.suptitle('{} on {} x {}/node, {} x {}, allreduce {}, {} per GPU'.format(
        plan.recipe.name, plan.gpu.name, plan.gpus_per_node, plan.net.name, plan.rails,
        plan.algorithm, plan.recipe.batch_per_worker * plan.virtual_workers))
    fig.tight_layout()
    fig.savefig(path, format='png')
    plt.close(fig)
    return rows
