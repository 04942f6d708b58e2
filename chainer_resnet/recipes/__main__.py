"""``python -m chainer_resnet.recipes``: see :mod:`chainer_resnet.recipes.cli`."""

from chainer_resnet.recipes.cli import main

raise SystemExit(main())
