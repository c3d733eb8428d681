"""Every kind of bad observation raises an ObservationError naming the field, and nothing is returned."""

import numpy as np
import pytest

from policies import Observation, ObservationError, make_example_observation
from runtime import Engine


@pytest.fixture(scope="module")
def engine(exported):
    return Engine(exported("flow").bundle)


@pytest.fixture
def obs(engine):
    return make_example_observation(engine.manifest, seed=0)


def replace_image(obs, name, image):
    obs.images = {**obs.images, name: image}
    return obs


CAM = "cam_high"


@pytest.mark.parametrize("mutate,field,message", [
    (lambda o: setattr(o, "state", o.state[:-1]), "state", "shape"),
    (lambda o: setattr(o, "state", o.state.reshape(1, -1)), "state", "shape"),
    (lambda o: setattr(o, "state", o.state.astype(np.int32)), "state", "dtype"),
    (lambda o: setattr(o, "state", list(o.state)), "state", "numpy array"),
    (lambda o: o.state.__setitem__(3, np.nan), "state[3]", "not finite"),
    (lambda o: o.state.__setitem__(13, np.inf), "state[13]", "not finite"),
    (lambda o: setattr(o, "images", {}), f"images[{CAM!r}]", "missing camera"),
    (lambda o: replace_image(o, "cam_wrist", o.images[CAM]), "images['cam_wrist']", "unknown camera"),
    (lambda o: replace_image(o, CAM, np.zeros((32, 32, 4), np.uint8)), f"images[{CAM!r}]", "RGB"),
    (lambda o: replace_image(o, CAM, np.zeros((32, 32), np.uint8)), f"images[{CAM!r}]", "RGB"),
    (lambda o: replace_image(o, CAM, np.zeros((3, 32, 32), np.uint8)), f"images[{CAM!r}]", "RGB"),
    (lambda o: replace_image(o, CAM, np.zeros((32, 32, 3), np.float32)), f"images[{CAM!r}]", "uint8"),
    (lambda o: replace_image(o, CAM, np.zeros((0, 32, 3), np.uint8)), f"images[{CAM!r}]", "empty"),
    (lambda o: setattr(o, "task", None), "task", "str"),
    (lambda o: setattr(o, "stamp", float("nan")), "stamp", "finite"),
])
def test_bad_observation_names_the_field(engine, obs, mutate, field, message):
    mutate(obs)
    with pytest.raises(ObservationError, match=message) as info:
        engine.infer(obs, n=2, seed=0)
    assert info.value.field == field


def test_unknown_and_missing_fields_of_a_mapping(engine, obs):
    data = {"images": obs.images, "state": obs.state, "task": "x", "stamp": 0.0}
    with pytest.raises(ObservationError) as info:
        engine.infer({**data, "velocity": np.zeros(14)}, n=1, seed=0)
    assert info.value.field == "velocity" and "unknown field" in str(info.value)
    del data["state"]
    with pytest.raises(ObservationError) as info:
        engine.infer(data, n=1, seed=0)
    assert info.value.field == "state"


def test_huge_float64_state_that_overflows_float32_is_named(engine, obs):
    obs.state = obs.state.astype(np.float64)
    obs.state[2] = 1e300
    with pytest.raises(ObservationError) as info:
        engine.infer(obs, n=1, seed=0)
    assert info.value.field == "state[2]"


def test_a_float32_state_that_overflows_once_normalised_is_named(engine, obs):
    # Finite in float32, but (x - mean) / std is not: the joint's value alone says the reading is corrupt.
    std = np.asarray(engine.manifest.normalization.state_std, np.float32)
    joint = int(np.argmin(std))
    assert std[joint] < 0.9  # the test bundle's statistics: dividing float32's largest value overflows
    obs.state[joint] = np.finfo(np.float32).max
    assert np.isfinite(obs.state).all()
    with pytest.raises(ObservationError, match="once normalised") as info:
        engine.infer(obs, n=1, seed=0)
    assert info.value.field == f"state[{joint}]"


def test_a_mapping_without_stamp_defaults_it(engine, obs):
    decision = engine.infer({"images": obs.images, "state": obs.state, "task": obs.task}, n=1, seed=0)
    assert decision.times[0] == 0.0


def test_a_mapping_observation_is_accepted(engine, obs):
    data = {"images": obs.images, "state": obs.state, "task": obs.task, "stamp": 2.0}
    decision = engine.infer(data, n=1, seed=0)
    assert decision.times[0] == 2.0
    np.testing.assert_array_equal(decision.chunk, engine.infer(obs, n=1, seed=0).chunk)


@pytest.mark.parametrize("n", [0, -1, 2.5, True, 10**6])
def test_bad_candidate_count(engine, obs, n):
    with pytest.raises(ObservationError) as info:
        engine.infer(obs, n=n, seed=0)
    assert info.value.field == "n"


def test_float64_state_is_accepted_and_robot_sized_images_are_resized(engine):
    obs = make_example_observation(engine.manifest, seed=1, image_size=(480, 640))
    obs.state = obs.state.astype(np.float64)
    decision = engine.infer(obs, n=3, seed=0)
    assert decision.chunk.shape == (engine.manifest.chunk_length, engine.manifest.action_dim)
    assert np.isfinite(decision.chunk).all()


def test_observation_from_dict_rejects_non_mappings():
    with pytest.raises(ObservationError):
        Observation.from_dict([1, 2])
