"""kmask layers as building blocks: a functional model of the user's (ResNet + FPN + a
segmentation head of its own) takes the backbone and FPN of a trained kmask detector by
name, trains a step and round-trips through a .keras file."""

from pathlib import Path

import keras
import numpy as np
import pytest

from kmask.modeling import FPN, ResNet, build_mask_rcnn
from kmask.training import WeightTransfer
from kmask.training.weight_transfer import weight_names
from tests.toy_data import tiny_config


def _segmentation_model() -> keras.Model:
    images = keras.Input((64, 64, 3), name="images")
    features = ResNet(norm="gn", freeze_at=2, name="backbone")(images)
    pyramid = FPN(num_channels=32, name="fpn")(features)
    logits = keras.layers.Conv2D(2, 1, name="classifier")(pyramid["P2"])  # [B, 16, 16, 2]
    logits = keras.layers.UpSampling2D(4, interpolation="bilinear", name="upsample")(logits)
    return keras.Model(images, logits, name="segmenter")


# The head reads P2 only, so P3..P5 get no gradient (Keras warns).
@pytest.mark.filterwarnings("ignore:Gradients do not exist")
def test_user_model_takes_detector_weights_trains_and_round_trips(tmp_path: Path):
    keras.utils.set_random_seed(0)
    detector = build_mask_rcnn(tiny_config(Path("unused")).model)
    detector.build({"images": (None, None, None, 3)})
    model = _segmentation_model()

    rows = WeightTransfer.from_model(detector).load_into(model)
    loaded = {name for name, status, _ in rows if status == "loaded"}
    assert {name.split("/")[0] for name in loaded} == {"backbone", "fpn"}
    source = weight_names(detector)
    for name in loaded:
        np.testing.assert_array_equal(weight_names(model)[name].numpy(), source[name].numpy())
    # freeze_at=2: the stem and conv2 (4 + 40 GN-ResNet variables) do not train.
    assert len(model.get_layer("backbone").trainable_variables) == 212 - 44

    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (2, 64, 64, 3)).astype(np.float32)
    labels = (images[..., :1] > 0.5).astype(np.int32)
    frozen = model.get_layer("backbone").weights[0].numpy()
    head = model.get_layer("classifier").kernel.numpy()
    loss = model.train_on_batch(images, labels)
    assert np.isfinite(loss)
    np.testing.assert_array_equal(model.get_layer("backbone").weights[0].numpy(), frozen)
    assert not np.array_equal(model.get_layer("classifier").kernel.numpy(), head)

    model.save(tmp_path / "segmenter.keras")
    reloaded = keras.saving.load_model(tmp_path / "segmenter.keras")
    np.testing.assert_array_equal(
        reloaded.predict(images, verbose=0), model.predict(images, verbose=0)
    )
    assert len(reloaded.trainable_variables) == len(model.trainable_variables)
