"""Raw driver data -> Observation checks, command splitting, and the trajectory preview of the filter."""

from __future__ import annotations

import numpy as np
import pytest

from hardware.profiles import ALOHA_VIPERX as PROFILE
from hardware.robot_io import StateAssembler, assemble_observation, decode_image, join_command, split_command
from hardware.safety import SafetyFilter, preview
from policies.errors import ObservationError

NAMES = [*PROFILE.arm_joint_names, "left_finger", "right_finger"]


def test_decode_image_checks_size_step_and_encoding():
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    np.testing.assert_array_equal(decode_image("cam", "rgb8", 4, 5, 15, rgb.tobytes()), rgb)
    np.testing.assert_array_equal(decode_image("cam", "bgr8", 4, 5, 15, rgb[..., ::-1].tobytes()), rgb)
    padded = np.zeros((4, 16), np.uint8)
    padded[:, :15] = rgb.reshape(4, 15)
    np.testing.assert_array_equal(decode_image("cam", "rgb8", 4, 5, 16, padded.tobytes()), rgb)
    with pytest.raises(ObservationError) as info:
        decode_image("cam", "rgb8", 4, 5, 15, rgb.tobytes()[:-1])
    assert info.value.field == "cam.data" and "59 bytes" in str(info.value)
    with pytest.raises(ObservationError, match="unsupported 'mono16'"):
        decode_image("cam", "mono16", 4, 5, 10, bytes(40))
    with pytest.raises(ObservationError) as info:
        decode_image("cam", "rgb8", 4, 5, 12, bytes(48))
    assert info.value.field == "cam.step"


def test_state_assembler_orders_checks_and_normalises():
    asm = StateAssembler(PROFILE)
    assert not asm.ready
    with pytest.raises(ObservationError, match="no message received"):
        asm.state()
    joints = np.linspace(-0.5, 0.5, 6)
    open_finger = PROFILE.gripper_state.open
    # Joint order differs from the profile's; the extra "right_finger" is ignored.
    asm.update(0, NAMES[::-1], [-open_finger, open_finger, *joints[::-1]], stamp=10.0)
    asm.update(1, NAMES, [*joints, PROFILE.gripper_state.closed, 0.0], stamp=9.5)
    state, stamp = asm.state()
    np.testing.assert_allclose(state[:6], joints, atol=1e-6)
    assert state[6] == pytest.approx(1.0) and state[13] == pytest.approx(0.0)
    assert stamp == 9.5  # the older arm
    for names, positions, stamp, match in [
        (NAMES[:-3], [0.0] * 5, 1.0, "missing joints"),
        (NAMES, [0.0] * 7, 1.0, "7 positions for 8 names"),
        (NAMES, [0.0, np.nan, *[0.0] * 6], 1.0, "non-finite values for \\['shoulder'\\]"),
        (NAMES, [0.0] * 8, float("nan"), "not a finite time"),
    ]:
        with pytest.raises(ObservationError, match=match) as info:
            asm.update(1, names, positions, stamp)
        assert info.value.field.startswith("follower_right/joint_states")
    assert asm.state()[1] == 9.5  # a rejected message changes nothing


def test_observation_is_stamped_with_its_oldest_part():
    image = np.zeros((2, 2, 3), np.uint8)
    obs = assemble_observation(np.zeros(14, np.float32), 5.0, {"cam_high": (image, 4.2)}, "task")
    assert obs.stamp == 4.2 and obs.task == "task"


def test_split_and_join_commands_round_trip_in_joint_units():
    command = np.array([*np.linspace(-1, 1, 6), 0.25, *np.linspace(1, -1, 6), 1.0])
    arms = split_command(PROFILE, command)
    assert arms[1][1] == pytest.approx(PROFILE.gripper.open)
    assert arms[0][1] == pytest.approx(PROFILE.gripper.closed + 0.25 * (PROFILE.gripper.open - PROFILE.gripper.closed))
    np.testing.assert_allclose(join_command(PROFILE, arms), command)


def test_preview_filters_a_sequence_without_moving_the_filter():
    f = SafetyFilter(PROFILE)
    home = np.asarray(PROFILE.home)
    f.reset(home)
    target = np.asarray(PROFILE.upper) + 1.0
    seq = preview(f, np.repeat(target[None], 5, axis=0), 0.02)
    np.testing.assert_array_equal(f.hold(), home)  # state untouched
    steps = np.diff(np.vstack([home, seq]), axis=0)
    assert (np.abs(steps) <= np.asarray(PROFILE.max_velocity) * 0.02 + 1e-12).all()
    assert (seq <= np.asarray(PROFILE.upper)).all()
    assert (seq[-1] > seq[0]).any()  # it does move toward the target
