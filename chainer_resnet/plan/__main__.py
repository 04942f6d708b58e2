"""``python -m chainer_resnet.plan``: see :mod:`chainer_resnet.plan.cli`."""

from chainer_resnet.plan.cli import main

raise SystemExit(main())
