"""How long will a recipe take on a cluster, and where does the time go?

``python -m chainer_resnet.plan --recipe akiba2017 --gpus 1024 --gpus-per-node 8
--gpu p100 --interconnect fdr`` prints a breakdown; the last line is
``total: <minutes> min``. ``--records`` prints the model beside published
record runs (docs/time-to-train.md). No Chainer, CuPy or MPI is imported.

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

import argparse
import dataclasses
import math
import sys

from chainer_resnet import recipes

# ResNet-50 at 1,000 classes (chainer_resnet/resnet.py, tests/test_resnet.py).
RESNET50_PARAMS = 25557032
# Channels of its 53 BatchNormalization layers: 64 + sum over the stages
# (64, 3), (128, 4), (256, 6), (512, 3) of blocks * 6c + 4c (projection).
RESNET50_BN_CHANNELS = 26560
DTYPE_BYTES = {'float16': 2, 'float32': 4}
# Optimizer state arrays per parameter (what a snapshot writes besides W).
OPTIMIZER_STATES = {'rmsprop_warmup': 2, 'momentum_sgd': 1}

# NCCL's tuning model (src/graph/tuning.cc, Simple protocol; sure that these
# are NCCL's numbers, medium that they hold for NCCL 2.0.5 of 2017).
NCCL_BASE_US = 8.4          # baseLat, per collective
NCCL_NET_STEP_US = 14.0     # hwLat[NET][Ring][Simple], per network step
# One efficiency for every link: NCCL counts a 100 Gbit/s NIC as 12 GB/s
# (NET_BW in src/graph/topo.h), 96 % of the line rate.
LINK_EFFICIENCY = 12.0 / 12.5
BACKWARD_FRACTION = 2.0 / 3.0   # of a training step; forward is 1/3
FORWARD_SPEEDUP = 3.0           # evaluation (forward only) vs training rate


@dataclasses.dataclass(frozen=True)
class GPU:
    """A ResNet-50 training rate for one GPU, in images/s, and where it comes from."""

    name: str
    images_per_s: float
    intra: str        # the node's usual GPU-to-GPU link (INTRA key)
    source: str


@dataclasses.dataclass(frozen=True)
class Link:
    """A link: data rate, per-step latency (alpha) and where they come from."""

    name: str
    bytes_per_s: float
    alpha_s: float
    source: str


GPUS = {g.name: g for g in (
    GPU('p100', 193 * 9.3 / 10.6, 'pcie-qpi',
        'Tesla P100 PCIe (MN-1; 4.7 TFLOPS fp64 per GPU, PFN MN-1 blog): 193 img/s of '
        'the SXM2 P100 (below) scaled by fp32 peak 9.3/10.6 TFLOPS (NVIDIA P100 '
        'datasheet). Derived: medium'),
    GPU('p100-sxm2', 193, 'nvlink-p100',
        'TensorFlow benchmarks (tensorflow.org, May 2017), DGX-1 P100, ResNet-50, '
        'batch 32, real data, 1 GPU, fp32. Sure (for TensorFlow 1.x)'),
    GPU('p40', 193 * 11.76 / 10.6, 'pcie-qpi',
        'Tesla P40: P100 SXM2 rate scaled by fp32 peak 11.76/10.6 TFLOPS; P40 has '
        'half the memory bandwidth (346 vs 732 GB/s), so an upper bound. Low'),
    GPU('v100', 1376, 'nvlink-v100',
        'NVIDIA DeepLearningExamples MXNet RN50 v1.5, DGX-1 V100 16GB, mixed '
        'precision, batch 192, 1 GPU (data + compute). Sure (at batch 192)'),
    GPU('v100-fp32', 384, 'nvlink-v100',
        'NVIDIA DeepLearningExamples MXNet RN50 v1.5, DGX-1 V100 16GB, fp32, batch '
        '96, 1 GPU. Sure'),
    GPU('a100', 2180, 'nvswitch-a100',
        'NVIDIA DeepLearningExamples MXNet RN50 v1.5, DGX A100 80GB, mixed '
        'precision, batch 256, 1 GPU. Sure (at batch 256)'),
    GPU('a100-tf32', 1022, 'nvswitch-a100',
        'NVIDIA DeepLearningExamples MXNet RN50 v1.5, DGX A100 80GB, TF32, batch '
        '256, 1 GPU. Sure'),
)}

INTRA = {link.name: link for link in (
    Link('pcie', 12e9, 5.7e-6,
         'PCIe Gen3 x16: NCCL PCI_BW 12 GB/s (topo.h), hwLat[PCI][Ring] 5.7 us. Sure'),
    Link('pcie-qpi', 6e9, 5.7e-6,
         'PCIe GPUs on a 2-socket Broadwell host: the ring crosses QPI, NCCL '
         'BDW_QPI_BW 6 GB/s (topo.h). Medium (MN-1 node layout not published)'),
    Link('nvlink-p100', 2 * 18e9, 3.4e-6,
         'P100 NVLink hybrid cube-mesh: 2 rings x NCCL SM60_NVLINK_BW 18 GB/s, '
         'hwLat[NVLINK][Ring] 3.4 us. Medium'),
    Link('nvlink-v100', 3 * 20e9, 3.4e-6,
         'V100 NVLink2, 6 links per GPU: 3 rings x NCCL SM70_NVLINK_BW 20 GB/s. Medium'),
    Link('nvswitch-a100', 12 * 20e9, 3.4e-6,
         'A100 NVSwitch, 12 NVLink3 per GPU x NCCL SM80_NVLINK_BW 20 GB/s. Medium'),
)}


def _net(name, gbit, latency_us, source):
    return Link(name, gbit * 1e9 / 8 * LINK_EFFICIENCY,
                (NCCL_NET_STEP_US + latency_us) * 1e-6, source)


# Data rate per rail after line coding; alpha = NCCL's network step + the
# link's own latency (InfiniBand: sub-microsecond adapters, 1 us taken;
# Ethernet without RDMA: 5-10 us adapters, 10 us taken).
NETS = {link.name: link for link in (
    _net('fdr', 54.55, 1.0, 'InfiniBand FDR 4x: 56 Gb/s signalling, 64b/66b, 54.55 Gb/s '
         'data (IBTA rates). Sure'),
    _net('edr', 100, 1.0, 'InfiniBand EDR 4x: 25.78 Gb/s per lane, 64b/66b, 100 Gb/s '
         '(Mellanox ConnectX-4 manual). Sure'),
    _net('hdr', 200, 1.0, 'InfiniBand HDR 4x: 200 Gb/s data (IBTA rates). Sure'),
    _net('ndr', 400, 1.0, 'InfiniBand NDR 4x: 400 Gb/s data (IBTA rates). Sure'),
    _net('10gbe', 10, 10.0, '10 GbE, TCP; latency 5-10 us (The Register on '
         'ConnectX-2/3, 2011). Rate sure, latency low'),
    _net('25gbe', 25, 10.0, '25 GbE, TCP. Rate sure, latency low'),
    _net('50gbe', 50, 10.0, '50 GbE, TCP (Goyal et al. 2017 Big Basin NIC). Rate sure, '
         'latency low'),
    _net('100gbe', 100, 10.0, '100 GbE, TCP. Rate sure, latency low'),
)}

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


# --- published record runs ---------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Record:
    """A published run: who, hardware, published seconds, and the flags that describe it."""

    who: str
    hardware: str
    published_s: float
    published: str
    goal: float       # allowed |error| as a fraction
    argv: tuple
    source: str


# Every row writes one snapshot at the end (--set snapshot_interval_epochs=EPOCHS):
# none of the papers reports per-epoch checkpoints, and the same rule holds for all.
RECORDS = (
    Record('Akiba et al. 2017', '1,024 P100 PCIe, 2xFDR', 900, '15 min', 0.25,
           ('--recipe', 'akiba2017', '--gpus', '1024', '--gpus-per-node', '8',
            '--gpu', 'p100', '--interconnect', 'fdr', '--rails', '2',
            '--set', 'snapshot_interval_epochs=90'),
           'arXiv:1711.04325; MN-1: PFN blog "MN-1: the GPU cluster behind 15-min ImageNet"'),
    Record('Goyal et al. 2017', '256 P100 SXM2, 50 GbE', 3600, '1 h', 0.40,
           ('--recipe', 'goyal2017', '--gpus', '256', '--gpus-per-node', '8',
            '--gpu', 'p100-sxm2', '--interconnect', '50gbe', '--rails', '1',
            '--allreduce', 'hier', '--overlap', 'backward',
            '--set', 'allreduce_grad_dtype=float32', '--set', 'snapshot_interval_epochs=90'),
           'arXiv:1706.02677 (batch 8,192; Big Basin, 8 P100 NVLink, 50 Gb Ethernet; '
           'Gloo allreduce overlapped with backprop, fp32)'),
    Record('Jia et al. 2018', '2,048 P40, EDR', 396, '6.6 min', 0.40,
           ('--recipe', 'goyal2017', '--gpus', '2048', '--gpus-per-node', '8',
            '--gpu', 'p40', '--interconnect', 'edr', '--rails', '1',
            '--allreduce', 'hier', '--set', 'snapshot_interval_epochs=90'),
           'arXiv:1807.11205 (batch 65,536, 90 epochs, hierarchical allreduce, fp16 '
           'gradients; 8 P40 per node, 100 Gb/s InfiniBand: medium)'),
    Record('Mikami et al. 2018', '2,176 V100, 2xEDR', 224, '224 s', 0.40,
           ('--recipe', 'goyal2017', '--gpus', '2176', '--gpus-per-node', '4',
            '--gpu', 'v100', '--interconnect', 'edr', '--rails', '2', '--cores-per-gpu', '10',
            '--allreduce', 'hier', '--set', 'snapshot_interval_epochs=90'),
           'arXiv:1811.05233 v1 (ABCI: 4 V100 SXM2, 2 x Xeon Gold 6148, 2 x EDR per node; '
           'batch 34K->68K, final 32 per GPU; 2D-torus allreduce, fp16)'),
    Record('Yamazaki et al. 2019', '2,048 V100, 2xEDR', 74.7, '74.7 s', 0.40,
           ('--recipe', 'goyal2017', '--gpus', '2048', '--gpus-per-node', '4',
            '--gpu', 'v100', '--interconnect', 'edr', '--rails', '2', '--cores-per-gpu', '10',
            '--allreduce', 'hier', '--set', 'batch_per_worker=40',
            '--set', 'snapshot_interval_epochs=90'),
           'arXiv:1903.12650 (ABCI, batch 81,920 = 40 per GPU, MXNet; 90 epochs: medium)'),
)


def record_plans():
    """[(Record, Plan)] for :data:`RECORDS`, built through the CLI's own parser."""
    out = []
    for rec in RECORDS:
        args = build_parser().parse_args(list(rec.argv))
        out.append((rec, plan_from_args(args)))
    return out


