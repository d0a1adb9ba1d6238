"""OKS sigmas of the keypoint evaluation: ``eval.keypoint_oks_sigmas`` (detectron2's
``TEST.KEYPOINT_OKS_SIGMAS``) is checked when the config is read, wins over the categories'
``keypoint_sigmas`` and scores as pycocotools does with the same sigmas; COCOeval's own
sigmas stay the default for 17 keypoints; and a run that will evaluate keypoints without
sigmas (or on data with another keypoint count) fails before the model is built."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from kmask.cli import main
from kmask.config import ConfigError, EvalConfig, config_from_dict, config_to_dict, load_config
from kmask.data import CategoryMap
from kmask.data.stick_figures_dataset import KEYPOINT_NAMES, SKELETON, StickFiguresDataset
from kmask.evaluation import COCOEvaluator
from kmask.evaluation.coco_evaluator import oks_sigmas
from kmask.evaluation.coco_results import quiet
from kmask.training import Trainer
from tests.cli_runner import CONFIGS

FOUR_SIGMAS = (0.05, 0.03, 0.08, 0.06)
MISSING_SIGMAS = (
    "4 keypoints and no OKS sigmas: set eval.keypoint_oks_sigmas: [s1, ..., s4] in the config "
    "(detectron2's TEST.KEYPOINT_OKS_SIGMAS) or keypoint_sigmas in the dataset's categories"
)

# ------------------------------------------------------------------------- configuration


def test_config_reads_and_checks_the_sigmas():
    four = ["model.keypoint_head.num_keypoints=4"]
    config = load_config(None, [*four, "eval.keypoint_oks_sigmas=[0.05, 0.03, 0.08, 0.06]"])
    assert config.eval.keypoint_oks_sigmas == FOUR_SIGMAS
    assert config_from_dict(config_to_dict(config)) == config
    assert load_config(None, four).eval.keypoint_oks_sigmas is None
    # A Python list becomes a tuple of floats (the config stays hashable and comparable).
    assert EvalConfig(keypoint_oks_sigmas=[1, 0.5]).keypoint_oks_sigmas == (1.0, 0.5)
    with pytest.raises(ConfigError, match=r"eval.keypoint_oks_sigmas: 3 sigmas but model\."):
        load_config(None, [*four, "eval.keypoint_oks_sigmas=[0.05, 0.03, 0.08]"])
    for bad in ("[0.05, 0, 0.08, 0.06]", "[0.05, -0.03, 0.08, 0.06]", "[]"):
        with pytest.raises(ConfigError, match="eval.keypoint_oks_sigmas: expected a list of pos"):
            load_config(None, [*four, f"eval.keypoint_oks_sigmas={bad}"])
    for bad in ("[0.05, a, 0.08, 0.06]", "[0.05, .nan, 0.08, 0.06]"):
        with pytest.raises(ConfigError, match=r"eval.keypoint_oks_sigmas\[1\]"):
            load_config(None, [*four, f"eval.keypoint_oks_sigmas={bad}"])
    # Without a keypoint head nothing is evaluated with them: not checked against a count.
    assert load_config(None, ["eval.keypoint_oks_sigmas=[0.1]"]).eval.keypoint_oks_sigmas == (0.1,)


# ---------------------------------------------------------------------------- evaluation


def _keypoint_coco(num_keypoints: int, sigmas: tuple[float, ...] | None = None) -> dict:
    """A hand-made COCO ground truth: 3 images of 3 objects of one category with
    ``num_keypoints`` keypoints (integer pixel indices; a few unlabelled, ``v = 0``)."""
    rng = np.random.default_rng(num_keypoints)
    category: dict[str, Any] = {
        "id": 5,
        "name": "thing",
        "keypoints": [f"point_{k}" for k in range(num_keypoints)],
    }
    if sigmas is not None:
        category["keypoint_sigmas"] = list(sigmas)
    images, annotations = [], []
    for image_id in (1, 2, 3):
        images.append({"id": image_id, "width": 200, "height": 160, "file_name": f"{image_id}.png"})
        for _ in range(3):
            w, h = rng.integers(40, 90, size=2)
            x, y = rng.integers(0, 200 - w), rng.integers(0, 160 - h)
            points = np.zeros((num_keypoints, 3), np.int64)
            points[:, 0] = rng.integers(x, x + w, size=num_keypoints)
            points[:, 1] = rng.integers(y, y + h, size=num_keypoints)
            points[:, 2] = rng.choice([0, 2], size=num_keypoints, p=[0.15, 0.85])
            points[points[:, 2] == 0] = 0
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 5,
                    "bbox": [int(x), int(y), int(w), int(h)],
                    "area": float(w * h),
                    "iscrowd": 0,
                    "keypoints": points.reshape(-1).tolist(),
                    "num_keypoints": int(np.count_nonzero(points[:, 2])),
                }
            )
    return {"images": images, "annotations": annotations, "categories": [category]}


def _noisy_keypoints(data: dict) -> dict[int, np.ndarray]:
    """Per annotation id: its keypoints ``[K, 3]`` moved by whole quarter pixels (exact in
    float32) up to 1, 3, 5 or 7 px by object; score 0.9 where labelled, else 0."""
    rng = np.random.default_rng(7)
    noisy = {}
    for rank, annotation in enumerate(data["annotations"]):
        points = np.reshape(annotation["keypoints"], (-1, 3)).astype(np.float64)
        spread = 4 + 8 * (rank % 4)
        points[:, :2] += rng.integers(-spread, spread + 1, size=(len(points), 2)) * 0.25
        points[:, 2] = np.where(points[:, 2] > 0, 0.9, 0.0)
        noisy[annotation["id"]] = points
    return noisy


def _score(rank: int) -> float:
    return round(0.99 - 0.05 * rank, 2)


def _evaluator_keypoint_ap(path: Path, data: dict, **kwargs: Any) -> float:
    """kmask's keypoint AP of the noisy keypoints, given as ``Predictor.image_detections``
    would (continuous coordinates: COCO index + 0.5)."""
    noisy = _noisy_keypoints(data)
    evaluator = COCOEvaluator(path, **kwargs)
    for image in data["images"]:
        annotations = [a for a in data["annotations"] if a["image_id"] == image["id"]]
        keypoints = np.stack([noisy[a["id"]] for a in annotations]) + [0.5, 0.5, 0.0]
        boxes = [[a["bbox"][1], a["bbox"][0], a["bbox"][1] + a["bbox"][3],
                  a["bbox"][0] + a["bbox"][2]] for a in annotations]  # fmt: skip
        ranks = [data["annotations"].index(a) for a in annotations]
        evaluator.add_image(
            {
                "image_id": image["id"],
                "boxes": np.array(boxes, np.float32),
                "scores": np.array([_score(r) for r in ranks], np.float32),
                "classes": np.zeros(len(annotations), np.int32),
                "keypoints": keypoints.astype(np.float32),
            }
        )
    return evaluator.evaluate()["keypoints_AP"]


def _pycocotools_keypoint_ap(path: Path, data: dict, sigmas: tuple[float, ...] | None) -> float:
    """The reference: COCOeval ``keypoints`` on the same noisy keypoints, written straight
    as COCO results, with ``sigmas`` (None: COCOeval's defaults)."""
    noisy = _noisy_keypoints(data)
    results = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "keypoints": noisy[a["id"]].reshape(-1).tolist(),
            "score": _score(rank),
        }
        for rank, a in enumerate(data["annotations"])
    ]
    coco = quiet(COCO, str(path))
    evaluator = COCOeval(coco, quiet(coco.loadRes, results), "keypoints")
    if sigmas is not None:
        evaluator.params.kpt_oks_sigmas = np.array(sigmas)
    quiet(evaluator.evaluate)
    quiet(evaluator.accumulate)
    quiet(evaluator.summarize)
    return float(evaluator.stats[0])


