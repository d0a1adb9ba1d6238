"""``kmask convert-cityscapes``: a tiny tree in the Cityscapes layout, its id maps painted
by hand, converted and checked against the hand-made pixels, hand-computed boxes and
areas, pycocotools' RLE decoder, PIL's polygon rasterizer (what cityscapesScripts'
json2instanceImg draws with) and the shard reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from kmask.cli import main
from kmask.data import DataError, open_dataset
from kmask.data.cityscapes_converter import CityscapesConverter

HEIGHT, WIDTH = 64, 128
# labels.py ids of the labels the fixture draws.
LABEL_IDS = {
    "sky": 23,
    "road": 7,
    "person": 24,
    "rider": 25,
    "car": 26,
    "truck": 27,
    "bus": 28,
    "caravan": 29,
    "train": 31,
    "motorcycle": 32,
    "bicycle": 33,
}
INSTANCE_CLASSES = {"person", "rider", "car", "truck", "bus", "caravan", "train", "motorcycle"}
INSTANCE_CLASSES |= {"bicycle"}

# Objects of each image in drawing order: (label, inclusive rectangle x0, y0, x1, y1).
IMAGES = {
    ("train", "aachen", "aachen_000000_000019"): [
        ("road", (0, 0, 127, 63)),
        ("sky", (0, 0, 127, 3)),
        ("car", (20, 10, 39, 19)),  # 26000
        ("car", (55, 30, 74, 39)),  # 26001, its middle hidden by the person
        ("person", (60, 25, 69, 44)),  # 24000
        ("persongroup", (0, 50, 15, 59)),  # 24: a crowd
        ("caravan", (100, 50, 110, 55)),  # 29000: an instance, not one of the 8 classes
        ("rider", (120, 5, 120, 5)),  # 25000: one pixel
    ],
    ("train", "bochum", "bochum_000001_000002"): [
        ("road", (0, 0, 127, 63)),
        ("bus", (0, 0, 49, 29)),  # 28000
        ("train", (60, 0, 127, 19)),  # 31000
        ("bicycle", (10, 40, 19, 49)),  # 33000
        ("bicycle", (30, 40, 39, 49)),  # 33001
        ("cargroup", (80, 40, 127, 63)),  # 26
    ],
    ("val", "aachen", "aachen_000005_000019"): [
        ("road", (0, 0, 127, 63)),
        ("truck", (0, 10, 63, 41)),  # 27000
        ("motorcycle", (70, 30, 89, 45)),  # 32000
    ],
    ("val", "bochum", "bochum_000002_000007"): [("road", (0, 0, 127, 63))],
}

# Hand-computed COCO annotations (category 1..8 = person, rider, car, truck, bus, train,
# motorcycle, bicycle) of each image, in increasing pixel value: (pixel value, category,
# iscrowd, bbox [x, y, w, h], area).
EXPECTED = {
    "aachen/aachen_000000_000019_leftImg8bit.png": [
        (24, 1, 1, [0, 50, 16, 10], 160),
        (24000, 1, 0, [60, 25, 10, 20], 200),
        (25000, 2, 0, [120, 5, 1, 1], 1),
        (26000, 3, 0, [20, 10, 20, 10], 200),
        (26001, 3, 0, [55, 30, 20, 10], 100),  # 200 minus the 10 x 10 under the person
    ],
    "bochum/bochum_000001_000002_leftImg8bit.png": [
        (26, 3, 1, [80, 40, 48, 24], 1152),
        (28000, 5, 0, [0, 0, 50, 30], 1500),
        (31000, 6, 0, [60, 0, 68, 20], 1360),
        (33000, 8, 0, [10, 40, 10, 10], 100),
        (33001, 8, 0, [30, 40, 10, 10], 100),
    ],
    "aachen/aachen_000005_000019_leftImg8bit.png": [
        (27000, 4, 0, [0, 10, 64, 32], 2048),
        (32000, 7, 0, [70, 30, 20, 16], 320),
    ],
    "bochum/bochum_000002_000007_leftImg8bit.png": [],
}
NAMES = ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]


def _paint(objects: list[tuple[str, tuple[int, int, int, int]]]) -> np.ndarray:
    """The instanceIds map as json2instanceImg defines it: later objects on top, instances
    label*1000 + their index among the objects of their label, groups the label id."""
    ids = np.zeros((HEIGHT, WIDTH), np.int32)
    counts: dict[str, int] = {}
    for label, (x0, y0, x1, y1) in objects:
        name = label.removesuffix("group")
        value = LABEL_IDS[name]
        if name in INSTANCE_CLASSES and not label.endswith("group"):
            value = value * 1000 + counts.get(name, 0)
            counts[name] = counts.get(name, 0) + 1
        ids[y0 : y1 + 1, x0 : x1 + 1] = value
    return ids


def _polygon(rectangle: tuple[int, int, int, int]) -> list[list[int]]:
    x0, y0, x1, y1 = rectangle
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


@pytest.fixture
def cityscapes(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """The tree and the hand-painted id map of each image (keyed by file_name)."""
    root = tmp_path / "cityscapes"
    rng = np.random.default_rng(0)
    maps = {}
    for (split, city, stem), objects in IMAGES.items():
        image_dir = root / "leftImg8bit" / split / city
        gt_dir = root / "gtFine" / split / city
        image_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(image_dir / f"{stem}_leftImg8bit.png")
        ids = _paint(objects)
        Image.fromarray(ids.astype(np.uint16)).save(gt_dir / f"{stem}_gtFine_instanceIds.png")
        polygons = {
            "imgHeight": HEIGHT,
            "imgWidth": WIDTH,
            "objects": [{"label": label, "polygon": _polygon(r)} for label, r in objects],
        }
        (gt_dir / f"{stem}_gtFine_polygons.json").write_text(json.dumps(polygons))
        maps[f"{city}/{stem}_leftImg8bit.png"] = ids
    return root, maps


def _gt_file(root: Path, split: str, stem: str, suffix: str) -> Path:
    return root / "gtFine" / split / stem.split("_")[0] / f"{stem}_gtFine_{suffix}"


def test_the_fixture_polygons_rasterize_to_the_painted_id_maps(cityscapes):
    """What the polygons say and what the id maps hold agree (json2instanceImg's drawing with
    PIL), so the converter's cross-check runs on consistent data."""
    root, maps = cityscapes
    for (split, city, stem), _ in IMAGES.items():
        data = json.loads(_gt_file(root, split, stem, "polygons.json").read_text())
        drawn = Image.new("I", (data["imgWidth"], data["imgHeight"]), 0)
        draw = ImageDraw.Draw(drawn)
        counts: dict[str, int] = {}
        for obj in data["objects"]:
            name = obj["label"].removesuffix("group")
            value = LABEL_IDS[name]
            if name in INSTANCE_CLASSES and not obj["label"].endswith("group"):
                value, counts[name] = value * 1000 + counts.get(name, 0), counts.get(name, 0) + 1
            draw.polygon([tuple(p) for p in obj["polygon"]], fill=value)
        np.testing.assert_array_equal(np.asarray(drawn), maps[f"{city}/{stem}_leftImg8bit.png"])


