"""``TrainablePreset``: which backbone stages train, by name (``train.trainable``)."""

from __future__ import annotations

import keras

from kmask.config import TRAINABLE_PRESETS


class TrainablePreset:
    """The fine-tuning vocabulary of matterport's Mask R-CNN (``layers="heads"``, ``"3+"``,
    ...), equal to torchvision's ``trainable_backbone_layers``:

    =======  =================================================  ===========  ======
    preset   trains                                             torchvision  frozen
    =======  =================================================  ===========  ======
    heads    FPN, RPN and RoI heads; the backbone is frozen     0            5
    5+       and conv5 (torchvision ``layer4``)                 1            4
    4+       and conv4 (``layer3``)                             2            3
    3+       and conv3 (``layer2``); torchvision's default      3            2
    all      everything, the stem included                      5            0
    =======  =================================================  ===========  ======

    ("torchvision": ``trainable_backbone_layers``; "frozen": the backbone stages frozen,
    1 = stem, 2..5 = conv2..conv5, the value of ``model.backbone.freeze_at``.)

    The one freeze knob of a config is ``model.backbone.freeze_at``; ``train.trainable: P``
    is its alias (``freeze_at`` = P's "frozen"), and the model is built with those stages
    frozen. torchvision's 4 (stem frozen, conv2..conv5 train) has no preset: it is
    ``freeze_at: 1``. The papers' default (``freeze_at: 2``, stem and conv2 frozen) equals
    ``3+``. conv5 of a ResNet-C4 model runs per RoI in ``Res5Head``: it is frozen with the
    backbone's stage 5 (``heads``) and trains under the other presets. The FPN, RPN and
    RoI heads always train; normalization weights that are frozen by design (frozen BN)
    never do.

    Args:
      name: one of ``kmask.config.TRAINABLE_PRESETS``.

    Raises:
      ValueError: an unknown name (the message lists the presets).
    """

    def __init__(self, name: str) -> None:
        if name not in TRAINABLE_PRESETS:
            raise ValueError(
                f"unknown trainable preset {name!r}; choose one of {list(TRAINABLE_PRESETS)}"
            )
        self.name = name
        self.trainable_backbone_layers = TRAINABLE_PRESETS[name]
        self.frozen_stages = 5 - self.trainable_backbone_layers

    @classmethod
    def freezing(cls, stages: int) -> TrainablePreset:
        """The preset whose ``frozen_stages`` is ``stages`` (a ``model.backbone.freeze_at``).

        Raises:
          ValueError: ``stages`` of no preset (1, torchvision's 4, or out of 0..5).
        """
        for name, layers in TRAINABLE_PRESETS.items():
            if 5 - layers == stages:
                return cls(name)
        raise ValueError(f"no trainable preset freezes {stages} backbone stages")

    def apply(self, model: keras.Model) -> None:
        """Freezes the backbone stages of this preset in ``model`` (a ``MaskRCNN`` or any
        model whose ``backbone`` implements ``freeze(stages)``) and unfreezes the others;
        conv5 of a ResNet-C4 model (``model.roi_heads.shared_head``) follows stage 5.

        A compiled model's train function must be rebuilt afterwards
        (``model.make_train_function(force=True)``) when it was already traced.
        """
        model.backbone.freeze(self.frozen_stages)
        shared_head = getattr(getattr(model, "roi_heads", None), "shared_head", None)
        if shared_head is not None:
            shared_head.freeze(self.frozen_stages)

    def __repr__(self) -> str:
        return f"TrainablePreset({self.name!r})"
