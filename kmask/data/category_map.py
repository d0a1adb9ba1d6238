"""Categories of a dataset: original COCO ids <-> contiguous 0-based class ids."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kmask.data import coco_fields
from kmask.errors import DataError


class CategoryMap:
    """The foreground categories of a dataset, in contiguous order.

    Class ``k`` (0-based, what the model predicts) is the category with the k-th smallest
    original id. Keypoint names come from the categories' ``keypoints`` lists (COCO: the
    person category); all categories that define keypoints must define the same list.

    Args:
      categories: COCO ``categories`` entries, each a mapping with ``id`` and ``name``
        (optionally ``keypoints``, ``skeleton``, ``supercategory``, kept as given).
      source: file named in error messages.

    Raises:
      DataError: a category without ``id``/``name``, an id that is not an integer in
        [0, 10**18), a duplicate id, keypoint lists that differ between categories, or
        malformed keypoint metadata (``keypoints``, ``skeleton``, ``flip_map``,
        ``keypoint_sigmas``).
    """

    def __init__(self, categories: Sequence[Mapping[str, Any]], source: str = "categories") -> None:
        entries = []
        for i, category in enumerate(categories):
            if not isinstance(category, Mapping):
                raise DataError(f"{source}: categories[{i}] is not an object")
            for key in ("id", "name"):
                if key not in category:
                    raise DataError(f"{source}: categories[{i}] has no key {key!r}")
            if coco_fields.as_int(category["id"]) is None:
                raise DataError(
                    f"{source}: categories[{i}]: id {category['id']!r} is not an integer in "
                    f"[0, {coco_fields.MAX_ID}]"
                )
            _check_keypoint_fields(
                category, f"{source}: category {category['name']!r} (id {category['id']!r})"
            )
            entries.append(dict(category, id=int(category["id"])))
        entries.sort(key=lambda c: int(c["id"]))
        ids = [int(c["id"]) for c in entries]
        if len(set(ids)) != len(ids):
            raise DataError(f"{source}: duplicate category ids in {ids}")
        keypoint_lists = {tuple(c["keypoints"]) for c in entries if c.get("keypoints")}
        if len(keypoint_lists) > 1:
            raise DataError(f"{source}: categories define different keypoint lists")
        self.source = source
        self.categories: tuple[dict[str, Any], ...] = tuple(entries)
        self.category_ids: tuple[int, ...] = tuple(ids)
        self.category_names: tuple[str, ...] = tuple(str(c["name"]) for c in entries)
        self.keypoint_names: tuple[str, ...] = (
            tuple(str(k) for k in keypoint_lists.pop()) if keypoint_lists else ()
        )
        self._contiguous = {original: k for k, original in enumerate(ids)}

    @property
    def num_classes(self) -> int:
        """Number of foreground classes."""
        return len(self.category_ids)

    @property
    def num_keypoints(self) -> int:
        """Keypoints per instance; 0 when the dataset has none."""
        return len(self.keypoint_names)

    @property
    def keypoint_classes(self) -> tuple[int, ...]:
        """0-based classes whose category defines the keypoints (COCO: person)."""
        return tuple(k for k, c in enumerate(self.categories) if c.get("keypoints"))

    @property
    def keypoint_skeleton(self) -> tuple[tuple[int, int], ...]:
        """Edges between keypoints as 0-based index pairs, from the categories' COCO
        ``skeleton`` (1-based pairs); empty without one."""
        for category in self.categories:
            if category.get("keypoints") and category.get("skeleton"):
                return tuple((int(a) - 1, int(b) - 1) for a, b in category["skeleton"])
        return ()

    @property
    def keypoint_sigmas(self) -> tuple[float, ...] | None:
        """Per-keypoint OKS sigmas: the categories' ``keypoint_sigmas`` (a kmask extension of
        the COCO format), else None (COCOeval's defaults are those of COCO's 17 person
        keypoints)."""
        for category in self.categories:
            if category.get("keypoints") and category.get("keypoint_sigmas"):
                return tuple(float(v) for v in category["keypoint_sigmas"])
        return None

    def check_model(self, num_classes: int, num_keypoints: int) -> None:
        """Raises ``DataError`` naming the categories' file when they do not fit a model of
        ``num_classes`` classes that predicts ``num_keypoints`` keypoints (0: no keypoint
        head; the categories' keypoints are then not used)."""
        if self.num_classes != num_classes:
            raise DataError(
                f"{self.source}: {self.num_classes} categories but the model has "
                f"model.num_classes={num_classes}"
            )
        if num_keypoints and self.num_keypoints != num_keypoints:
            raise DataError(
                f"{self.source}: {self.num_keypoints or 'no'} keypoint names but the model "
                f"predicts model.keypoint_head.num_keypoints={num_keypoints}"
            )

    def contiguous_id(self, category_id: int) -> int | None:
        """Class id (0-based) of an original category id; None when unknown."""
        return self._contiguous.get(int(category_id))

    def to_original_id(self, class_id: int) -> int:
        """Original category id of a 0-based class id (for writing results)."""
        return self.category_ids[class_id]

    def flip_permutation(self) -> tuple[int, ...]:
        """Keypoint order after a left-right flip: ``left_*`` and ``right_*`` swap places.

        For COCO's person keypoints this is COCO's flip map (eyes, ears, shoulders, elbows,
        wrists, hips, knees, ankles); names without a left/right partner stay in place. A
        category's ``flip_map`` (pairs of keypoint names, detectron2's
        ``keypoint_flip_map``) replaces the names' rule.
        """
        index = {name: i for i, name in enumerate(self.keypoint_names)}
        for category in self.categories:
            if category.get("keypoints") and category.get("flip_map"):
                order = list(range(len(self.keypoint_names)))
                for first, second in category["flip_map"]:
                    order[index[first]], order[index[second]] = index[second], index[first]
                return tuple(order)
        order = []
        for name in self.keypoint_names:
            if "left" in name:
                partner = name.replace("left", "right")
            elif "right" in name:
                partner = name.replace("right", "left")
            else:
                partner = name
            order.append(index.get(partner, index[name]))
        return tuple(order)

    def to_json(self) -> str:
        """The COCO ``categories`` list as JSON (the ``categories.json`` beside shards)."""
        return json.dumps(list(self.categories), indent=1, sort_keys=True)

    @classmethod
    def placeholder(cls, num_classes: int) -> CategoryMap:
        """Categories for a model whose own are unknown (a run without
        ``categories.json``, a checkpoint trained on other data): ``class_1`` ..
        ``class_K`` with ids 1 .. K."""
        return cls([{"id": k + 1, "name": f"class_{k + 1}"} for k in range(num_classes)])

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CategoryMap:
        """Reads categories from a COCO JSON (its ``categories``) or a JSON list of them."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"categories file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DataError(f"{path}: not valid JSON: {error}") from None
        if isinstance(data, Mapping):
            if "categories" not in data:
                raise DataError(f"{path}: no key 'categories'")
            data = data["categories"]
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a list of categories")
        return cls(data, source=str(path))


def _check_keypoint_fields(category: Mapping[str, Any], where: str) -> None:
    """Raises ``DataError`` (``where: 'field' ...``) when a category's keypoint metadata is
    malformed. ``keypoints`` (absent, null or empty: none) must be a list of distinct
    non-empty strings; ``skeleton`` a list of 1-based index pairs ``[a, b]`` into them;
    ``flip_map`` a list of pairs of their names, each name in one pair at most;
    ``keypoint_sigmas`` one positive number per keypoint. These three need ``keypoints``
    (an empty list or null counts as absent).
    """
    names = category.get("keypoints")
    if names is None:
        names = []
    if not isinstance(names, (list, tuple)):
        raise DataError(f"{where}: 'keypoints' must be a list of keypoint names, got {names!r}")
    seen: set[str] = set()
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name:
            raise DataError(f"{where}: 'keypoints'[{i}] {name!r} is not a keypoint name")
        if name in seen:
            raise DataError(f"{where}: 'keypoints' names {name!r} twice")
        seen.add(name)
    for field in ("skeleton", "flip_map", "keypoint_sigmas"):
        value = category.get(field)
        if value is None or (isinstance(value, (list, tuple)) and not value):
            continue
        if not names:
            raise DataError(f"{where}: {field!r} but no 'keypoints' names")
        if not isinstance(value, (list, tuple)):
            raise DataError(f"{where}: {field!r} must be a list, got {value!r}")
    count = len(names)
    for i, edge in enumerate(category.get("skeleton") or []):
        if not (
            isinstance(edge, (list, tuple))
            and len(edge) == 2
            and all(coco_fields.as_int(k, 1, count) is not None for k in edge)
        ):
            raise DataError(
                f"{where}: 'skeleton'[{i}] {edge!r} is not a pair of keypoint numbers in 1..{count}"
            )
    paired: set[str] = set()
    for i, pair in enumerate(category.get("flip_map") or []):
        if not (
            isinstance(pair, (list, tuple))
            and len(pair) == 2
            and all(isinstance(k, str) and k in seen for k in pair)
        ):
            raise DataError(
                f"{where}: 'flip_map'[{i}] {pair!r} is not a pair of names of its 'keypoints'"
            )
        if paired & set(pair):
            raise DataError(f"{where}: 'flip_map'[{i}] {pair!r} pairs a keypoint a second time")
        paired.update(pair)
    sigmas = category.get("keypoint_sigmas") or []
    if sigmas and (
        len(sigmas) != count or not all(coco_fields.is_number(v) and v > 0 for v in sigmas)
    ):
        raise DataError(
            f"{where}: 'keypoint_sigmas' must be {count} positive numbers (one per keypoint), "
            f"got {sigmas!r}"
        )