def test_annotations_match_the_hand_made_pixels(cityscapes):
    root, maps = cityscapes
    converter = CityscapesConverter(root)
    seen = 0
    for split in ("train", "val"):
        coco = converter.convert(split)
        assert [(c["id"], c["name"]) for c in coco["categories"]] == list(enumerate(NAMES, start=1))
        assert [c["cityscapes_label_id"] for c in coco["categories"]] == [
            24, 25, 26, 27, 28, 31, 32, 33,
        ]  # fmt: skip
        assert [image["id"] for image in coco["images"]] == [1, 2]
        for image in coco["images"]:
            assert (image["height"], image["width"]) == (HEIGHT, WIDTH)
            assert (converter.images_dir(split) / image["file_name"]).is_file()
            annotations = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
            expected = EXPECTED[image["file_name"]]
            assert len(annotations) == len(expected), image["file_name"]
            for annotation, (value, category, crowd, box, area) in zip(annotations, expected):
                assert annotation["category_id"] == category
                assert annotation["iscrowd"] == crowd
                assert annotation["bbox"] == box
                assert annotation["area"] == area
                decoded = mask_utils.decode(annotation["segmentation"])
                truth = (maps[image["file_name"]] == value).astype(np.uint8)
                np.testing.assert_array_equal(decoded, truth)
                assert int(mask_utils.area(annotation["segmentation"])) == area
                assert mask_utils.toBbox(annotation["segmentation"]).tolist() == box
        ids = [a["id"] for a in coco["annotations"]]
        assert ids == list(range(1, len(ids) + 1))
        seen += len(ids)
    assert seen == 12  # road, sky and the caravan left out


def test_instances_are_the_polygons_in_their_order(cityscapes):
    """Instance k of a class is the k-th polygon of that label: its box is that polygon's
    box wherever nothing drawn later covers it."""
    root, _ = cityscapes
    coco = CityscapesConverter(root).convert("train")
    bochum = [a for a in coco["annotations"] if a["image_id"] == 2]
    bicycles = [a["bbox"] for a in bochum if a["category_id"] == 8]
    polygons = [r for label, r in IMAGES["train", "bochum", "bochum_000001_000002"]]
    expected = [[x0, y0, x1 - x0 + 1, y1 - y0 + 1] for x0, y0, x1, y1 in polygons[3:5]]
    assert bicycles == expected


def test_polygons_that_disagree_are_refused(cityscapes):
    root, _ = cityscapes
    polygons = _gt_file(root, "train", "aachen_000000_000019", "polygons.json")
    ids = _gt_file(root, "train", "aachen_000000_000019", "instanceIds.png")
    original = json.loads(polygons.read_text())
    objects = original["objects"]
    cases = [
        ([o for o in objects if o["label"] != "persongroup"], HEIGHT, "no persongroup polygon"),
        (
            [o for i, o in enumerate(objects) if i != 3],  # the second car
            HEIGHT,
            r"instance 26001 \(car number 1, counted from 0\) but .* has 1 car polygon",
        ),
        (objects, 32, "imgHeight x imgWidth 32x128 differs"),
    ]
    for kept, height, message in cases:
        polygons.write_text(json.dumps({**original, "objects": kept, "imgHeight": height}))
        with pytest.raises(DataError, match=message) as error:
            CityscapesConverter(root).convert("train")
        assert str(polygons) in str(error.value) and str(ids) in str(error.value)


