"""How long will a recipe take on a cluster, and where does the time go?

``python -m chainer_resnet.plan --recipe akiba2017 --gpus 1024 --gpus-per-node 8
--gpu p100 --interconnect fdr`` prints a breakdown; the last line is
``total: <minutes> min``. ``--records`` prints the model beside published
record runs (docs/time-to-train.md). No Chainer, CuPy or MPI is imported.

One module per part:

- :mod:`~chainer_resnet.plan.hardware`: the inputs (ResNet-50's sizes, GPU
  rates, intra-node links, networks, NCCL's constants), each with its source;
- :mod:`~chainer_resnet.plan.model`: the time model (alpha-beta allreduce
  models, :class:`Plan`, :func:`make_plan`, the report and the sweep);
- :mod:`~chainer_resnet.plan.records`: the published record runs it is checked
  against;
- :mod:`~chainer_resnet.plan.cli`: the command line.
"""

from chainer_resnet.plan.hardware import (  # noqa: F401  (the public names, in one place)
    DTYPE_BYTES, GPU, GPUS, INTRA, LINK_EFFICIENCY, NCCL_BASE_US, NCCL_NET_STEP_US, NETS,
    OPTIMIZER_STATES, RESNET50_BN_CHANNELS, RESNET50_PARAMS, Link, sources_lines)
from chainer_resnet.plan.model import (  # noqa: F401
    ALGORITHMS, OVERLAPS, Plan, allreduce_parts, allreduce_s, make_plan, plot, report,
    ring_allreduce_s, sweep, tree_allreduce_s)
from chainer_resnet.plan.records import RECORDS, Record, record_plans, records_lines  # noqa: F401
from chainer_resnet.plan.cli import build_parser, main, plan_from_args  # noqa: F401
