"""``kmask make-shapes`` and ``kmask convert-coco``: determinism, exact masks, errors."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

from kmask.cli import main


def _files(root):
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_make_shapes_is_deterministic_and_masks_are_exact(tmp_path, capsys):
    args = ["make-shapes", "--num-train", "4", "--num-val", "2", "--image-size", "40"]
    assert main([*args, "--out", str(tmp_path / "a"), "--seed", "3"]) == 0
    assert main([*args, "--out", str(tmp_path / "b"), "--seed", "3"]) == 0
    assert main([*args, "--out", str(tmp_path / "c"), "--seed", "4"]) == 0
    captured = capsys.readouterr()
    assert "100%" in captured.err  # progress bar
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert len(a) == 8 and a == b and a != c

    coco = COCO(str(tmp_path / "a" / "train.json"))
    assert [coco.cats[i]["name"] for i in sorted(coco.cats)] == ["circle", "square", "triangle"]
    for image_id in coco.getImgIds():
        entry = coco.imgs[image_id]
        image = np.asarray(Image.open(tmp_path / "a" / entry["file_name"]))
        assert image.shape == (40, 40, 3)
        masks = [coco.annToMask(a) for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))]
        assert masks and all(m.any() for m in masks)
        assert not np.any(np.sum(masks, axis=0) > 1)  # visible parts do not overlap
        for annotation, mask in zip(coco.loadAnns(coco.getAnnIds(imgIds=[image_id])), masks):
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            assert annotation["bbox"] == [
                cols[0],
                rows[0],
                cols[-1] - cols[0] + 1,
                rows[-1] - rows[0] + 1,
            ]
            # Shapes are solid colours with mild noise: the mask is where the colour is.
            inside = image[mask > 0].astype(float)
            assert inside.std(axis=0).max() < 12


def test_make_shapes_scene(tmp_path, capsys):
    """--scene: validation scenes of the size asked with many small shapes (exact masks,
    some across any tile grid's lines), training images of --image-size with shapes of the
    same sizes; bad values are refused by flag."""
    out = tmp_path / "scene"
    args = ["make-shapes", "--out", str(out), "--scene", "480x320", "--scene-objects", "40"]
    assert main([*args, "--object-size", "16,28", "--num-train", "3", "--image-size", "64"]) == 0
    val, train = COCO(str(out / "val.json")), COCO(str(out / "train.json"))
    assert len(val.imgs) == 5 and len(train.imgs) == 3  # --num-val defaults to 5 scenes
    for coco, (height, width) in ((val, (320, 480)), (train, (64, 64))):
        for image_id, entry in coco.imgs.items():
            image = np.asarray(Image.open(out / entry["file_name"]))
            assert image.shape == (height, width, 3)
            annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
            masks = np.array([coco.annToMask(a) for a in annotations], bool)
            assert not np.any(masks.sum(axis=0) > 1)
            for annotation, mask in zip(annotations, masks):
                rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
                assert annotation["bbox"] == [
                    cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1
                ]  # fmt: skip
                # At most the largest diameter (+1 for pixel centres), solid colour inside.
                assert max(annotation["bbox"][2:]) <= 29
                assert image[mask].astype(float).std(axis=0).max() < 12
    counts = [len(val.getAnnIds(imgIds=[i])) for i in val.imgs]
    assert max(counts) > 10 and max(counts) <= 40
    boxes = np.array([a["bbox"] for a in val.loadAnns(val.getAnnIds())], float)
    for line in (64, 128, 256):  # objects cross tile borders of any tile size
        assert np.any((boxes[:, 0] < line) & (boxes[:, 0] + boxes[:, 2] > line))
    capsys.readouterr()
    for bad, flag in (
        (["--scene", "480"], "--scene must be WIDTHxHEIGHT"),
        (["--scene", "0x300"], "--scene must be WIDTHxHEIGHT with positive numbers"),
        (["--object-size", "30,20"], "--object-size: object_size must be"),
        (["--keypoints"], "--keypoints excludes"),
        (["--scene-objects", "0"], "--scene-objects must be >= 1"),
    ):
        assert main([*args[:3], *args[5:], "--scene", "64x64", *bad]) == 2, bad
        assert flag in capsys.readouterr().err, bad


def test_convert_coco_cli(tmp_path, capsys):
    assert (
        main(
            [
                "make-shapes",
                "--out",
                str(tmp_path),
                "--num-train",
                "3",
                "--num-val",
                "0",
                "--image-size",
                "32",
            ]
        )
        == 0
    )
    out = tmp_path / "shards"
    code = main(
        [
            "convert-coco",
            "--json",
            str(tmp_path / "train.json"),
            "--images",
            str(tmp_path),
            "--out",
            str(out),
            "--num-shards",
            "2",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "convert-coco" in captured.err and "100%" in captured.err
    assert "wrote 2 shard(s)" in captured.out and "3 images" in captured.out
    assert sorted(p.name for p in out.iterdir()) == [
        "categories.json",
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
    ]
    assert [c["name"] for c in json.loads((out / "categories.json").read_text())] == [
        "circle",
        "square",
        "triangle",
    ]


def test_convert_coco_cli_errors_name_the_problem(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [], "categories": []}))
    code = main(
        [
            "convert-coco",
            "--json",
            str(bad),
            "--images",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code != 0
    err = capsys.readouterr().err
    assert "bad.json" in err and "'annotations'" in err

    code = main(
        [
            "convert-coco",
            "--json",
            str(tmp_path / "none.json"),
            "--images",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code != 0 and "none.json" in capsys.readouterr().err

    bad.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "gone.png", "height": 8, "width": 8}],
                "annotations": [],
                "categories": [{"id": 1, "name": "x"}],
            }
        )
    )
    code = main(
        [
            "convert-coco",
            "--json",
            str(bad),
            "--images",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
            "--strict",
        ]
    )
    err = capsys.readouterr().err
    assert code != 0 and "gone.png" in err and "image id 1" in err
    assert not list((tmp_path / "o").glob("*.tfrecord"))
    code = main(
        [
            "convert-coco",
            "--json",
            str(bad),
            "--images",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0 and "skipped 1 x missing image file" in captured.out
