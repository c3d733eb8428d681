import numpy as np
import pytest

from policies import Observation, Preprocessor
from policies.observation import make_example_observation
from policies.errors import ObservationError
from policies.preprocess import MAX_IMAGE_SIDE, MAX_TASK_CHARS, _area_taps, fit_uint8, resize_area, resize_with_pad
from policies.tokenizer import ByteTokenizer


def brute_force_area(image, height, width):
    """Reference area resize: each output pixel is the overlap-weighted mean of the input pixels."""
    h, w, _ = image.shape
    out = np.zeros((height, width, 3))
    for oy in range(height):
        for ox in range(width):
            y0, y1 = oy * h / height, (oy + 1) * h / height
            x0, x1 = ox * w / width, (ox + 1) * w / width
            total, weight = np.zeros(3), 0.0
            for y in range(int(np.floor(y0)), int(np.ceil(y1))):
                for x in range(int(np.floor(x0)), int(np.ceil(x1))):
                    wgt = (min(y1, y + 1) - max(y0, y)) * (min(x1, x + 1) - max(x0, x))
                    total += wgt * image[y, x]
                    weight += wgt
            out[oy, ox] = total / weight
    return out


@pytest.mark.parametrize("shape,size", [((20, 30, 3), (4, 6)), ((21, 17, 3), (5, 4)), ((8, 8, 3), (12, 10))])
def test_resize_area_matches_brute_force(shape, size):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    out = resize_area(image, *size)
    assert out.dtype == np.float32 and out.shape == (*size, 3)
    np.testing.assert_allclose(out, brute_force_area(image, *size), atol=1e-3)


def test_robot_sized_image_takes_the_integer_fast_path_exactly():
    image = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    expected = image.reshape(96, 5, 128, 5, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(resize_area(image, 96, 128), expected, atol=1e-3)


@pytest.mark.parametrize("n_in,n_out", [(37, 11), (11, 37), (640, 299), (4096, 7)])
def test_area_taps_are_few_and_their_weights_sum_to_one(n_in, n_out):
    index, weight = _area_taps(n_in, n_out)
    assert index.shape == weight.shape and index.shape[1] <= int(np.ceil(n_in / n_out)) + 1
    assert (index >= 0).all() and (index < n_in).all() and (weight >= 0).all()
    np.testing.assert_allclose(weight.sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.workstation
@pytest.mark.parametrize("shape,size", [((480, 640, 3), (224, 299)), ((100, 33, 3), (7, 30)), ((8, 8, 3), (12, 10)),
                                        ((1, 4096, 3), (1, 128))])
def test_resize_area_is_opencvs_inter_area(shape, size):
    """OpenCV's area interpolation (on a float image, so that it does not round) is the reference a
    library made for resizing gives; ours stays numpy-only on the inference path."""
    import cv2

    image = np.random.default_rng(4).integers(0, 256, shape, dtype=np.uint8)
    theirs = cv2.resize(image.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(resize_area(image, *size), theirs.reshape(*size, 3), atol=1e-3)


def test_resize_memory_is_bounded_by_the_images_not_their_product():
    """A long thin image used to build a dense [out, in] weight matrix (gigabytes for a 1e6-pixel side)."""
    import tracemalloc

    image = np.random.default_rng(5).integers(0, 256, (3, MAX_IMAGE_SIDE, 3), dtype=np.uint8)
    tracemalloc.start()
    out = resize_with_pad(image, 224, 224)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out.shape == (224, 224, 3)
    assert peak < 2 * (image.nbytes * 4 + out.nbytes), peak  # the dense matrix alone was 224 x 4096 float64, 7 MiB


def test_preprocessor_refuses_oversized_images_and_instructions_naming_them(flow):
    manifest = flow.bundle.manifest
    obs = make_example_observation(manifest)
    cam = manifest.cameras[0].name
    pre = Preprocessor(manifest)
    for shape in [(1, MAX_IMAGE_SIDE + 1, 3), (MAX_IMAGE_SIDE + 1, 2, 3)]:
        with pytest.raises(ObservationError, match=rf"images\['{cam}'\].*each side must be in \[1, {MAX_IMAGE_SIDE}\]"):
            pre(Observation({cam: np.zeros(shape, np.uint8)}, obs.state, obs.task, obs.stamp))
    with pytest.raises(ObservationError, match=rf"images\['{cam}'\]: empty image \(0 x 4 pixels\)"):
        pre(Observation({cam: np.zeros((0, 4, 3), np.uint8)}, obs.state, obs.task, obs.stamp))
    with pytest.raises(ObservationError, match=rf"task: {MAX_TASK_CHARS + 1} characters; at most {MAX_TASK_CHARS}"):
        pre(Observation(obs.images, obs.state, "x" * (MAX_TASK_CHARS + 1), obs.stamp))
    assert pre(Observation(obs.images, obs.state, "x" * MAX_TASK_CHARS, obs.stamp))["state"].shape == (1, 14)


def test_resize_with_pad_keeps_aspect_and_pads_black():
    image = np.full((40, 40, 3), 200, np.uint8)  # square into a 4:3 frame: pillarbox
    out = resize_with_pad(image, 30, 40)
    assert out.shape == (30, 40, 3)
    assert (out[:, :5] == 0).all() and (out[:, -5:] == 0).all()
    np.testing.assert_allclose(out[:, 5:35], 200.0)


@pytest.mark.parametrize("shape,size,align", [((480, 640, 3), (96, 128), "pad_center"),  # integer factors
                                               ((480, 640, 3), (224, 224), "pad_center"),  # padded
                                               ((480, 640, 3), (224, 224), "pad_left_top"),
                                               ((37, 50, 3), (20, 30), "pad_center")])
def test_a_frame_fitted_for_the_network_is_the_resize_rounded_to_a_grey_level(shape, size, align):
    image = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    fitted = fit_uint8(image, *size, align)
    exact = resize_with_pad(image, *size, align)
    assert fitted.dtype == np.uint8 and fitted.shape == (*size, 3)
    assert np.abs(fitted - exact).max() <= 0.5
    # A frame of the policy's size is sent as it is, and the server fits it to itself unchanged.
    assert fit_uint8(fitted, *size, align) is fitted
    np.testing.assert_array_equal(resize_with_pad(fitted, *size, align), fitted.astype(np.float32))


def test_preprocessor_normalises_with_the_manifest_statistics(flow):
    manifest = flow.bundle.manifest
    cam = manifest.cameras[0]
    image = np.random.default_rng(2).integers(0, 256, (cam.height, cam.width, 3), dtype=np.uint8)
    state = np.arange(manifest.state_dim, dtype=np.float64)
    feeds = Preprocessor(manifest)(Observation({cam.name: image}, state, "Pick it", 1.5))
    norm = manifest.normalization
    expected_img = (image / 255.0 - np.array(norm.image_mean)) / np.array(norm.image_std)
    np.testing.assert_allclose(feeds[f"image_{cam.name}"][0], expected_img.transpose(2, 0, 1), atol=1e-5)
    np.testing.assert_allclose(feeds["state"][0], (state - norm.state_mean) / np.array(norm.state_std), rtol=1e-5)
    assert feeds["state"].dtype == np.float32
    assert (feeds["tokens"][0] == ByteTokenizer(manifest.tokenizer.max_length).encode("pick it")).all()
