"""The 80 COCO 2017 detection categories with their original ids (1..90, 10 ids unused).

The public checkpoints index classes differently: torchvision reserves one slot per id
(slot = COCO id, slot 0 background, 91 slots with 10 unused "N/A" ones); detectron2 uses
the contiguous order of ``COCO_CATEGORIES`` (class k = k-th smallest id) with background
last. kmask uses the contiguous order with background first (``kmask.data.CategoryMap``):
a converted torchvision model keeps all 90 foreground slots as classes, with
``TORCHVISION_COCO_CATEGORIES``.
"""

from __future__ import annotations

_NAMES = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus",
    7: "train", 8: "truck", 9: "boat", 10: "traffic light", 11: "fire hydrant",
    13: "stop sign", 14: "parking meter", 15: "bench", 16: "bird", 17: "cat", 18: "dog",
    19: "horse", 20: "sheep", 21: "cow", 22: "elephant", 23: "bear", 24: "zebra",
    25: "giraffe", 27: "backpack", 28: "umbrella", 31: "handbag", 32: "tie",
    33: "suitcase", 34: "frisbee", 35: "skis", 36: "snowboard", 37: "sports ball",
    38: "kite", 39: "baseball bat", 40: "baseball glove", 41: "skateboard",
    42: "surfboard", 43: "tennis racket", 44: "bottle", 46: "wine glass", 47: "cup",
    48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog",
    59: "pizza", 60: "donut", 61: "cake", 62: "chair", 63: "couch", 64: "potted plant",
    65: "bed", 67: "dining table", 70: "toilet", 72: "tv", 73: "laptop", 74: "mouse",
    75: "remote", 76: "keyboard", 77: "cell phone", 78: "microwave", 79: "oven",
    80: "toaster", 81: "sink", 82: "refrigerator", 84: "book", 85: "clock", 86: "vase",
    87: "scissors", 88: "teddy bear", 89: "hair drier", 90: "toothbrush",
}  # fmt: skip

# COCO ``categories`` entries in contiguous (kmask and detectron2) class order.
COCO_CATEGORIES: tuple[dict[str, object], ...] = tuple(
    {"id": category_id, "name": name} for category_id, name in sorted(_NAMES.items())
)

# torchvision's slot of each COCO category (of ``COCO_CATEGORIES``): its COCO id (slot 0 is
# the background); 91 slots in all.
TORCHVISION_SLOTS: tuple[int, ...] = tuple(int(c["id"]) for c in COCO_CATEGORIES)
TORCHVISION_NUM_SLOTS = 91
# The name torchvision gives the 10 slots whose COCO ids have no category (its COCO_V1
# ``categories`` metadata).
UNUSED_NAME = "N/A"
# The categories of a converted torchvision COCO model: one per foreground slot, ids 1..90
# in slot order; an unused id is named "N/A" as in torchvision and marked ``"unused": true``
# (a kmask field: evaluation accepts that ground truth lacks it, and ignores its detections).
TORCHVISION_COCO_CATEGORIES: tuple[dict[str, object], ...] = tuple(
    {"id": slot, "name": _NAMES[slot]}
    if slot in _NAMES
    else {"id": slot, "name": UNUSED_NAME, "unused": True}
    for slot in range(1, TORCHVISION_NUM_SLOTS)
)

# COCO's person keypoints (person_keypoints_*.json) and their skeleton (1-based pairs).
COCO_PERSON_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
COCO_PERSON_SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8),
    (7, 9), (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)  # fmt: skip
# The category of person-keypoint checkpoints (one foreground class).
COCO_PERSON_CATEGORY: dict[str, object] = {
    "id": 1,
    "name": "person",
    "supercategory": "person",
    "keypoints": list(COCO_PERSON_KEYPOINTS),
    "skeleton": [list(edge) for edge in COCO_PERSON_SKELETON],
}
