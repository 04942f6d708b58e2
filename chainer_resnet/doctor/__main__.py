"""``python -m chainer_resnet.doctor``: exits 0 (all checks passed), 1 or 2 (usage)."""

import sys

from chainer_resnet.doctor.cli import main

if __name__ == '__main__':
    sys.exit(main())