def records_lines():
    """The record table (markdown) and each row's command, as lines of text."""
    lines = ['| run | hardware | published | model | error | goal | largest term |',
             '|---|---|---:|---:|---:|---:|---|']
    for rec, p in record_plans():
        err = p.total_s / rec.published_s - 1
        name, seconds = max(p.terms(), key=lambda t: t[1])
        lines.append('| {} | {} | {} | {} | {:+.1f} % | ±{:.0f} % {} | {} {:.0f} % |'.format(
            rec.who, rec.hardware, rec.published, _human(p.total_s), 100 * err,
            100 * rec.goal, 'met' if abs(err) <= rec.goal else 'MISSED', name,
            100 * seconds / p.total_s))
    lines.append('')
    for rec, _ in record_plans():
        lines.append('- {}: `python -m chainer_resnet.plan {}`'.format(
            rec.who, ' '.join(rec.argv)))
    return lines


def _human(seconds):
    return '{:.1f} min'.format(seconds / 60) if seconds >= 600 else '{:.0f} s'.format(seconds)


# --- command line ------------------------------------------------------------------
def build_parser():
    p = argparse.ArgumentParser(
        prog='python -m chainer_resnet.plan',
        description='Predict time to train a recipe on a cluster (alpha-beta model; '
                    'see the module docstring and docs/time-to-train.md).')
    p.add_argument('--recipe', default='akiba2017')
    p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                   help='recipe override, repeatable (as train_imagenet.py)')
    p.add_argument('--gpus', type=int, default=1024)
    p.add_argument('--gpus-per-node', type=int, default=8)
    p.add_argument('--gpu', default='p100',
                   help='one of {} or a measured rate in images/s (then the intra-node '
                        'link defaults to pcie)'.format(', '.join(GPUS)))
    p.add_argument('--interconnect', default='fdr', choices=sorted(NETS))
    p.add_argument('--rails', type=int, default=1, help='network links per node (MN-1: 2)')
    p.add_argument('--intra', choices=sorted(INTRA), default=None,
                   help='GPU-to-GPU link in a node (default: the GPU\'s usual one)')
    p.add_argument('--cores-per-gpu', type=float, default=2, help='loader cores (MN-1: 2)')
    p.add_argument('--virtual-workers', type=int, default=None, metavar='K',
                   help='micro-batches per GPU per iteration (default: the recipe\'s, or 1)')
    p.add_argument('--allreduce', choices=ALGORITHMS, default='ring')
    p.add_argument('--overlap', choices=OVERLAPS, default='none',
                   help='hide the allreduce behind backward (none: the paper\'s system)')
    p.add_argument('--startup-s', type=float, default=0.0,
                   help='start-up seconds (MPI, NCCL, CuPy compile); measure yours')
    p.add_argument('--load-per-core', type=float, default=400.0,
                   help='images/s one core decodes and augments (assumed 400)')
    p.add_argument('--snapshot-gbps', type=float, default=1.0,
                   help='GB/s rank 0 writes a snapshot at (assumed 1)')
    p.add_argument('--plot', metavar='FILE.png', help='time and efficiency vs 8..4,096 GPUs')
    p.add_argument('--records', action='store_true',
                   help='print the model beside published record runs and exit')
    p.add_argument('--sources', action='store_true',
                   help='print the GPU, network and intra-node tables with sources and exit')
    return p


