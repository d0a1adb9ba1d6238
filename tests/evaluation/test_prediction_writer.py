"""PredictionWriter (what ``kmask predict`` runs) in the three detector modes, with a fake
model: pictures and JSON in the source image's pixels, score threshold, top proposals,
empty outputs, unreadable images."""

import json
import zlib

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from kmask.config import DataConfig
from kmask.data.category_map import CategoryMap
from kmask.evaluation import PredictionWriter, Predictor
from tests.fake_outputs import CATEGORIES, FixedOutputModel

SIDE = 32  # source images; the pipeline below resizes them to 64 px
DATA = DataConfig(min_size=(2 * SIDE,), max_size=2 * SIDE)
CATS = CategoryMap(CATEGORIES)  # class 0 = id 3 "cat", class 1 = id 8 "dog"


def _outputs(mode: str, empty: bool = False) -> dict[str, np.ndarray]:
    """One image's outputs in the 64 px frame, padded with junk."""
    outputs = {
        "proposals": np.array(
            [[[4, 4, 20, 20], [30, 30, 60, 60], [0, 0, 10, 10], [1, 1, 2, 2]]], np.float32
        ),
        "proposal_scores": np.array([[0.9, 0.6, 0.3, 0.99]], np.float32),
        "num_proposals": np.array([0 if empty else 3], np.int32),
    }
    if mode == "rpn":
        return outputs
    outputs.update(
        detection_boxes=np.array([[[4, 4, 20, 20], [30, 30, 60, 60], [0, 0, 64, 64]]], np.float32),
        detection_scores=np.array([[0.9, 0.3, 0.99]], np.float32),
        detection_classes=np.array([[0, 1, 1]], np.int32),
        num_detections=np.array([0 if empty else 2], np.int32),
    )
    if mode == "mask_rcnn":
        outputs["detection_masks"] = np.ones((1, 3, 6, 6), np.float32)
    return outputs


def _writer(mode, out, empty=False, **kwargs) -> PredictionWriter:
    predictor = Predictor(FixedOutputModel(_outputs(mode, empty)), DATA)
    return PredictionWriter(predictor, CATS, out, **kwargs)


@pytest.fixture()
def image_path(tmp_path):
    path = tmp_path / "in" / "grey.png"
    path.parent.mkdir()
    Image.fromarray(np.full((SIDE, SIDE, 3), 100, np.uint8)).save(path)
    return path


def _plain(path):
    """The input enlarged as the pictures are (16x for 32 px), with nothing drawn."""
    image = np.asarray(Image.open(path).convert("RGB"))
    return np.repeat(np.repeat(image, 16, axis=0), 16, axis=1)


@pytest.mark.parametrize("mode", ["mask_rcnn", "faster_rcnn"])
def test_detections_above_the_threshold(mode, image_path, tmp_path):
    writer = _writer(mode, tmp_path / "out", score_threshold=0.5)
    assert writer.write([image_path], progress=False) == tmp_path / "out" / "detections.json"
    (result,) = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert result["bbox"] == [2.0, 2.0, 8.0, 8.0]  # the 64 px box [4, 4, 20, 20] halved
    assert (result["category_id"], result["category_name"]) == (3, "cat")
    assert result["score"] == pytest.approx(0.9) and result["file_name"] == str(image_path)
    assert result["image_id"] == 1
    if mode == "mask_rcnn":
        mask = mask_utils.decode(result["segmentation"]).astype(bool)
        assert mask.shape == (SIDE, SIDE) and 40 <= mask.sum() <= 64
        assert not mask[:2].any() and not mask[10:].any()
    else:
        assert "segmentation" not in result
    picture = np.asarray(Image.open(tmp_path / "out" / "grey.png"))
    assert picture.shape == (512, 512, 3)
    assert (picture != _plain(image_path)).any()
    assert writer.images_written == 1 and not writer.skipped
    assert "wrote 1 PNGs and detections.json (1 detections with score >= 0.5)" in (writer.summary())
    # The whole picture is one box's neighbourhood: the dog below the threshold is not
    # drawn (its box would start at 15 px * 16 = 240 px).
    assert (picture[300:, 300:] == _plain(image_path)[300:, 300:]).all()


