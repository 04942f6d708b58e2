"""The time model's inputs, each with its source and how sure it is.

ResNet-50's sizes, NCCL's tuning constants, GPU training rates (:data:`GPUS`),
intra-node links (:data:`INTRA`) and networks (:data:`NETS`);
:func:`sources_lines` prints them (``python -m chainer_resnet.plan --sources``).
docs/time-to-train.md says more about each.
"""

import dataclasses

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
