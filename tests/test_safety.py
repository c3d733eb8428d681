"""The safety layer: property tests over 10^5 random command streams, NaN holds, watchdog and e-stop."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hardware.profiles import ALOHA_VIPERX, RobotProfile, get_profile
from hardware.safety import SafetyFilter, SafetyLayer, WatchdogConfig

PROFILE = ALOHA_VIPERX
LOWER, UPPER, VMAX = PROFILE.arrays()
DT = 1.0 / PROFILE.control_hz
STREAMS_PER_EXAMPLE, STEPS = 1000, 40
EXAMPLES = 100  # x 1000 streams = 10^5 streams


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1), scale=st.floats(0.01, 50.0), nan_rate=st.sampled_from([0.0, 0.01, 0.2]),
       jump=st.booleans())
def test_no_command_leaves_the_limits_or_exceeds_the_speed_bound(seed, scale, nan_rate, jump):
    rng = np.random.default_rng(seed)
    f = SafetyFilter(PROFILE)
    start = rng.uniform(LOWER, UPPER, size=(STREAMS_PER_EXAMPLE, 14))
    f.reset(start)
    previous = f.hold()
    for _ in range(STEPS):
        if jump:  # wild jumps anywhere, far outside the limits too
            command = rng.uniform(LOWER - scale, UPPER + scale, size=(STREAMS_PER_EXAMPLE, 14))
        else:  # a random walk around the last command
            command = previous + rng.normal(0, scale * DT, size=(STREAMS_PER_EXAMPLE, 14))
        bad = rng.random((STREAMS_PER_EXAMPLE, 14)) < nan_rate
        command[bad] = rng.choice([np.nan, np.inf, -np.inf], size=bad.sum())
        safe, report = f(command, DT)
        assert np.isfinite(safe).all()
        assert (safe >= LOWER).all() and (safe <= UPPER).all()
        assert (np.abs(safe - previous) <= VMAX * DT + 1e-12).all()
        # A stream whose command had a NaN holds exactly.
        rows = bad.any(axis=1)
        np.testing.assert_array_equal(safe[rows], previous[rows])
        assert report.held == bool(rows.any())
        previous = safe


def test_filter_clamps_and_reports():
    f = SafetyFilter(PROFILE)
    f.reset(np.asarray(PROFILE.home))
    target = np.asarray(PROFILE.home) + 0.01
    target[1] = 10.0  # beyond the shoulder limit
    target[6] = 1.5  # gripper beyond open
    target[13] = 1.0
    safe, report = f(target, DT)
    assert report.clamped == 2 and report.rate_limited + report.accel_limited >= 1 and not report.held
    assert safe[6] <= 1.0 and safe[1] <= UPPER[1]
    safe, report = f(np.full(13, 0.0), DT)
    assert report.held and "shape" in report.reason
    safe2, report = f(["a"] * 14, DT)
    assert report.held
    np.testing.assert_array_equal(safe, safe2)


def test_filter_needs_a_measured_start():
    f = SafetyFilter(PROFILE)
    with pytest.raises(RuntimeError, match="reset"):
        f(np.zeros(14), DT)
    with pytest.raises(ValueError):
        f.reset(np.full(14, np.nan))


def test_watchdog_holds_on_stale_observations_and_overruns():
    layer = SafetyLayer(PROFILE, WatchdogConfig(max_observation_age=0.1, max_inference_time=0.05))
    home = np.asarray(PROFILE.home)
    layer.reset(home)
    moved = home - 0.001  # home has the grippers fully open (1.0)
    safe, report = layer.command(moved, now=10.0, observation_stamp=9.95)
    assert not report.held and np.allclose(safe, moved)
    held, report = layer.command(moved - 0.001, now=10.0, observation_stamp=9.8)
    assert report.held and "stale" in report.reason and np.array_equal(held, safe)
    held, report = layer.command(moved - 0.001, now=10.0, observation_stamp=9.99, inference_time=0.2)
    assert report.held and "overran" in report.reason
    held, report = layer.command(None, now=10.0, observation_stamp=9.99)
    assert report.held and "no action" in report.reason
    held, report = layer.command(moved, now=10.0, observation_stamp=float("nan"))
    assert report.held


def test_estop_latches_until_explicitly_reset():
    layer = SafetyLayer(PROFILE)
    home = np.asarray(PROFILE.home)
    layer.reset(home)
    estop_id = layer.estop("operator pressed the button")
    for _ in range(5):
        safe, report = layer.command(home - 0.01, now=1.0, observation_stamp=1.0)
        assert report.held and "e-stop" in report.reason and np.array_equal(safe, home)
    with pytest.raises(ValueError, match="names"):
        layer.reset_estop("deadbeef")  # a stray or replayed reset does not release it
    assert layer.estopped
    layer.reset_estop(estop_id)
    safe, report = layer.command(home - 0.01, now=1.0, observation_stamp=1.0)
    assert not report.held


def test_profile_validation_and_gripper_mapping():
    assert get_profile("aloha_viperx") is PROFILE
    with pytest.raises(KeyError):
        get_profile("franka")
    g = PROFILE.gripper
    assert g.to_joint(0.0) == pytest.approx(g.closed) and g.to_joint(1.0) == pytest.approx(g.open)
    assert g.to_normalised(g.to_joint(0.37)) == pytest.approx(0.37)
    with pytest.raises(ValueError, match="outside the joint limits"):
        RobotProfile(**{**PROFILE.__dict__, "home": (5.0,) * 14})


@settings(max_examples=40, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1), scale=st.floats(0.01, 50.0))
def test_no_stream_changes_speed_faster_than_the_acceleration_limits(seed, scale):
    """A chunk switch without RTC used to start at full speed in one tick; now each step's change of speed is
    bounded by max_acceleration * dt (max_deceleration when slowing down)."""
    rng = np.random.default_rng(seed)
    f = SafetyFilter(PROFILE)
    accel = f.limits.max_acceleration
    f.reset(rng.uniform(LOWER, UPPER, size=(STREAMS_PER_EXAMPLE, 14)))
    positions = [f.hold()]
    for _ in range(STEPS):
        command = rng.uniform(LOWER - scale, UPPER + scale, size=(STREAMS_PER_EXAMPLE, 14))
        positions.append(f(command, DT)[0])
    velocity = np.diff(np.stack(positions), axis=0) / DT
    change = np.abs(np.diff(np.concatenate([np.zeros((1, *velocity.shape[1:])), velocity]), axis=0))
    assert (change <= accel * DT * (1 + 1e-9) + 1e-9).all()


def _step_response(limits, distance, steps=200):
    f = SafetyFilter(PROFILE, limits)
    home = np.asarray(PROFILE.home)
    f.reset(home)
    target = home.copy()
    target[1] += distance
    out = [home[1]] + [f(target, DT)[0][1] for _ in range(steps)]
    return np.asarray(out) - home[1]


@pytest.mark.parametrize("jerk", [np.inf, 2000.0, 500.0])
def test_a_jump_in_the_target_is_reached_without_overshoot_within_the_limits(jerk):
    from hardware.limits import JointLimits, profile_limits

    base = profile_limits(PROFILE)
    limits = JointLimits(base.lower, base.upper, base.max_velocity, np.full(14, 40.0), np.full(14, 40.0),
                         np.full(14, jerk))
    x = _step_response(limits, 0.5)
    v = np.diff(x) / DT
    a = np.diff(np.r_[0.0, v]) / DT
    assert x.max() <= 0.5 + 1e-12 and x[-1] == pytest.approx(0.5)  # it stops at the target, not past it
    assert np.abs(v).max() <= np.pi + 1e-9 and np.abs(a).max() <= 40.0 + 1e-9
    if np.isfinite(jerk):
        # A move short enough not to reach the speed limit keeps the jerk limit too (a stop at the speed
        # or position limit may need more: they take precedence).
        x = _step_response(limits, 0.05)
        a = np.diff(np.r_[0.0, np.diff(x) / DT]) / DT
        assert np.abs(np.diff(np.r_[0.0, a])).max() / DT <= jerk * (1 + 1e-6)
        assert x.max() <= 0.05 + 1e-12 and x[-1] == pytest.approx(0.05)


URDF = """<robot name="aloha">
  <joint name="left_waist" type="revolute"><limit lower="-1.0" upper="1.0" velocity="1.5" effort="10"/></joint>
  <joint name="left_gripper" type="prismatic"><limit lower="0.0" upper="0.5" velocity="2.0" effort="1"/></joint>
  <joint name="right_wrist_rotate" type="continuous"><limit velocity="2.5" effort="1"/></joint>
  <joint name="unrelated" type="fixed"/>
