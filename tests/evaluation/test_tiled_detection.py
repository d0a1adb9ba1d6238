"""``TiledDetection`` (``Detector.detect(tile=...)``): tiles, the centre-in-core merge, the
full-image pass and RLE masks in source pixels, checked exactly with a stub predictor that
boxes what each tile shows; one run of a real tiny model checks the types end to end."""

import dataclasses
import types

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from scipy import ndimage

from kmask.config import DataConfig
from kmask.data.category_map import CategoryMap
from kmask.evaluation import Detector, ImageDetections
from kmask.evaluation.predictor import Predictor
from kmask.evaluation.tiled_detection import TiledDetection

MASK_SIZE = 28


class ComponentPredictor(Predictor):
    """A ``Predictor`` whose "model" boxes every connected blob of one colour in each image
    it is given (class = the colour's channel: red 0, green 1, blue 2), score 0.9, with a
    box-frame mask of ones: a perfect detector of what a tile shows, cut objects included.
    It records the ``(height, width)`` of every image it ran."""

    def __init__(self, data_config: DataConfig) -> None:
        super().__init__(types.SimpleNamespace(predict_step=None), data_config)
        self.seen: list[tuple[int, int]] = []

    def predict_batch(self, features):
        images = np.asarray(features["images"])
        sizes = np.asarray(features["image_size"]).reshape(-1, 2)
        found = []
        for image, (height, width) in zip(images, sizes):
            self.seen.append((int(height), int(width)))
            crop = image[:height, :width]
            boxes, classes = [], []
            for channel in range(3):
                labels, _ = ndimage.label(crop[..., channel] > 0)
                for rows, cols in ndimage.find_objects(labels):
                    boxes.append([rows.start, cols.start, rows.stop, cols.stop])
                    classes.append(channel)
            found.append((boxes, classes))
        most = max(1, max(len(b) for b, _ in found))
        batch = len(images)
        outputs = {
            "detection_boxes": np.zeros((batch, most, 4), np.float32),
            "detection_scores": np.zeros((batch, most), np.float32),
            "detection_classes": np.zeros((batch, most), np.int32),
            "detection_masks": np.ones((batch, most, MASK_SIZE, MASK_SIZE), np.float32),
            "num_detections": np.array([len(b) for b, _ in found], np.int32),
            "image_size": sizes.astype(np.int32),
            "original_size": np.asarray(features["original_size"]).reshape(-1, 2),
        }
        for index, (boxes, classes) in enumerate(found):
            outputs["detection_boxes"][index, : len(boxes)] = np.reshape(boxes, (-1, 4))
            outputs["detection_scores"][index, : len(boxes)] = 0.9
            outputs["detection_classes"][index, : len(boxes)] = classes
        return outputs


CATEGORIES = CategoryMap.placeholder(3)


def scene(height, width, rectangles):
    """A black image with ``(y1, x1, y2, x2, channel)`` rectangles in colour ``channel``;
    returns the image and the ground truth ``[(box, class, bool mask)]``."""
    image = np.zeros((height, width, 3), np.uint8)
    truth = []
    for y1, x1, y2, x2, channel in rectangles:
        image[y1:y2, x1:x2, channel] = 200
        mask = np.zeros((height, width), bool)
        mask[y1:y2, x1:x2] = True
        truth.append(((y1, x1, y2, x2), channel, mask))
    return image, truth


def tiled(tile, overlap, full_image=False, size=256):
    predictor = ComponentPredictor(DataConfig(min_size=(size,), max_size=1000))
    return TiledDetection(predictor, CATEGORIES, tile, overlap, full_image, batch_size=3)


def assert_detects_exactly(result, truth):
    """Each ground-truth rectangle once: same box and class, nothing else; its RLE mask
    decodes inside the rectangle and covers all of it but a 2 px ring (the pasted
    28 x 28 box-frame mask of ones is interpolated there). Returns the decoded masks by box."""
    assert isinstance(result, ImageDetections)
    assert result.masks is None and len(result.rles) == len(result)
    assert len(result) == len(truth)
    decoded = mask_utils.decode([dict(r, counts=r["counts"].encode()) for r in result.rles])
    masks = {}
    for box, channel, mask in truth:
        rows = np.flatnonzero(np.all(result.boxes == np.array(box, np.float32), axis=1))
        assert len(rows) == 1, f"{box} reported {len(rows)} times"
        row = rows[0]
        assert CATEGORIES.contiguous_id(int(result.class_ids[row])) == channel
        got = decoded[..., row].astype(bool)
        assert not np.any(got & ~mask)
        y1, x1, y2, x2 = box
        assert np.all(got[y1 + 2 : y2 - 2, x1 + 2 : x2 - 2])
        masks[box] = got
    return masks


