"""ImageNormalization against NumPy: channel order, scale, mean/std, zero padding."""

import numpy as np

from kmask.layers.image_normalization import ImageNormalization


def test_torchvision_and_caffe_normalizations_match_numpy(rng):
    images = rng.uniform(0, 255, (2, 6, 5, 3)).astype(np.float32)
    size = np.array([[6, 5], [4, 3]], np.int32)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    rgb = ImageNormalization("RGB", 1 / 255, mean, std)(images, size).numpy()
    expected = (images / 255 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(rgb[0], expected[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rgb[1, :4, :3], expected[1, :4, :3], rtol=1e-5, atol=1e-5)
    # Padding (rows >= 4 or columns >= 3 of image 1) is exactly zero after normalization.
    assert (rgb[1, 4:] == 0).all() and (rgb[1, :, 3:] == 0).all()
    bgr = ImageNormalization()(images, size).numpy()  # Caffe: BGR minus the means
    caffe = images[0, ..., ::-1] - np.array([103.939, 116.779, 123.68])
    np.testing.assert_allclose(bgr[0], caffe, rtol=1e-5, atol=1e-4)
