"""An independent PyTorch reference of detectron2's R-50-FPN R-CNN models (Mask R-CNN and
Keypoint R-CNN), built from torchvision parts with detectron2's conventions, and its
weights under detectron2's model-zoo keys.

No detectron2 release installs here, so each convention is written out from detectron2's
sources (``modeling/backbone/{resnet,fpn}.py``, ``anchor_generator.py``,
``proposal_generator/proposal_utils.py``, ``box_regression.py``, ``poolers.py``,
``roi_heads/{fast_rcnn,mask_head,keypoint_head}.py``, ``structures/keypoints.py``), with
``torchvision.ops`` for RoIAlign and NMS:

- input BGR 0..255 minus the MSRA means, std 1, padded with zeros (after normalization)
  to a multiple of 32;
- MSRA ResNet-50: stride on the 1x1 conv of each stage's first block, frozen BN eps 1e-5;
- FPN: 1x1 laterals and 3x3 outputs with bias, nearest 2x top-down, P6 = stride-2 1x1
  max pool of P5;
- anchors: sizes 32..512 on P2..P6, ratios 0.5, 1, 2 (size-major), ``w = sqrt(s^2 / a)``,
  ``h = a w``, not rounded, at offset 0 (cell ``(i, j)`` centred at ``(j s, i s)``);
- proposals: per level the 1000 best logits, decoded (weights 1, deltas clamped at
  log(1000 / 16)), clipped to the image (not the padding), empty boxes dropped, NMS 0.7
  per level (``batched_nms`` with the level as the class), the 1000 best kept;
- poolers: ROIAlignV2 (``aligned=True``, adaptive sampling), level
  ``floor(4 + log2(sqrt(area) / 224 + 1e-8))`` clamped to 2..5;
- box head: 2 fc of 1024 on the NCHW-flattened 7x7 maps, scores with background last,
  class-specific deltas (dx, dy, dw, dh) with weights (10, 10, 5, 5); inference: softmax,
  scores > 0.05, clip, NMS 0.5 per class, top k, then empty boxes dropped (after top k,
  ``detector_postprocess``);
- mask head: 4 conv3x3 of 256, deconv 2x2 stride 2, 1x1 predictor, sigmoid of the
  detected class's map;
- keypoint head: 8 conv3x3 of 512, deconv 4x4 stride 2 padding 1, 2x bilinear
  (``align_corners=False``); keypoints from the bicubic resize to ``ceil(h) x ceil(w)``,
  pixel ``d`` at ``x1 + (d + 0.5) w / ceil(w)`` (Heckbert: ``c = d + 0.5``), score the
  resized logit's softmax probability normalized over the 56 x 56 map.

Weights are ordinary random initializations (PyTorch's defaults) with random, sane
frozen-BN statistics; none is chosen to hide a difference.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torchvision.ops import batched_nms, roi_align

MEAN_BGR = np.array([103.53, 116.28, 123.675], np.float32)
STRIDES = (4, 8, 16, 32, 64)  # P2..P6
ANCHOR_SIZES = (32.0, 64.0, 128.0, 256.0, 512.0)
ASPECT_RATIOS = (0.5, 1.0, 2.0)
SCALE_CLAMP = math.log(1000.0 / 16)
NUM_KEYPOINTS = 17


def level_of_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """detectron2's ``assign_boxes_to_levels`` for P2..P5: boxes [R, 4] xyxy -> levels."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    level = torch.floor(4 + torch.log2(torch.sqrt(area) / 224 + 1e-8))
    return level.clamp(2, 5).to(torch.int64)


def decode(deltas: torch.Tensor, boxes: torch.Tensor, weights: tuple[float, ...]) -> torch.Tensor:
    """``Box2BoxTransform.apply_deltas``: deltas [R, k*4] (dx, dy, dw, dh) on boxes [R, 4]
    xyxy -> [R, k*4] xyxy."""
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    ctr_x, ctr_y = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
    dw = torch.clamp(deltas[:, 2::4] / ww, max=SCALE_CLAMP)
    dh = torch.clamp(deltas[:, 3::4] / wh, max=SCALE_CLAMP)
    cx, cy = dx * widths[:, None] + ctr_x[:, None], dy * heights[:, None] + ctr_y[:, None]
    w, h = torch.exp(dw) * widths[:, None], torch.exp(dh) * heights[:, None]
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), -1).reshape(
        deltas.shape
    )


