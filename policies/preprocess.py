"""Observation -> encoder inputs: validation, resizing, normalisation and tokenisation (numpy only)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache

import numpy as np

from policies.errors import ObservationError
from policies.manifest import PolicyManifest
from policies.observation import Observation

# Dtypes accepted for `state`; others (ints, bools, objects) are errors rather than silent casts.
STATE_DTYPES = (np.float32, np.float64)


# Largest image side accepted anywhere an image enters (the server's wire parser, the preprocessor, the ROS
# node): a 4K UHD camera is 3840 x 2160. Bounds the resize's memory and time, whatever a client sends.
MAX_IMAGE_SIDE = 4096
# Longest task instruction, in characters (tokenisers cut far shorter; this bounds their work).
MAX_TASK_CHARS = 4096


def check_image_size(field: str, height: int, width: int) -> None:
    """Raises ObservationError naming `field` unless 1 <= height, width <= MAX_IMAGE_SIDE."""
    if height == 0 or width == 0:
        raise ObservationError(field, f"empty image ({height} x {width} pixels)")
    if not (1 <= height <= MAX_IMAGE_SIDE and 1 <= width <= MAX_IMAGE_SIDE):
        raise ObservationError(field, f"image of {height} x {width} pixels: each side must be in [1, {MAX_IMAGE_SIDE}]")


@lru_cache(maxsize=64)
def _area_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """(int64[n_out, k], float32[n_out, k]): the input pixels each output pixel covers and their overlap
    weights, normalised (box filter). k <= ceil(n_in / n_out) + 1, so the table is small for any size;
    short rows are padded with weight 0 on pixel 0."""
    scale = n_in / n_out
    lo = np.arange(n_out) * scale
    hi = lo + scale
    first = np.floor(lo).astype(np.int64)
    last = np.minimum(np.ceil(hi).astype(np.int64), n_in)  # exclusive
    k = int((last - first).max())
    index = first[:, None] + np.arange(k)[None]
    weight = np.minimum(hi[:, None], index + 1) - np.maximum(lo[:, None], index)
    valid = index < last[:, None]
    weight = np.where(valid, np.maximum(weight, 0.0), 0.0)
    weight /= weight.sum(axis=1, keepdims=True)
    return np.where(valid, index, 0), weight.astype(np.float32)


def _box_sum(image: np.ndarray, fy: int, fx: int) -> np.ndarray:
    """Sums of each fy x fx block of uint8[h, w, 3], by adding strided slices in uint16/uint32 (much faster
    than mean())."""
    h, w, c = image.shape
    oh, ow = h // fy, w // fx
    acc_type = np.uint16 if fy * fx * 255 < 2**16 else np.uint32
    rows = image.reshape(oh, fy, w * c)
    acc = rows[:, 0].astype(acc_type)
    for i in range(1, fy):
        acc += rows[:, i]
    cols = acc.reshape(oh, ow, fx, c)
    out = cols[:, :, 0].copy()
    for j in range(1, fx):
        out += cols[:, :, j]
    return out


def _box_downscale(image: np.ndarray, fy: int, fx: int) -> np.ndarray:
    """Integer-factor area averaging."""
    return _box_sum(image, fy, fx).astype(np.float32) * np.float32(1.0 / (fy * fx))


def resize_area(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resizes uint8[h, w, 3] to float32[height, width, 3] in [0, 255] with area averaging (each output
    pixel is the overlap-weighted mean of the input pixels it covers; equal to OpenCV's INTER_AREA on a
    float image, tests/test_preprocess.py).

    Integer down-scaling factors (480x640 -> 96x128) take a fast path; other sizes filter rows, then
    columns, each output pixel from its few taps, so memory stays O(input + output) for any size.
    Our own rather than OpenCV's: the inference path is numpy + onnxruntime, and a pip OpenCV beside
    JetPack's own is a known source of conflicts on the robot computers this runs on.
    """
    h, w, c = image.shape
    if (h, w) == (height, width):
        return image.astype(np.float32)
    if h % height == 0 and w % width == 0:
        return _box_downscale(image, h // height, w // width)
    index, weight = _area_taps(h, height)
    rows = np.zeros((height, w, c), np.float32)
    for j in range(index.shape[1]):
        rows += weight[:, j, None, None] * image[index[:, j]]
    index, weight = _area_taps(w, width)
    out = np.zeros((height, width, c), np.float32)
    for j in range(index.shape[1]):
        out += weight[None, :, j, None] * rows[:, index[:, j]]
    return out


def resize_with_pad(image: np.ndarray, height: int, width: int, align: str = "pad_center") -> np.ndarray:
    """Resizes keeping the aspect ratio, then pads with black to [height, width, 3] (float32, 0..255).

    Images whose aspect ratio already matches (640x480 -> 128x96) are resized without padding. The image
    sits in the middle (`pad_center`, as openpi and pi0) or at the bottom right, the padding left and top
    (`pad_left_top`, as SmolVLA).
    """
    h, w, _ = image.shape
    scale = min(height / h, width / w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    resized = resize_area(image, new_h, new_w)
    if (new_h, new_w) == (height, width):
        return resized
    out = np.zeros((height, width, 3), np.float32)
    if align == "pad_left_top":
        top, left = height - new_h, width - new_w
    else:
        top, left = (height - new_h) // 2, (width - new_w) // 2
    out[top: top + new_h, left: left + new_w] = resized
    return out


def fit_uint8(image: np.ndarray, height: int, width: int, align: str = "pad_center") -> np.ndarray:
    """`resize_with_pad` rounded to uint8[height, width, 3]: a frame fitted to a policy's input before it
    is sent over a network. Integer down-scaling factors stay in integer arithmetic (the block mean
    rounded half up); other sizes round the float result to the nearest grey level."""
    h, w, _ = image.shape
    if (h, w) == (height, width):
        return image
    if h % height == 0 and w % width == 0 and h // height * width == w // width * height:
        count = (h // height) * (w // width)
        return ((_box_sum(image, h // height, w // width) + count // 2) // count).astype(np.uint8)
    return np.rint(resize_with_pad(image, height, width, align)).clip(0, 255).astype(np.uint8)


class Preprocessor:
    """Turns an Observation into the encoder's feeds; called by the runtime once per control step."""

    def __init__(self, manifest: PolicyManifest):
        self.manifest = manifest
        norm = manifest.normalization
        self._state_mean = np.asarray(norm.state_mean, np.float32)
        self._state_std = np.asarray(norm.state_std, np.float32)
        # Folds /255 and the per-channel normalisation into one multiply-add.
        self._img_scale = (1.0 / (255.0 * np.asarray(norm.image_std, np.float32))).reshape(3, 1, 1)
        self._img_shift = (np.asarray(norm.image_mean, np.float32) / np.asarray(norm.image_std, np.float32)).reshape(3, 1, 1)

    def __call__(self, observation: Observation | Mapping) -> dict[str, np.ndarray]:
        """Validates and converts; raises ObservationError naming the bad field."""
        if isinstance(observation, Mapping):
            observation = Observation.from_dict(observation)
        if not isinstance(observation, Observation):
            raise ObservationError("observation", f"expected an Observation, got {type(observation).__name__}")
        feeds = {}
        images = observation.images
        if not isinstance(images, Mapping):
            raise ObservationError("images", f"expected a mapping camera -> image, got {type(images).__name__}")
        expected = self.manifest.camera_names
        for name in images:
            if name not in expected:
                raise ObservationError(f"images[{name!r}]", f"unknown camera (this policy takes {', '.join(expected)})")
        for cam in self.manifest.cameras:
            if cam.name not in images:
                raise ObservationError(f"images[{cam.name!r}]", "missing camera")
            feeds[f"image_{cam.name}"] = self._image(f"images[{cam.name!r}]", images[cam.name], cam.height, cam.width)
        feeds["state"] = self._state(observation.state)
        if not isinstance(observation.task, str):
            raise ObservationError("task", f"expected str, got {type(observation.task).__name__}")
        if len(observation.task) > MAX_TASK_CHARS:
            raise ObservationError("task", f"{len(observation.task)} characters; at most {MAX_TASK_CHARS}")
        tokenizer = self.manifest.tokenizer
        if getattr(tokenizer, "needs_state", False):  # pi05 writes the normalised state into its prompt
            tokens = tokenizer.encode(observation.task, feeds["state"][0])
        else:
            tokens = tokenizer.encode(observation.task)
        if tokens is not None:
            feeds["tokens"] = tokens[None]
        stamp = observation.stamp
        if isinstance(stamp, bool) or not isinstance(stamp, (int, float, np.floating)) or not math.isfinite(stamp):
            raise ObservationError("stamp", f"expected finite seconds, got {stamp!r}")
        return feeds

    def _image(self, field: str, image, height: int, width: int) -> np.ndarray:
        if not isinstance(image, np.ndarray):
            raise ObservationError(field, f"expected a numpy array, got {type(image).__name__}")
        if image.dtype != np.uint8:
            raise ObservationError(field, f"expected dtype uint8 (RGB 0..255), got {image.dtype}")
        if image.ndim != 3 or image.shape[2] != 3:
            raise ObservationError(field, f"expected shape [H, W, 3] (RGB channels last), got {list(image.shape)}")
        check_image_size(field, image.shape[0], image.shape[1])
        pixels = resize_with_pad(image, height, width, self.manifest.image_resize)  # [h, w, 3] float32 0..255
        chw = np.ascontiguousarray(pixels.transpose(2, 0, 1))
        chw *= self._img_scale
        chw -= self._img_shift
        return chw[None]

    def _state(self, state) -> np.ndarray:
        if not isinstance(state, np.ndarray):
            raise ObservationError("state", f"expected a numpy array, got {type(state).__name__}")
        if state.dtype not in STATE_DTYPES:
            raise ObservationError("state", f"expected dtype float32 or float64, got {state.dtype}")
        if state.shape != (self.manifest.state_dim,):
            raise ObservationError("state", f"expected shape [{self.manifest.state_dim}], got {list(state.shape)}")
        # Checked after the cast: a float64 of 1e300 is finite but overflows float32.
        with np.errstate(over="ignore"):
            as32 = state.astype(np.float32)
        bad = np.flatnonzero(~np.isfinite(as32))
        if bad.size:
            i = int(bad[0])
            raise ObservationError(f"state[{i}]", f"not finite in float32 ({state[i]}) for joint "
                                                  f"{self.manifest.state_names[i]!r}")
        with np.errstate(over="ignore"):
            normalised = (as32 - self._state_mean) / self._state_std
        bad = np.flatnonzero(~np.isfinite(normalised))
        if bad.size:
            i = int(bad[0])
            raise ObservationError(f"state[{i}]", f"{state[i]} for joint {self.manifest.state_names[i]!r} is not "
                                                  "finite once normalised: no reading of a joint is that far out")
        return normalised[None]