def test_tiles_have_one_size_and_cores_partition_the_image():
    for height, width, tile, overlap in [
        (256, 200, 96, 0.25),
        (100, 60, 64, 0.0),
        (30, 40, 64, 0.2),
    ]:
        tiles = tiled(tile, overlap).tiles(height, width)
        covered = np.zeros((height, width), int)
        owners = np.zeros((height, width), int)
        ys, xs = np.mgrid[0:height, 0:width] + 0.5
        for window, core in tiles:
            y1, x1, y2, x2 = window
            assert (y2 - y1, x2 - x1) == (min(tile, height), min(tile, width))
            covered[y1:y2, x1:x2] += 1
            owners += (ys >= core[0]) & (ys < core[2]) & (xs >= core[1]) & (xs < core[3])
            # the core lies inside the window
            assert core[0] == -np.inf or core[0] >= y1
            assert core[2] == np.inf or core[2] <= y2
        assert covered.min() >= 1
        np.testing.assert_array_equal(owners, 1)  # every pixel centre in exactly one core
    # 256 px, tile 96, overlap 24 px: starts 0, 72, 144 and 160 (moved back to the border);
    # core boundaries in the middle of each shared strip.
    rows = tiled(96, 0.25)._axis(256)
    assert [w for w, _ in rows] == [(0, 96), (72, 168), (144, 240), (160, 256)]
    assert [core[0] for _, core in rows] == [-np.inf, 84.0, 156.0, 200.0]


def test_objects_across_tile_borders_are_reported_once_in_source_pixels():
    # tile 96, overlap 24: windows start at 0, 72, 144, 160 on both axes. Rectangles of
    # up to 20 px (<= the overlap) straddle window edges (96, 168, 144, 160, 240) and the
    # corner where four tiles meet; one lies inside a single tile.
    rectangles = [
        (10, 88, 30, 104, 0),  # across x = 96 (end of the first window)
        (80, 80, 98, 99, 1),  # across the corner (96, 96)
        (150, 10, 170, 28, 2),  # across y = 160 and y = 168
        (136, 138, 152, 150, 0),  # across y = 144 and x = 144
        (232, 230, 250, 248, 1),  # across y = 240 and x = 240
        (40, 30, 50, 45, 2),  # inside the first tile
        (60, 200, 78, 218, 0),  # across y = 72
    ]
    image, truth = scene(256, 256, rectangles)
    detector = tiled(96, 0.25)
    windows = [w for w, _ in detector.tiles(256, 256)]
    cut = sum(
        any(
            max(y1, w[0]) < min(y2, w[2])
            and max(x1, w[1]) < min(x2, w[3])
            and not (w[0] <= y1 and y2 <= w[2] and w[1] <= x1 and x2 <= w[3])
            for w in windows
        )
        for y1, x1, y2, x2, _ in rectangles
    )
    assert cut == 6  # six rectangles are cut by some tile: pieces that must not survive
    result = detector.detect(image, score_threshold=0.5)
    masks = assert_detects_exactly(result, truth)
    # The masks equal the untiled detector's (pasted at source size), pixel for pixel.
    whole = ComponentPredictor(DataConfig(min_size=(256,), max_size=256))
    untiled = Detector(whole, CATEGORIES).detect(image)
    assert len(untiled) == len(truth)
    for box, mask in zip(untiled.boxes, untiled.masks):
        np.testing.assert_array_equal(masks[tuple(int(v) for v in box)], mask)
    assert set(detector.predictor.seen) == {(96, 96)}  # native resolution, never resized
    assert len(detector.predictor.seen) == 16
    assert result.to_coco()[0]["segmentation"]["size"] == [256, 256]


def test_overlap_zero_and_an_image_smaller_than_a_tile():
    # Overlap 0: a rectangle across a seam is cut in two pieces, each in its own core
    # (nothing can see it whole); one inside a tile is exact.
    image, truth = scene(128, 128, [(10, 50, 30, 80, 0), (80, 80, 100, 100, 1)])
    result = tiled(64, 0.0).detect(image)
    pieces = [(10, 50, 30, 64, 0), (10, 64, 30, 80, 0)]
    assert_detects_exactly(result, truth[1:] + scene(128, 128, pieces)[1])
    # A 50 x 70 image and tile 128: one 50 x 70 tile, the rectangles as they are.
    image, truth = scene(50, 70, [(0, 0, 12, 20, 2), (30, 40, 50, 70, 0)])
    detector = tiled(128, 0.2)
    assert_detects_exactly(detector.detect(image), truth)
    assert detector.predictor.seen == [(50, 70)]