def sources_lines():
    """The input tables with their sources, as lines of text."""
    lines = ['| GPU | img/s | intra-node default | source |', '|---|---:|---|---|']
    lines += ['| {} | {:.0f} | {} | {} |'.format(g.name, g.images_per_s, g.intra, g.source)
              for g in GPUS.values()]
    lines += ['', '| network (per rail) | GB/s | alpha (us) | source |', '|---|---:|---:|---|']
    lines += ['| {} | {:.2f} | {:.1f} | {} |'.format(n.name, n.bytes_per_s / 1e9, n.alpha_s * 1e6,
                                                     n.source) for n in NETS.values()]
    lines += ['', '| intra-node | GB/s | alpha (us) | source |', '|---|---:|---:|---|']
    lines += ['| {} | {:.0f} | {:.1f} | {} |'.format(i.name, i.bytes_per_s / 1e9, i.alpha_s * 1e6,
                                                    i.source) for i in INTRA.values()]
    return lines


def plan_from_args(args):
    recipe = recipes.resolve(args.recipe, args.set)
    return make_plan(recipe, args.gpus, gpus_per_node=args.gpus_per_node, gpu=args.gpu,
                     interconnect=args.interconnect, rails=args.rails, intra=args.intra,
                     cores_per_gpu=args.cores_per_gpu, virtual_workers=args.virtual_workers,
                     algorithm=args.allreduce, overlap=args.overlap,
                     startup_s=args.startup_s, load_per_core=args.load_per_core,
                     snapshot_gbps=args.snapshot_gbps)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.records or args.sources:
            print('\n'.join(records_lines() if args.records else sources_lines()))
            return 0
        plan_ = plan_from_args(args)
        lines = report(plan_)
        if args.plot:
            plot(plan_, args.plot)
            lines.insert(-1, 'plot: {}'.format(args.plot))
        print('\n'.join(lines))
    except (recipes.RecipeError, ValueError) as e:
        print('error: {}'.format(e), file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
