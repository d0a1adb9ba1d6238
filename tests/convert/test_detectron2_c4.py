"""detectron2's ResNet-C4 Mask R-CNN (``Res5ROIHeads``) against a PyTorch reference.

No detectron2 release installs here, so the reference is built from its parts: a
torchvision ResNet-50 with the stride moved to the 1x1 convs (detectron2's MSRA layout),
frozen BN statistics, a 1024-channel RPN head with 15 anchors, ``torchvision.ops.roi_align``
(aligned, adaptive sampling, 14x14 on the stride-16 map), ``layer4`` as ``res5``, average
pooling and the predictors. Its weights are written under detectron2's model-zoo keys and
converted; each stage of the kmask model must give the reference's output.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import tensorflow as tf

from kmask.convert import Detectron2Converter
from kmask.convert.checkpoint_reader import read_detectron2_pickle

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
from tests.convert.detectron2_reference import detectron2_resnet_keys  # noqa: E402

_K = 80  # COCO classes: detectron2 stores background as the last score row
_MEAN_BGR = np.array([103.53, 116.28, 123.675], np.float32)


class _Reference(torch.nn.Module):
    """The C4 model's stages in PyTorch, detectron2's layout."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        net = torchvision.models.resnet50()
        for layer in (net.layer2, net.layer3, net.layer4):  # MSRA: stride on the 1x1 conv
            layer[0].conv1.stride, layer[0].conv2.stride = (2, 2), (1, 1)
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for module in net.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    size = module.num_features
                    module.running_mean.copy_(torch.rand(size, generator=generator) * 0.4 - 0.2)
                    module.running_var.copy_(torch.rand(size, generator=generator) * 1.5 + 0.5)
                    module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                    module.bias.copy_(torch.rand(size, generator=generator) * 0.4 - 0.2)
        self.net = net.eval()
        self.rpn_conv = torch.nn.Conv2d(1024, 1024, 3, padding=1)
        self.objectness = torch.nn.Conv2d(1024, 15, 1)
        self.anchor_deltas = torch.nn.Conv2d(1024, 60, 1)
        self.cls_score = torch.nn.Linear(2048, _K + 1)
        self.bbox_pred = torch.nn.Linear(2048, 4 * _K)
        self.deconv = torch.nn.ConvTranspose2d(2048, 256, 2, stride=2)
        self.predictor = torch.nn.Conv2d(256, _K, 1)

    def c4(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        return net.layer3(net.layer2(net.layer1(x)))

    def res5(self, c4: torch.Tensor, boxes_xyxy: torch.Tensor) -> torch.Tensor:
        pooled = torchvision.ops.roi_align(
            c4, [boxes_xyxy], 14, spatial_scale=1 / 16, sampling_ratio=0, aligned=True
        )
        return self.net.layer4(pooled)

    def detectron2_state(self) -> dict[str, np.ndarray]:
        """The weights under detectron2's ``mask_rcnn_R_50_C4_1x`` keys."""
        renamed = {}
        for key, value in detectron2_resnet_keys(self.net).items():
            # C4: res5 is the RoI head's, the rest the backbone's.
            root = "roi_heads." if key.startswith("res5.") else "backbone."
            renamed[root + key] = value
        parts = {
            "proposal_generator.rpn_head.conv": self.rpn_conv,
            "proposal_generator.rpn_head.objectness_logits": self.objectness,
            "proposal_generator.rpn_head.anchor_deltas": self.anchor_deltas,
            "roi_heads.box_predictor.cls_score": self.cls_score,
            "roi_heads.box_predictor.bbox_pred": self.bbox_pred,
            "roi_heads.mask_head.deconv": self.deconv,
            "roi_heads.mask_head.predictor": self.predictor,
        }
        for prefix, module in parts.items():
            renamed[f"{prefix}.weight"] = module.weight.detach().numpy()
            renamed[f"{prefix}.bias"] = module.bias.detach().numpy()
        return renamed


def _relative(mine: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(mine - theirs).max() / np.abs(theirs).max())


def test_mask_rcnn_r50_c4_matches_the_reference_stage_by_stage(tmp_path):
    reference = _Reference()
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"model": reference.detectron2_state(), "__author__": "test"}, handle)
    config, model = Detectron2Converter("mask_rcnn_R_50_C4_1x").convert(
        read_detectron2_pickle(path), str(path)
    )
    model_config = config.model
    assert model_config.fpn is None and model_config.backbone.out_levels == (4,)
    assert (model_config.res5_head.pooler.resolution, model_config.res5_head.stride) == (14, 2)
    assert model_config.num_classes == _K and model.rpn.head.num_anchors == 15

    rng = np.random.default_rng(0)
    height, width = 128, 160
    rgb = rng.uniform(0, 255, (height, width, 3)).astype(np.float32)
    torch_input = torch.from_numpy((rgb[:, :, ::-1] - _MEAN_BGR).transpose(2, 0, 1).copy())[None]
    images = model.normalizer(tf.constant(rgb[None]), tf.constant([[height, width]]))
    features = model.backbone(images)
    with torch.no_grad():
        c4 = reference.c4(torch_input)
        hidden = torch.relu(reference.rpn_conv(c4))
        objectness, deltas = reference.objectness(hidden), reference.anchor_deltas(hidden)
    assert set(features) == {"C4"}
    assert _relative(features["C4"].numpy()[0], c4.numpy()[0].transpose(1, 2, 0)) < 1e-4

    logits, box_deltas = model.rpn.head(features)
    expected = objectness.numpy()[0].transpose(1, 2, 0).reshape(-1)
    assert _relative(logits["C4"].numpy()[0], expected) < 1e-4
    expected = deltas.numpy()[0].transpose(1, 2, 0).reshape(-1, 4)[:, [1, 0, 3, 2]]
    assert _relative(box_deltas["C4"].numpy()[0], expected) < 1e-4

    boxes = np.array([[4.0, 6.0, 90.0, 120.0], [30.5, 10.0, 60.0, 44.0], [0, 0, 127, 159]])
    yxyx = tf.constant(boxes[None], tf.float32)
    with torch.no_grad():
        res5 = reference.res5(c4, torch.from_numpy(boxes[:, [1, 0, 3, 2]]).float())
        pooled = res5.mean(dim=(2, 3))
        scores, regression = reference.cls_score(pooled), reference.bbox_pred(pooled)
        masks = reference.predictor(torch.relu(reference.deconv(res5)))
    shared = model.roi_heads.shared_head(features, yxyx)
    assert tuple(shared.shape) == (1, 3, 7, 7, 2048)
    assert _relative(shared.numpy()[0], res5.numpy().transpose(0, 2, 3, 1)) < 1e-4
    class_logits, class_deltas = model.roi_heads.box_head(shared, yxyx)
    expected = scores.numpy()[:, [_K, *range(_K)]]  # background moves first
    assert _relative(class_logits.numpy()[0], expected) < 1e-4
    expected = regression.numpy().reshape(-1, _K, 4)[..., [1, 0, 3, 2]]
    assert _relative(class_deltas.numpy()[0], expected) < 1e-4
    mask_logits = model.roi_heads.instance_heads[0](shared, yxyx).numpy()[0]
    assert mask_logits.shape == (3, 14, 14, _K)
    assert _relative(mask_logits, masks.numpy().transpose(0, 2, 3, 1)) < 1e-4

    # The whole model runs end to end on the converted weights (300x C4 RoIs at test).
    outputs = model(
        {"images": tf.constant(rgb[None]), "image_size": tf.constant([[height, width]])}
    )
    assert outputs["detection_masks"].shape[-2:] == (14, 14)


def test_faster_rcnn_c4_has_no_mask_keys_and_refuses_an_fpn_file(tmp_path):
    state = _Reference().detectron2_state()
    masks = {k: v for k, v in state.items() if k.startswith("roi_heads.mask_head.")}
    path = tmp_path / "faster.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"model": {k: v for k, v in state.items() if k not in masks}}, handle)
    config, model = Detectron2Converter("faster_rcnn_R_50_C4_1x").convert(
        read_detectron2_pickle(path), str(path)
    )
    assert config.model.mask_head is None and model.roi_heads.instance_heads == []
    # A C4 file is not an FPN model: the error names a key the FPN layout needs.
    with pytest.raises(Exception, match="backbone.bottom_up"):
        Detectron2Converter("faster_rcnn_R_50_FPN_1x").convert(
            read_detectron2_pickle(path), str(path)
        )