def clip(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``Boxes.clip``: x to [0, width], y to [0, height]."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(
        (x1.clamp(0, width), y1.clamp(0, height), x2.clamp(0, width), y2.clamp(0, height)), -1
    )


def nonempty(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)


def heatmaps_to_keypoints(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """detectron2's keypoint decoding: maps [R, K, m, m] logits, boxes [R, 4] xyxy ->
    [R, K, 3] (x, y, score) in image pixels."""
    result = maps.new_zeros(len(boxes), maps.shape[1], 3)
    widths = (boxes[:, 2] - boxes[:, 0]).clamp(min=1)
    heights = (boxes[:, 3] - boxes[:, 1]).clamp(min=1)
    for i in range(len(boxes)):
        rows, cols = int(heights[i].ceil()), int(widths[i].ceil())
        resized = F.interpolate(maps[i : i + 1], (rows, cols), mode="bicubic")[0]
        flat = resized.reshape(maps.shape[1], -1)
        peak, position = flat.max(1)
        heatmap_peak = maps[i].reshape(maps.shape[1], -1).max(1).values
        # Softmax over the m x m heatmap, evaluated at the resized map's maximum (detectron2
        # shifts both by the resized maximum; the ratio is the same).
        denominator = torch.exp(maps[i].reshape(maps.shape[1], -1) - heatmap_peak[:, None]).sum(1)
        col, row = position % cols, position // cols
        result[i, :, 0] = boxes[i, 0] + (col.float() + 0.5) * widths[i] / cols
        result[i, :, 1] = boxes[i, 1] + (row.float() + 0.5) * heights[i] / rows
        result[i, :, 2] = torch.exp(peak - heatmap_peak) / denominator
    return result


class Detectron2Reference(torch.nn.Module):
    """detectron2's R-50-FPN Mask R-CNN (``head="mask"``) or Keypoint R-CNN
    (``head="keypoint"``) in PyTorch, stage by stage; all boxes xyxy pixels, NCHW maps.

    Args:
      num_classes: foreground classes (80 for COCO, 1 for the keypoint models).
      head: "mask" or "keypoint".
      seed: of the random weights.
      detections_per_image: ``TEST.DETECTIONS_PER_IMAGE`` (100).
    """

    def __init__(
        self, num_classes: int, head: str, seed: int = 0, detections_per_image: int = 100
    ) -> None:
        super().__init__()
        self.num_classes, self.head, self.topk = num_classes, head, detections_per_image
        torch.manual_seed(seed)
        net = torchvision.models.resnet50()
        for layer in (net.layer2, net.layer3, net.layer4):  # MSRA: stride on the 1x1 conv
            layer[0].conv1.stride, layer[0].conv2.stride = (2, 2), (1, 1)
        # Frozen BN statistics as a trained network has them (the mean and variance of
        # its inputs, here measured on one random image), then a random affine part.
        generator = torch.Generator().manual_seed(seed + 1)
        norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for norm in norms:
            norm.momentum = None  # running statistics = those of the one batch
        net.train()
        with torch.no_grad():
            image = torch.rand(1, 3, 160, 192, generator=generator) * 255 - 128
            net(image)
            for name, norm in net.named_modules():
                if not isinstance(norm, torch.nn.BatchNorm2d):
                    continue
                size = norm.num_features
                # A residual branch adds a fraction of the identity's scale, so that the
                # features stay of order 1 through the 16 blocks (as in trained networks).
                low, high = (0.1, 0.4) if name.endswith("bn3") else (0.5, 1.5)
                norm.weight.copy_(torch.rand(size, generator=generator) * (high - low) + low)
                norm.bias.copy_(torch.rand(size, generator=generator) * 0.4 - 0.2)
        self.net = net.eval()
        conv = torch.nn.Conv2d
        self.lateral = torch.nn.ModuleList(conv(c, 256, 1) for c in (256, 512, 1024, 2048))
        self.output = torch.nn.ModuleList(conv(256, 256, 3, padding=1) for _ in range(4))
        self.rpn_conv = conv(256, 256, 3, padding=1)
        self.objectness = conv(256, 3, 1)
        self.anchor_deltas = conv(256, 12, 1)
        self.fc1 = torch.nn.Linear(256 * 7 * 7, 1024)
        self.fc2 = torch.nn.Linear(1024, 1024)
        self.cls_score = torch.nn.Linear(1024, num_classes + 1)
        self.bbox_pred = torch.nn.Linear(1024, 4 * num_classes)
        if head == "mask":
            self.head_convs = torch.nn.ModuleList(conv(256, 256, 3, padding=1) for _ in range(4))
            self.deconv = torch.nn.ConvTranspose2d(256, 256, 2, stride=2)
            self.predictor = conv(256, num_classes, 1)
        elif head == "keypoint":
            self.head_convs = torch.nn.ModuleList(
                conv(256 if k == 0 else 512, 512, 3, padding=1) for k in range(8)
            )
            self.deconv = torch.nn.ConvTranspose2d(512, NUM_KEYPOINTS, 4, stride=2, padding=1)
        else:
            raise ValueError(f"head must be 'mask' or 'keypoint', got {head!r}")
        self.eval()
        self._scale_outputs(image, generator)

    def _scale_outputs(self, image: torch.Tensor, generator: torch.Generator) -> None:
        """Scales each predictor's random weights so that its outputs on ``image`` have a
        trained model's spread (layer-sequential unit-variance initialization, Mishkin and
        Matas 2016): objectness and class logits of a few units, so that scores spread over
        (0, 1) rather than sitting at 1 / (K + 1) or at 0.5 where float32 rounding would
        order them."""

        def scale(module: torch.nn.Module, output: torch.Tensor, std: float) -> None:
            factor = std / float(output.std())
            module.weight.mul_(factor)
            module.bias.mul_(factor)

        with torch.no_grad():
            pyramid = self.fpn(self.bottom_up(image))
            hidden = torch.cat([F.relu(self.rpn_conv(p)).flatten(2) for p in pyramid], 2)
            hidden = hidden[..., None]
            scale(self.objectness, self.objectness(hidden), 2.0)
            scale(self.anchor_deltas, self.anchor_deltas(hidden), 0.2)
            corners = torch.rand(16, 2, generator=generator) * torch.tensor([192.0, 160.0])
            sizes = torch.rand(16, 2, generator=generator) * 120 + 8
            boxes = torch.cat([corners, corners + sizes], 1)
            x = self.pool(pyramid, boxes, 7).flatten(1)
            x = F.relu(self.fc2(F.relu(self.fc1(x))))
            scale(self.cls_score, self.cls_score(x), 2.0)
            self.cls_score.bias.sub_(self.cls_score(x).mean(0))  # no class above all others
            scale(self.bbox_pred, self.bbox_pred(x), 1.0)
            if self.head == "mask":
                scale(self.predictor, self.mask_logits(pyramid, boxes), 3.0)
            else:
                scale(self.deconv, self.keypoint_logits(pyramid, boxes), 2.0)

    # ------------------------------------------------------------------ the stages

    @staticmethod
    def preprocess(rgb: np.ndarray) -> torch.Tensor:
        """RGB [H, W, 3] 0..255 -> [1, 3, H', W'] BGR minus the means, zero-padded to 32."""
        height, width = rgb.shape[:2]
        padded = np.zeros((-(-height // 32) * 32, -(-width // 32) * 32, 3), np.float32)
        padded[:height, :width] = rgb[:, :, ::-1] - MEAN_BGR
        return torch.from_numpy(padded.transpose(2, 0, 1).copy())[None]

    def bottom_up(self, x: torch.Tensor) -> list[torch.Tensor]:
        """res2..res5."""
        net = self.net
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        outputs = []
        for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
            x = layer(x)
            outputs.append(x)
        return outputs

    def fpn(self, res: list[torch.Tensor]) -> list[torch.Tensor]:
        """P2..P6."""
        top = self.lateral[3](res[3])
        outputs = [self.output[3](top)]
        for k in (2, 1, 0):
            top = self.lateral[k](res[k]) + F.interpolate(top, scale_factor=2.0, mode="nearest")
            outputs.insert(0, self.output[k](top))
        return [*outputs, F.max_pool2d(outputs[-1], kernel_size=1, stride=2)]

    def rpn_head(self, pyramid: list[torch.Tensor]) -> tuple[list, list]:
        """Per level: logits [H*W*A] and deltas [H*W*A, 4] (dx, dy, dw, dh), (row, col,
        anchor) order, of the first image."""
        logits, deltas = [], []
        for p in pyramid:
            hidden = F.relu(self.rpn_conv(p))
            logits.append(self.objectness(hidden)[0].permute(1, 2, 0).reshape(-1))
            raw = self.anchor_deltas(hidden)[0]
            raw = raw.reshape(3, 4, *raw.shape[1:]).permute(2, 3, 0, 1)
            deltas.append(raw.reshape(-1, 4))
        return logits, deltas

    @staticmethod
    def anchors(pyramid: list[torch.Tensor]) -> list[torch.Tensor]:
        """``DefaultAnchorGenerator`` at offset 0: per level [H*W*A, 4] xyxy."""
        result = []
        for p, stride, size in zip(pyramid, STRIDES, ANCHOR_SIZES):
            cell = []
            for ratio in ASPECT_RATIOS:
                w = math.sqrt(size**2.0 / ratio)
                h = ratio * w
                cell.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
            cell = torch.tensor(cell)
            ys = torch.arange(0.0, p.shape[2] * stride, step=stride, dtype=torch.float32)
            xs = torch.arange(0.0, p.shape[3] * stride, step=stride, dtype=torch.float32)
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            gx, gy = grid_x.reshape(-1), grid_y.reshape(-1)
            shifts = torch.stack((gx, gy, gx, gy), dim=1)
            result.append((shifts[:, None, :] + cell[None]).reshape(-1, 4))
        return result

    def proposals(
        self, pyramid: list[torch.Tensor], height: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``find_top_rpn_proposals`` at test time: (boxes [P, 4] xyxy, logits [P])."""
        logits, deltas = self.rpn_head(pyramid)
        boxes, scores, levels = [], [], []
        for level, (logit, delta, anchor) in enumerate(zip(logits, deltas, self.anchors(pyramid))):
            top, index = logit.topk(min(len(logit), 1000))
            boxes.append(decode(delta[index], anchor[index], (1.0, 1.0, 1.0, 1.0)))
            scores.append(top)
            levels.append(torch.full((len(top),), level))
        boxes, scores, levels = torch.cat(boxes), torch.cat(scores), torch.cat(levels)
        boxes = clip(boxes, height, width)
        keep = nonempty(boxes)
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = batched_nms(boxes, scores, levels, 0.7)[:1000]
        return boxes[keep], scores[keep]

    @staticmethod
    def pool(pyramid: list[torch.Tensor], boxes: torch.Tensor, resolution: int) -> torch.Tensor:
        """``ROIPooler`` with ROIAlignV2 on P2..P5: [R, C, r, r]."""
        levels = level_of_boxes(boxes)
        pooled = boxes.new_zeros(len(boxes), pyramid[0].shape[1], resolution, resolution)
        rois = torch.cat([boxes.new_zeros(len(boxes), 1), boxes], 1)
        for level in range(2, 6):
            chosen = levels == level
            if chosen.any():
                pooled[chosen] = roi_align(
                    pyramid[level - 2],
                    rois[chosen],
                    resolution,
                    spatial_scale=2.0**-level,
                    sampling_ratio=0,
                    aligned=True,
                )
        return pooled

    def box_head(
        self, pyramid: list[torch.Tensor], boxes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(class logits [R, K + 1] background last, deltas [R, 4K] (dx, dy, dw, dh))."""
        x = self.pool(pyramid, boxes, 7).flatten(1)
        x = F.relu(self.fc2(F.relu(self.fc1(x))))
        return self.cls_score(x), self.bbox_pred(x)

    def detect(
        self, pyramid: list[torch.Tensor], proposals: torch.Tensor, height: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``fast_rcnn_inference`` + ``detector_postprocess`` at scale 1: (boxes [N, 4]
        xyxy, scores [N], classes [N] 0-based)."""
        logits, deltas = self.box_head(pyramid, proposals)
        scores = F.softmax(logits, -1)[:, :-1]
        boxes = decode(deltas, proposals, (10.0, 10.0, 5.0, 5.0)).reshape(-1, self.num_classes, 4)
        boxes = clip(boxes, height, width)
        candidates = (scores > 0.05).nonzero()
        boxes = boxes[candidates[:, 0], candidates[:, 1]]
        scores = scores[candidates[:, 0], candidates[:, 1]]
        keep = batched_nms(boxes, scores, candidates[:, 1], 0.5)[: self.topk]
        boxes, scores, classes = boxes[keep], scores[keep], candidates[keep, 1]
        keep = nonempty(boxes)
        return boxes[keep], scores[keep], classes[keep]

    def mask_logits(self, pyramid: list[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
        """[R, K, 28, 28]."""
        x = self.pool(pyramid, boxes, 14)
        for conv in self.head_convs:
            x = F.relu(conv(x))
        return self.predictor(F.relu(self.deconv(x)))

    def keypoint_logits(self, pyramid: list[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
        """[R, 17, 56, 56]."""
        x = self.pool(pyramid, boxes, 14)
        for conv in self.head_convs:
            x = F.relu(conv(x))
        return F.interpolate(self.deconv(x), scale_factor=2.0, mode="bilinear")

    # ------------------------------------------------------------------ the weights

    def detectron2_state(self) -> dict[str, np.ndarray]:
        """The weights under detectron2's model-zoo keys (``model_final_*.pkl``'s
        ``"model"`` dict of NumPy arrays)."""
        state = {
            f"backbone.bottom_up.{key}": value
            for key, value in detectron2_resnet_keys(self.net).items()
        }
        parts = {
            "proposal_generator.rpn_head.conv": self.rpn_conv,
            "proposal_generator.rpn_head.objectness_logits": self.objectness,
            "proposal_generator.rpn_head.anchor_deltas": self.anchor_deltas,
            "roi_heads.box_head.fc1": self.fc1,
            "roi_heads.box_head.fc2": self.fc2,
            "roi_heads.box_predictor.cls_score": self.cls_score,
            "roi_heads.box_predictor.bbox_pred": self.bbox_pred,
        }
        for level in range(2, 6):
            parts[f"backbone.fpn_lateral{level}"] = self.lateral[level - 2]
            parts[f"backbone.fpn_output{level}"] = self.output[level - 2]
        if self.head == "mask":
            for k, conv in enumerate(self.head_convs):
                parts[f"roi_heads.mask_head.mask_fcn{k + 1}"] = conv
            parts["roi_heads.mask_head.deconv"] = self.deconv
            parts["roi_heads.mask_head.predictor"] = self.predictor
        else:
            for k, conv in enumerate(self.head_convs):
                parts[f"roi_heads.keypoint_head.conv_fcn{k + 1}"] = conv
            parts["roi_heads.keypoint_head.score_lowres"] = self.deconv
        for prefix, module in parts.items():
            state[f"{prefix}.weight"] = module.weight.detach().numpy().copy()
            state[f"{prefix}.bias"] = module.bias.detach().numpy().copy()
        return state


def detectron2_resnet_keys(net: torch.nn.Module) -> dict[str, np.ndarray]:
    """A torchvision ResNet's weights under detectron2's names (``stem.conv1.*``,
    ``res2.0.conv1.norm.*``, ``res3.0.shortcut.*``, ...), without its ``fc``."""
    state = {}
    for key, value in net.state_dict().items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        if key.startswith("conv1."):
            new = "stem." + key
        elif key.startswith("bn1."):
            new = "stem.conv1.norm." + key[4:]
        else:
            stage, block, rest = key[len("layer") :].split(".", 2)
            rest = rest.replace("downsample.0.", "shortcut.")
            rest = rest.replace("downsample.1.", "shortcut.norm.")
            for k in (1, 2, 3):
                rest = rest.replace(f"bn{k}.", f"conv{k}.norm.")
            new = f"res{int(stage) + 1}.{block}.{rest}"
        state[new] = value.numpy()
    return state