def test_rpn_only_draws_and_writes_the_best_proposals(image_path, tmp_path):
    writer = _writer("rpn", tmp_path / "out", num_proposals=2)
    assert writer.write([image_path], progress=False).name == "proposals.json"
    results = json.loads((tmp_path / "out" / "proposals.json").read_text())
    assert [r["bbox"] for r in results] == [[2.0, 2.0, 8.0, 8.0], [15.0, 15.0, 15.0, 15.0]]
    assert [r["score"] for r in results] == pytest.approx([0.9, 0.6])
    assert all("category_id" not in r and r["file_name"] == str(image_path) for r in results)
    picture = np.asarray(Image.open(tmp_path / "out" / "grey.png"))
    assert (picture != _plain(image_path)).any()
    assert "proposals.json (2 proposals, the best 2 of each image)" in writer.summary()
    assert "detections" not in writer.summary()


@pytest.mark.parametrize("mode", ["mask_rcnn", "faster_rcnn", "rpn"])
def test_nothing_detected(mode, image_path, tmp_path):
    writer = _writer(mode, tmp_path / "out", empty=True, score_threshold=0.0)
    path = writer.write([image_path], progress=False)
    assert json.loads(path.read_text()) == []
    picture = np.asarray(Image.open(tmp_path / "out" / "grey.png"))
    plain = _plain(image_path)
    # Bare but for the "no detections" tag at the top left (tests/test_visualization.py).
    changed = np.any(picture != plain, axis=-1)
    assert changed[:8, :8].all() and not changed[picture.shape[0] // 2 :].any()
    assert writer.images_written == 1


def test_unreadable_images_are_skipped_and_reported(image_path, tmp_path):
    broken = tmp_path / "in" / "broken.png"
    broken.write_bytes(b"not an image")
    other = tmp_path / "other"
    other.mkdir()
    twin = other / "grey.png"
    twin.write_bytes(image_path.read_bytes())
    told = []
    writer = _writer(
        "faster_rcnn", tmp_path / "out", on_skip=lambda path, reason: told.append((path, reason))
    )
    paths = PredictionWriter.image_paths([str(image_path.parent), str(twin)])
    assert paths == [broken, image_path, twin]  # folder sorted, then the file
    writer.write(paths, progress=False)
    assert [path for path, _ in told] == [broken] and "not a readable image" in told[0][1]
    assert writer.skipped == told and writer.images_written == 2
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["grey.png", "grey_3.png"]
    results = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert sorted({r["image_id"] for r in results}) == [2, 3]
    assert PredictionWriter.image_paths([str(image_path.parent)], limit=1) == [broken]
    with pytest.raises(FileNotFoundError, match="missing.png"):
        PredictionWriter.image_paths([str(tmp_path / "missing.png")])


def test_decompression_bomb_is_skipped_and_the_rest_drawn(image_path, tmp_path):
    """A PNG whose header claims 400 million pixels: Pillow refuses it with
    DecompressionBombError (not an OSError); that image is named and skipped."""
    data = bytearray(image_path.read_bytes())
    data[16:24] = (20000).to_bytes(4, "big") * 2  # IHDR width and height
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    bomb = tmp_path / "in" / "bomb.png"
    bomb.write_bytes(bytes(data))
    told = []
    writer = _writer(
        "mask_rcnn", tmp_path / "out", on_skip=lambda path, reason: told.append((path, reason))
    )
    writer.write([bomb, image_path], progress=False)
    assert [path for path, _ in told] == [bomb] and "pixels" in told[0][1]
    assert writer.images_written == 1 and (tmp_path / "out" / "grey.png").is_file()
