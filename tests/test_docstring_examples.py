"""The examples in the public layers' docstrings run as written (doctest): each says how
to reuse the layer in a model of one's own, with its inputs and outputs."""

import doctest
import importlib

import pytest

MODULES = [
    "kmask.modeling.backbones.resnet",
    "kmask.modeling.necks.fpn",
    "kmask.modeling.proposals.rpn",
    "kmask.modeling.proposals.segment_proposals",
    "kmask.layers.multi_level_roi_align",
    "kmask.modeling.roi_heads.box_head",
    "kmask.modeling.roi_heads.mask_head",
    "kmask.modeling.roi_heads.roi_heads",
    "kmask.modeling.roi_heads.res5_head",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, capsys):
    tests = [t for t in doctest.DocTestFinder().find(importlib.import_module(name)) if t.examples]
    assert tests, f"{name} has no docstring example"
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    assert runner.failures == 0, capsys.readouterr().out
