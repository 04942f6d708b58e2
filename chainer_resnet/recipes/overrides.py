"""``--set key=value``: overriding a named recipe's fields for one launch."""

import dataclasses
import re
from dataclasses import replace

from chainer_resnet.recipes.named import get
from chainer_resnet.recipes.recipe import Recipe, RecipeError


def _parse_value(field, text):
    if field.type in (bool, 'bool'):
        lowered = text.lower()
        if lowered in ('1', 'true', 'yes', 'on'):
            return True
        if lowered in ('0', 'false', 'no', 'off'):
            return False
        raise ValueError('expected true or false')
    if field.type in (int, 'int'):
        return int(text)
    if field.type in (float, 'float'):
        return float(text)
    if field.type in (str, 'str'):
        return text
    if field.name == 'init_model':
        return None if text.lower() in ('none', '') else text
    if field.name in ('expected_workers', 'train_subset', 'val_subset'):
        return None if text.lower() in ('none', '') else int(text)
    # Tuples: comma-separated numbers.
    return tuple(float(v) for v in text.split(',') if v.strip())


def override(recipe, assignments):
    """Apply ``key=value`` strings (from ``--set``) to a recipe."""
    fields = {f.name: f for f in dataclasses.fields(Recipe)}
    changes = {}
    for item in assignments:
        key, sep, text = item.partition('=')
        key = key.strip()
        if not sep:
            raise RecipeError('--set {!r}: expected key=value'.format(item))
        if key not in fields or key == 'name':
            raise RecipeError('--set {!r}: unknown recipe field {!r}; fields are: {}'
                              .format(item, key, ', '.join(sorted(
                                  n for n in fields if n != 'name'))))
        try:
            changes[key] = _parse_value(fields[key], text.strip())
        except ValueError as e:
            raise RecipeError('--set {!r}: cannot parse {!r} for {}: {}'.format(
                item, text, key, e)) from None
    return replace(recipe, **changes) if changes else recipe


def resolve(name, assignments=()):
    """Recipe `name` with overrides applied, validated.

    A value that fails validation because of a ``--set`` is named with that
    flag and the recipe's own value, so the message says what to change.
    """
    recipe = get(name)
    changed = override(recipe, assignments)
    try:
        return changed.validate()
    except RecipeError as error:
        for item in reversed(list(assignments)):
            key = item.partition('=')[0].strip()
            if re.search(r'\b{}\b'.format(re.escape(key)), str(error)):
                raise RecipeError('{} (from --set {}). Change that value or leave the --set '
                                  'out for the recipe\'s {}={}.'.format(
                                      error, item.strip(), key, _text(getattr(recipe, key))))
        raise


def _text(value):
    """A recipe value as --set takes it."""
    if isinstance(value, tuple):
        return ','.join(str(v) for v in value)
    return 'none' if value is None else str(value).lower() if isinstance(value, bool) \
        else str(value)
