"""Published record runs, and the model's prediction for each (docs/time-to-train.md).

``python -m chainer_resnet.plan --records`` prints :func:`records_lines`.
"""

import dataclasses


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
    from chainer_resnet.plan.cli import build_parser, plan_from_args
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