</robot>"""


def test_limits_come_from_the_urdf_then_joint_limits_parameters_then_the_profile():
    from hardware.limits import limits_of

    params = {"taco_policy": {"ros__parameters": {"joint_limits": {
        "left_waist": {"has_acceleration_limits": True, "max_acceleration": 10.0, "has_jerk_limits": True,
                       "max_jerk": 300.0, "has_velocity_limits": True, "max_velocity": 1.2},
        "left_shoulder": {"has_acceleration_limits": False, "max_acceleration": 5.0},
        "left_elbow": {"max_acceleration": 5.0},  # a value without its flag counts for nothing
        "right_waist": {"has_deceleration_limits": True, "max_deceleration": 30.0}}}}}
    lim = limits_of(PROFILE, URDF, params)
    i = {name: k for k, name in enumerate(PROFILE.joint_names)}
    assert (lim.lower[0], lim.upper[0]) == (-1.0, 1.0)
    assert lim.max_velocity[0] == 1.2 and lim.max_acceleration[0] == 10.0 and lim.max_jerk[0] == 300.0
    assert lim.max_deceleration[0] == 10.0  # no deceleration limit: the acceleration one (as ros2_control)
    assert lim.max_acceleration[i["left_shoulder"]] == np.inf  # removed by its flag
    assert lim.max_acceleration[i["left_elbow"]] == PROFILE.max_acceleration[2]
    assert lim.max_deceleration[i["right_waist"]] == 30.0
    assert lim.max_velocity[i["right_wrist_rotate"]] == 2.5
    assert (lim.lower[i["right_wrist_rotate"]], lim.upper[i["right_wrist_rotate"]]) == (LOWER[13 - 1], UPPER[12])
    g = i["left_gripper"]  # the gripper joint's metres become normalised opening, within the profile's range
    assert lim.max_velocity[g] == pytest.approx(2.0 / (PROFILE.gripper.open - PROFILE.gripper.closed))
    assert 0.0 <= lim.lower[g] < lim.upper[g] <= 1.0
    assert lim.sources[0] == "joint_limits" and lim.sources[i["right_elbow"]] == "profile"
    with pytest.raises(ValueError, match="names none of the profile's joints"):
        limits_of(PROFILE, '<robot name="x"><joint name="j1" type="revolute"><limit lower="0" upper="1" '
                           'velocity="1"/></joint></robot>')
    with pytest.raises(ValueError, match="not a URDF"):
        limits_of(PROFILE, "<robot")
    f = SafetyFilter(PROFILE, lim)
    f.reset(np.asarray(PROFILE.home))
    safe, _ = f(np.asarray(PROFILE.home) + 5.0, DT)
    assert safe[0] <= 1.0 and abs(safe[0] - PROFILE.home[0]) <= 10.0 * DT * DT + 1e-12


def test_a_lower_speed_scale_is_reached_at_the_deceleration_limits_and_then_holds():
    """A failure monitor's "slow" action: the speed limit drops to half, the stream slows down to it no
    faster than max_deceleration allows (no jump in speed), then never exceeds it."""
    f = SafetyFilter(PROFILE)
    f.reset(LOWER + 0.01)
    positions = [f.hold()]
    for _ in range(10):  # up to full speed toward the far end of every range
        positions.append(f(UPPER, DT)[0])
    moving = np.abs(f.velocity) > 0.99 * VMAX
    assert moving.sum() >= 3, np.abs(f.velocity) / VMAX
    f.speed_scale = 0.5
    for _ in range(20):
        positions.append(f(UPPER, DT)[0])
    speed = np.abs(np.diff(np.stack(positions), axis=0) / DT)[:, moving]
    slowing = np.diff(speed[9:], axis=0)
    decel = f.limits.max_deceleration[moving]
    assert (slowing >= -decel * DT * (1 + 1e-9) - 1e-9).all()
    assert (slowing < -0.5 * decel * DT).any()  # it did slow down, at the limit's pace
    np.testing.assert_allclose(speed[-5:], np.broadcast_to(0.5 * VMAX[moving], (5, moving.sum())), rtol=1e-9)