def test_bad_input_names_the_file(cityscapes):
    root, _ = cityscapes
    ids = _gt_file(root, "val", "aachen_000005_000019", "instanceIds.png")
    Image.fromarray(np.full((HEIGHT, WIDTH), 50001, np.uint16)).save(ids)
    with pytest.raises(DataError, match="pixel value 50001 has label id 50") as error:
        CityscapesConverter(root).convert("val")
    assert str(ids) in str(error.value)
    ids.write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    with pytest.raises(DataError, match="cannot read it") as error:
        CityscapesConverter(root).convert("val")
    assert str(ids) in str(error.value)
    Image.fromarray(np.zeros((HEIGHT, WIDTH + 2), np.uint16)).save(ids)
    with pytest.raises(DataError, match="size 130x64 differs"):
        CityscapesConverter(root).convert("val")
    ids.unlink()
    with pytest.raises(DataError, match="does not exist") as error:
        CityscapesConverter(root).convert("val")
    assert str(ids) in str(error.value)
    with pytest.raises(DataError, match=f"no .* images in {root / 'leftImg8bit' / 'test'}"):
        CityscapesConverter(root).convert("test")
    with pytest.raises(DataError, match="Cityscapes root not found"):
        CityscapesConverter(root / "missing")


def test_the_command_writes_json_that_the_reader_takes(cityscapes, tmp_path, capsys):
    root, maps = cityscapes
    out = tmp_path / "annotations"
    assert main(["convert-cityscapes", "--root", str(root), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        ".kmask-output",
        "instances_train.json",
        "instances_val.json",
    ]
    assert f"--json {out}/instances_val.json --images {root}/leftImg8bit/val" in (
        capsys.readouterr().out
    )
    source = open_dataset(
        json_path=str(out / "instances_train.json"), images_dir=str(root / "leftImg8bit/train")
    )
    assert source.category_names == tuple(NAMES)
    examples = {int(e["image_id"]): e for e in source.examples().as_numpy_iterator()}
    # aachen: the person crowd is left out of the examples; instances in pixel value order.
    masks = examples[1]["masks"]
    painted = maps["aachen/aachen_000000_000019_leftImg8bit.png"]
    for mask, value in zip(masks, (24000, 25000, 26000, 26001)):
        np.testing.assert_array_equal(mask, painted == value)

    # An existing --out is refused and left as it was, unless --overwrite.
    before = (out / "instances_val.json").read_bytes()
    assert main(["convert-cityscapes", "--root", str(root), "--out", str(out)]) == 2
    assert f"--out {out} exists; pass --overwrite" in capsys.readouterr().err
    ids = _gt_file(root, "val", "aachen_000005_000019", "instanceIds.png")
    ids.unlink()
    argv = ["convert-cityscapes", "--root", str(root), "--out", str(out), "--overwrite"]
    assert main([*argv, "--splits", "val"]) == 1
    assert f"{ids} does not exist" in capsys.readouterr().err
    assert (out / "instances_val.json").read_bytes() == before
    assert (out / "instances_train.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotations", "cityscapes"]
    assert main([*argv, "--splits", "train"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [".kmask-output", "instances_train.json"]


def test_shards_read_back_through_the_shard_reader(cityscapes, tmp_path):
    root, maps = cityscapes
    out = tmp_path / "shards"
    argv = ["convert-cityscapes", "--root", str(root), "--out", str(out), "--splits", "train"]
    assert main([*argv, "--shards", "--num-shards", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        ".kmask-output",
        "categories.json",
        "instances_train-00000-of-00002.tfrecord",
        "instances_train-00001-of-00002.tfrecord",
        "instances_train.json",
    ]
    source = open_dataset(tfrecord_pattern=str(out / "instances_train-*.tfrecord"))
    assert source.category_names == tuple(NAMES)
    examples = {int(e["image_id"]): e for e in source.examples().as_numpy_iterator()}
    assert sorted(examples) == [1, 2]
    for image_id, name in ((1, "aachen/aachen_000000_000019"), (2, "bochum/bochum_000001_000002")):
        file_name = f"{name}_leftImg8bit.png"
        pixels = np.asarray(Image.open(root / "leftImg8bit" / "train" / file_name))
        np.testing.assert_array_equal(examples[image_id]["image"], pixels)
        kept = [e for e in EXPECTED[file_name] if not e[2]]  # crowds are not read
        np.testing.assert_array_equal(examples[image_id]["classes"], [e[1] - 1 for e in kept])
        boxes = [[y, x, y + h, x + w] for _, _, _, (x, y, w, h), _ in kept]
        np.testing.assert_allclose(examples[image_id]["boxes"], boxes, atol=1e-3)
        for mask, entry in zip(examples[image_id]["masks"], kept):
            np.testing.assert_array_equal(mask, maps[file_name] == entry[0])