def _write(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_config_sigmas_score_as_the_same_sigmas_in_the_categories(tmp_path):
    bare = _keypoint_coco(4)
    in_categories = _keypoint_coco(4, FOUR_SIGMAS)
    tripled = tuple(3 * s for s in FOUR_SIGMAS)
    other = _keypoint_coco(4, tripled)
    bare_path = _write(tmp_path, "bare.json", bare)
    categories_path = _write(tmp_path, "categories.json", in_categories)
    other_path = _write(tmp_path, "other.json", other)

    reference = _pycocotools_keypoint_ap(bare_path, bare, FOUR_SIGMAS)
    wider = _pycocotools_keypoint_ap(bare_path, bare, tripled)
    assert 0.05 < reference < 0.95 and wider > reference + 0.05  # the sigmas matter here
    from_config = _evaluator_keypoint_ap(bare_path, bare, keypoint_sigmas=FOUR_SIGMAS)
    from_categories = _evaluator_keypoint_ap(categories_path, in_categories)
    assert from_config == pytest.approx(reference, abs=1e-12)
    assert from_categories == pytest.approx(reference, abs=1e-12)
    # The config's sigmas win over the categories' (here three times wider).
    assert _evaluator_keypoint_ap(other_path, other) == pytest.approx(wider, abs=1e-12)
    overridden = _evaluator_keypoint_ap(other_path, other, keypoint_sigmas=FOUR_SIGMAS)
    assert overridden == pytest.approx(reference, abs=1e-12)


def test_seventeen_keypoints_keep_cocoeval_sigmas_and_others_need_some(tmp_path):
    seventeen = _keypoint_coco(17)
    path = _write(tmp_path, "seventeen.json", seventeen)
    assert oks_sigmas(CategoryMap(seventeen["categories"])) is None  # COCOeval's own
    reference = _pycocotools_keypoint_ap(path, seventeen, None)
    assert 0.05 < reference < 0.95
    assert _evaluator_keypoint_ap(path, seventeen) == pytest.approx(reference, abs=1e-12)

    bare = _keypoint_coco(4)
    bare_path = _write(tmp_path, "bare.json", bare)
    with pytest.raises(ConfigError) as error:
        _evaluator_keypoint_ap(bare_path, bare)
    assert str(error.value) == f"{bare_path}: {MISSING_SIGMAS}"
    with pytest.raises(ConfigError, match=r"eval.keypoint_oks_sigmas: 3 sigmas but .* has 4 "):
        oks_sigmas(CategoryMap(bare["categories"]), FOUR_SIGMAS[:3])


# ------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def four_keypoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """Two 64 px stick-figure images with 4 of their 11 keypoints and no
    ``keypoint_sigmas``: (their folder, the COCO dict)."""
    root = tmp_path_factory.mktemp("figures")
    data = json.loads(
        StickFiguresDataset(64, seed=0).write(root, 2, 0, progress=False)["train"].read_text()
    )
    (category,) = data["categories"]
    category["keypoints"] = list(KEYPOINT_NAMES[:4])
    category["skeleton"] = [list(edge) for edge in SKELETON if max(edge) <= 4]
    del category["keypoint_sigmas"]
    for annotation in data["annotations"]:
        annotation["keypoints"] = annotation["keypoints"][:12]
        annotation["num_keypoints"] = sum(v > 0 for v in annotation["keypoints"][2::3])
    return root, data


class _ModelBuilt(Exception):
    """Raised in place of building the model: the run got past its checks."""


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any) -> None:
        raise _ModelBuilt

    monkeypatch.setattr(Trainer, "build_model", refuse)


def _config(path: Path, root: Path, *overrides: str):
    paths = [f"train.json_path={path}", f"train.images_dir={root}"]
    return load_config(CONFIGS / "keypoints_tiny.yaml", [*paths, *overrides])


@pytest.mark.parametrize(
    "evaluation",
    [("eval.json_path={path}", "eval.images_dir={root}"), ("train.eval_every_epochs=1",)],
    ids=["eval_data", "eval_every_epochs"],
)
def test_training_without_sigmas_fails_before_the_model_is_built(
    four_keypoints, tmp_path, no_model, evaluation
):
    root, data = four_keypoints
    path = _write(tmp_path, "train.json", data)
    overrides = [o.format(path=path, root=root) for o in evaluation]
    config = _config(
        path, root, "eval.json_path=null", *overrides, "model.keypoint_head.num_keypoints=4"
    )
    start = time.perf_counter()
    with pytest.raises(ConfigError) as error:
        Trainer(config, tmp_path / "run", verbose=0).train()
    assert time.perf_counter() - start < 10.0
    assert str(error.value) == f"{path}: {MISSING_SIGMAS}"
    assert not (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.parametrize(
    ("sigmas", "overrides"),
    [
        (None, ["eval.json_path=null"]),  # nothing evaluated: no sigmas needed
        (None, ["eval.keypoint_oks_sigmas=[0.05, 0.03, 0.08, 0.06]"]),
        (FOUR_SIGMAS, []),
    ],
    ids=["no_evaluation", "config", "categories"],
)
def test_training_with_sigmas_or_without_evaluation_gets_past_the_check(
    four_keypoints, tmp_path, no_model, sigmas, overrides
):
    root, data = four_keypoints
    if sigmas is not None:
        data = {**data, "categories": [{**data["categories"][0], "keypoint_sigmas": sigmas}]}
    path = _write(tmp_path, "train.json", data)
    config = _config(path, root, "model.keypoint_head.num_keypoints=4", *overrides)
    with pytest.raises(_ModelBuilt):
        Trainer(config, tmp_path / "run", verbose=0).train()


def _error_line(err: str, command: str) -> str:
    """The one ``kmask COMMAND: error: ...`` line of ``err`` (which holds no traceback)."""
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith(f"kmask {command}: error:")]
    return line


def test_kmask_train_names_both_places_in_one_line(four_keypoints, tmp_path, capsys, no_model):
    root, data = four_keypoints
    path = _write(tmp_path, "train.json", data)
    run = tmp_path / "run"
    argv = ["train", "--config", str(CONFIGS / "keypoints_tiny.yaml"), "--out", str(run)]
    argv += ["--train-json", str(path), "--train-images", str(root)]
    argv += ["--val-json", str(path), "--val-images", str(root)]
    start = time.perf_counter()
    assert main([*argv, "--set", "model.keypoint_head.num_keypoints=4"]) == 1
    assert time.perf_counter() - start < 10.0
    assert _error_line(capsys.readouterr().err, "train").endswith(f"{path}: {MISSING_SIGMAS}")
    # Data with 4 keypoints against the config's 11: refused first, in one line too.
    start = time.perf_counter()
    assert main(argv) == 1
    assert time.perf_counter() - start < 10.0
    line = _error_line(capsys.readouterr().err, "train")
    assert f"model.keypoint_head.num_keypoints is 11 but the training data ({path}) has 4 " in line
    assert not (run / "config.yaml").exists() and not (run / "categories.json").exists()


def test_kmask_evaluate_fails_before_predicting(four_keypoints, tmp_path, capsys):
    root, data = four_keypoints
    path = _write(tmp_path, "val.json", data)
    checkpoint = tmp_path / "step.weights.h5"
    checkpoint.write_bytes(b"")  # never read: the check comes first
    argv = ["evaluate", "--checkpoint", str(checkpoint)]
    argv += ["--config", str(CONFIGS / "keypoints_tiny.yaml"), "--json", str(path)]
    argv += ["--images", str(root), "--set", "model.keypoint_head.num_keypoints=4"]
    assert main(argv) == 2
    assert _error_line(capsys.readouterr().err, "evaluate").endswith(f"{path}: {MISSING_SIGMAS}")
