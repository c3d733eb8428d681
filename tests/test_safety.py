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
    assert report.clamped == 2 and report.rate_limited >= 1 and not report.held
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
    layer.estop("operator pressed the button")
    for _ in range(5):
        safe, report = layer.command(home - 0.01, now=1.0, observation_stamp=1.0)
        assert report.held and "e-stop" in report.reason and np.array_equal(safe, home)
    layer.reset_estop()
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
