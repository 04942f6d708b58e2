"""python -m chainer_resnet.predict: the model's own classes for image files."""

import json

import numpy
import pytest

import chainer
import chainer.functions as F

from chainer_resnet import model_file, predict
from chainer_resnet.data import layouts, transforms


def val_files(cache, digits=(0, 3, 7)):
    from chainer_resnet.data import demo
    data = demo.demo_dataset(cache_dir=cache)
    base = layouts.ListDataset(data.val_list, data.root)
    first = {d: next(i for i, label in enumerate(base.labels) if label == d) for d in digits}
    return [(base.paths[first[d]], d) for d in digits]


@pytest.mark.slow
def test_predict_names_the_models_best_classes(smoke_run, capsys):
    out, cache = smoke_run
    files = val_files(cache)
    model = model_file.load(str(out / 'model.npz'))
    # The oracle: the validation transform and the predictor, by hand.
    t = transforms.from_recipe(model.recipe)[1]
    x = numpy.stack([t(layouts.read_image(path)) for path, _ in files])
    with chainer.using_config('train', False):
        p = F.softmax(model.predictor(x)).array
    assert predict.main([str(out / 'model.npz')] + [path for path, _ in files] +
                        ['--top', '3', '--json']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    for line, (path, label), row in zip(lines, files, p):
        got = json.loads(line)
        assert got['image'] == path
        best = numpy.argsort(-row)[:3]
        assert [c['label'] for c in got['top']] == best.tolist()
        # The class names are the model file's: the demo's digits.
        assert [c['class'] for c in got['top']] == [str(k) for k in best]
        numpy.testing.assert_allclose([c['probability'] for c in got['top']], row[best],
                                      rtol=1e-6)
    assert predict.main([str(out / 'model.npz'), files[0][0], '--crops', '10']) == 0
    text = capsys.readouterr().out
    assert text.startswith(files[0][0] + ': ') and text.count('%') == 5


def test_predict_errors_are_one_line(tmp_path, capsys):
    assert predict.main([str(tmp_path / 'missing.npz'), 'x.jpg']) == 2
    assert capsys.readouterr().err.startswith('error: model file')