def test_full_image_pass_replaces_the_pieces_of_a_large_object():
    # A 90 px rectangle (longer than a core's 72 px) across the first seam: the tiles
    # report two pieces; the whole-image pass reports it whole and wins. The 20 px one
    # comes from its tile (the whole-image pass drops what is smaller than a core).
    image, truth = scene(128, 200, [(20, 50, 50, 140, 1), (90, 170, 110, 190, 2)])
    pieces = tiled(96, 0.25, size=128).detect(image)
    assert len(pieces) == 3
    np.testing.assert_array_equal(
        sorted(pieces.boxes[pieces.class_ids == CATEGORIES.to_original_id(1)].tolist()),
        [[20, 50, 50, 96], [20, 72, 50, 140]],
    )
    assert_detects_exactly(tiled(96, 0.25, full_image=True, size=128).detect(image), truth)


def test_detector_detect_delegates_and_bad_arguments_name_themselves():
    image, truth = scene(200, 200, [(90, 90, 110, 110, 0)])
    detector = Detector(ComponentPredictor(DataConfig(min_size=(200,), max_size=200)), CATEGORIES)
    result = detector.detect(image, tile=64, tile_overlap=0.4)
    assert_detects_exactly(result, truth)
    assert len(detector.detect([image, image], tile=64)) == 2
    with pytest.raises(ValueError, match="RLE only"):
        detector.detect(image, tile=64, mask_format="bitmap")
    predictor = ComponentPredictor(DataConfig())
    for tile in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="tile must be a positive integer"):
            TiledDetection(predictor, CATEGORIES, tile)
    for overlap in (-0.1, 0.95):
        with pytest.raises(ValueError, match=r"tile overlap must lie in \[0, 0.9\]"):
            TiledDetection(predictor, CATEGORIES, 64, overlap)
    fixed = ComponentPredictor(dataclasses.replace(DataConfig(), image_size=(64, 64)))
    with pytest.raises(ValueError, match="tile 96 does not fit"):
        TiledDetection(fixed, CATEGORIES, 96)


def test_a_real_tiny_model_gives_rle_detections_in_source_pixels(tmp_path):
    from kmask.modeling.factory import build_inference_model
    from tests.toy_data import tiny_config

    config = tiny_config(tmp_path)
    model = build_inference_model(config.model)
    detector = Detector(Predictor(model, config.data), CategoryMap.placeholder(3), 0.0)
    image = np.random.default_rng(0).integers(0, 255, (100, 150, 3), dtype=np.uint8)
    result = detector.detect(image, tile=64, tile_with_full_image=True)
    assert result.image_size == (100, 150)
    assert result.masks is None and len(result.rles) == len(result) > 0
    assert result.boxes.dtype == np.float32 and result.boxes.shape == (len(result), 4)
    assert np.all(result.boxes >= 0) and np.all(result.boxes[:, 2] <= 100)
    assert np.all(result.boxes[:, 3] <= 150)
    assert np.all(np.diff(result.scores) <= 0)
    assert all(r["size"] == [100, 150] for r in result.rles)
    assert len(result.to_coco()) == len(result)


def test_prediction_writer_with_tiling_writes_the_merged_detections(tmp_path):
    import json

    from kmask.data.image_io import encode_png
    from kmask.evaluation import PredictionWriter

    image, truth = scene(200, 200, [(60, 88, 80, 104, 0), (150, 20, 170, 40, 2)])
    (tmp_path / "scene.png").write_bytes(encode_png(image))
    predictor = ComponentPredictor(DataConfig(min_size=(200,), max_size=200))
    tiling = TiledDetection(predictor, CATEGORIES, 96, 0.25)
    writer = PredictionWriter(predictor, CATEGORIES, tmp_path / "out", tiling=tiling)
    writer.write([tmp_path / "scene.png"], progress=False)
    results = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert sorted(r["bbox"] for r in results) == [[20, 150, 20, 20], [88, 60, 16, 20]]
    assert (tmp_path / "out" / "scene.png").is_file()
    assert set(predictor.seen) == {(96, 96)}
