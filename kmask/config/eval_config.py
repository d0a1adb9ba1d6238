"""``EvalConfig``: evaluation and prediction (``eval``)."""

from __future__ import annotations

import dataclasses
import math

from kmask.errors import ConfigError

# What a model can compute in at inference (``--precision``; resolved by
# ``kmask.modeling.inference_precision.InferencePrecision``, "auto" by the machine).
PRECISIONS = ("auto", "float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluation and prediction (``kmask.evaluation``, ``kmask evaluate`` / ``predict``)."""

    # Validation data: COCO JSON + image folder (COCOeval needs the JSON). Relative paths
    # are relative to the working directory; ``kmask`` flags override them.
    json_path: str | None = None
    images_dir: str | None = None
    batch_size: int = 1
    # Evaluate only the first N images of the JSON (None = all), e.g. for quick checks.
    max_images: int | None = None
    # Pasted mask probabilities >= this are foreground (the paper: 0.5).
    mask_threshold: float = 0.5
    # How box-frame masks are pasted into the image (kmask.ops.masks.paste_masks): "exact"
    # (detectron2's sub-pixel geometry) or "torchvision" (whole-pixel boxes, one padding
    # cell; what models converted from torchvision were evaluated with).
    mask_paste: str = "exact"
    # Detections below this score are not drawn by ``kmask predict`` (all are evaluated).
    visualization_score_threshold: float = 0.5
    # OKS sigmas of the keypoint evaluation, one per keypoint (detectron2's
    # TEST.KEYPOINT_OKS_SIGMAS); they win over the categories' ``keypoint_sigmas``. None:
    # those, else COCOeval's (COCO's 17 person keypoints). Used with a keypoint head only.
    keypoint_oks_sigmas: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ConfigError("eval.batch_size: expected a positive integer")
        if self.max_images is not None and self.max_images <= 0:
            raise ConfigError("eval.max_images: expected a positive integer or null")
        for name in ("mask_threshold", "visualization_score_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"eval.{name}: expected a value in [0, 1]")
        if self.mask_paste not in ("exact", "torchvision"):
            raise ConfigError(
                f"eval.mask_paste: expected exact or torchvision, got {self.mask_paste!r}"
            )
        sigmas = self.keypoint_oks_sigmas
        if sigmas is not None and not (
            isinstance(sigmas, (list, tuple))
            and sigmas
            and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf
                for v in sigmas
            )
        ):
            raise ConfigError(
                "eval.keypoint_oks_sigmas: expected a list of positive numbers, one per keypoint "
                f"(model.keypoint_head.num_keypoints), or null; got {sigmas!r}"
            )
        if sigmas is not None:
            object.__setattr__(self, "keypoint_oks_sigmas", tuple(float(v) for v in sigmas))
