"""Named training recipes: the paper's numbers as code.

A recipe is a frozen dataclass; one named instance per row we reproduce.
Small variants are derived with :func:`dataclasses.replace` so they cannot
drift from the recipe they come from. Section numbers (§) refer to
``docs/method.md``, the project's specification of Akiba et al. (2017).

``train_imagenet.py --recipe NAME --set key=value`` selects and overrides
them; :func:`resolve` does the parsing and :meth:`Recipe.validate` the checks.

- :mod:`~chainer_resnet.recipes.recipe`: :class:`Recipe`, every field with its
  source, the derived quantities (batch, learning rate, iterations), validation;
- :mod:`~chainer_resnet.recipes.named`: AKIBA2017, GOYAL2017, DEMO, SMOKE;
- :mod:`~chainer_resnet.recipes.overrides`: ``--set key=value`` and :func:`resolve`;
- :mod:`~chainer_resnet.recipes.cli`: ``python -m chainer_resnet.recipes``
  (``facts NAME RANKS [K]`` for the job scripts, ``show NAME``).
"""

from chainer_resnet.recipes.recipe import (  # noqa: F401  (the public names, in one place)
    IMAGENET_TRAIN_IMAGES, IMAGENET_VAL_IMAGES, Recipe, RecipeError, differences, filled)
from chainer_resnet.recipes.named import (  # noqa: F401
    AKIBA2017, DEMO, GOYAL2017, RECIPES, SMOKE, get, scaled_schedule)
from chainer_resnet.recipes.overrides import override, resolve  # noqa: F401
from chainer_resnet.recipes.cli import main  # noqa: F401
