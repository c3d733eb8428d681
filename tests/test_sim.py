"""Every registered task: observation spec, finite values, same seed same trajectory, the clean expert
succeeds; bad actions are errors naming the field."""

import numpy as np
import pytest


from hardware.interface import CameraConfig, Env
from policies import SpecError
from sim.env import AlohaSimEnv
from sim.experts import MODES, ExpertConfig, ScriptedExpert
from sim.tasks import TASKS

TASK_NAMES = sorted(TASKS)


@pytest.fixture(scope="module")
def envs():
    made = {}
    yield lambda name: made.setdefault(name, AlohaSimEnv(name, stop_on_success=False))
    for env in made.values():
        env.close()


@pytest.mark.parametrize("task", TASK_NAMES)
def test_observation_spec_and_finite_values(envs, task):
    env = envs(task)
    assert isinstance(env, Env)
    obs = env.reset(seed=3)
    (cam,) = env.spec.cameras
    image = obs.images[cam.name]
    assert image.shape == (cam.height, cam.width, 3) and image.dtype == np.uint8
    assert image.std() > 5, "the camera sees a scene, not a blank frame"
    assert obs.state.shape == (14,) and obs.state.dtype == np.float32 and np.isfinite(obs.state).all()
    assert obs.task == TASKS[task].instruction and obs.stamp == 0.0
    obs, reward, done, info = env.step(obs.state.astype(np.float64))
    assert np.isfinite(obs.state).all() and reward == info["stage"] and not done
    assert obs.stamp == pytest.approx(1 / env.spec.control_hz)


@pytest.mark.parametrize("task", TASK_NAMES)
def test_same_seed_same_trajectory_and_seeds_move_objects(envs, task):
    env = envs(task)
    rng = np.random.default_rng(0)
    actions = env.reset(1).state + rng.normal(0, 0.05, (20, 14)).astype(np.float32)

    def rollout(seed):
        obs = env.reset(seed)
        states, frames = [], []
        for a in actions:
            obs, *_ = env.step(a)
            states.append(obs.state)
            frames.append(obs.images["cam_high"])
        return np.array(states), np.array(frames), env.object_poses.copy()

    s1, f1, p1 = rollout(5)
    s2, f2, p2 = rollout(5)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(f1, f2)
    _, _, p3 = rollout(6)
    assert np.abs(p1 - p3).max() > 1e-3


@pytest.mark.parametrize("task", TASK_NAMES)
def test_clean_expert_succeeds(task):
    env = AlohaSimEnv(task, cameras=(), stop_on_success=False)
    expert = ScriptedExpert(task, ExpertConfig(action_noise=0.0))
    try:
        for seed in (0, 1):
            env.reset(seed)
            actions, mode = expert.actions(env.object_poses, seed, mode="clean")
            assert mode == "clean"
            stages = [env.step(a)[3]["stage"] for a in actions]
            assert max(stages) == TASKS[task].max_reward, f"seed {seed}: best stage {max(stages)}"
            assert stages[0] == 0, "an episode must not start solved"
    finally:
        env.close()


def test_expert_modes_differ_and_noise_is_smooth():
    env = AlohaSimEnv("transfer_cube", cameras=())
    env.reset(0)
    expert = ScriptedExpert("transfer_cube", ExpertConfig(action_noise=0.0))
    clean, _ = expert.actions(env.object_poses, 0, "clean")
    for mode in MODES[1:]:
        other, got = expert.actions(env.object_poses, 0, mode)
        assert got == mode
        n = min(len(clean), len(other))
        assert np.abs(other[:n] - clean[:n]).max() > 0.05, mode
    noisy, _ = ScriptedExpert("transfer_cube", ExpertConfig(action_noise=0.02)).actions(env.object_poses, 0, "clean")
    diff = noisy - clean
    assert 0.005 < diff[:, :6].std() < 0.05 and (diff[:, [6, 13]] == 0).all()
    # Smoothed: consecutive noise values are strongly correlated.
    assert np.corrcoef(diff[1:, 0], diff[:-1, 0])[0, 1] > 0.8
    env.close()


def test_mode_mix_follows_the_weights():
    cfg = ExpertConfig(mode_weights={"clean": 3, "regrasp": 1})
    draws = [cfg.draw_mode(np.random.default_rng(i)) for i in range(400)]
    assert set(draws) == {"clean", "regrasp"}
    assert 0.65 < draws.count("clean") / len(draws) < 0.85
    with pytest.raises(ValueError, match="unknown modes"):
        ExpertConfig(mode_weights={"sloppy": 1})


def test_off_task_modes_do_the_wrong_thing_in_the_transfer_scene():
    """The pre-training corpus's wrong behaviour: none of it completes the handover."""
    env = AlohaSimEnv("transfer_cube", cameras=(), stop_on_success=False)
    expert = ScriptedExpert("transfer_cube", ExpertConfig(action_noise=0.0))
    try:
        for mode, most in (("no_handover", 2), ("early_release", 2), ("bar_lift", 1)):
            env.reset(0)
            actions, got = expert.actions(env.object_poses, 0, mode)
            stages = [env.step(a)[3]["stage"] for a in actions]
            assert got == mode and max(stages) <= most, (mode, max(stages))
            if mode != "bar_lift":
                assert max(stages) == 2, f"{mode}: the right arm lifts the cube first"
    finally:
        env.close()
    with pytest.raises(ValueError, match="transfer_cube mode"):
        ScriptedExpert("lift_bar").plan(np.zeros(7) + [0, 0.5, 0.05, 1, 0, 0, 0], 0, "no_handover")


def test_mode_mix_from_text():
    cfg = ExpertConfig.from_mix("clean:2, no_handover:1,bar_lift", action_noise=0.0)
    assert cfg.mode_weights == {"clean": 2.0, "no_handover": 1.0, "bar_lift": 1.0} and cfg.action_noise == 0.0
    with pytest.raises(ValueError, match="NAME:WEIGHT"):
        ExpertConfig.from_mix("clean:lots")
    with pytest.raises(ValueError, match="unknown modes"):
        ExpertConfig.from_mix("clean,sloppy")


@pytest.mark.parametrize("action,field", [
    (np.zeros(13), "action"),
    (np.zeros((2, 14)), "action"),
    (np.array([0.0] * 5 + [np.nan] + [0.0] * 8), "action[5]"),
    (np.array([0.0] * 13 + [np.inf]), "action[13]"),
    (["a"] * 14, "action"),
    (None, "action"),
])
def test_bad_action_is_an_error_naming_it(envs, action, field):
    env = envs("transfer_cube")
    env.reset(0)
    with pytest.raises(SpecError) as info:
        env.step(action)
    assert info.value.field == field


def test_cameras_are_configurable():
    env = AlohaSimEnv("lift_bar", cameras=(CameraConfig("cam_high", 48, 64), CameraConfig("cam_left_wrist", 32, 32)))
    obs = env.reset(0)
    assert obs.images["cam_high"].shape == (48, 64, 3) and obs.images["cam_left_wrist"].shape == (32, 32, 3)
    env.close()
    with pytest.raises(ValueError, match="unknown camera"):
        AlohaSimEnv("lift_bar", cameras=(CameraConfig("cam_top", 8, 8),))


def test_images_render_on_read_and_expire_when_the_env_steps_on():
    env = AlohaSimEnv("transfer_cube")
    obs = env.reset(0)
    assert list(obs.images) == ["cam_high"] and len(obs.images) == 1
    first = obs.images["cam_high"]
    assert obs.images["cam_high"] is first  # rendered once, cached
    later, *_ = env.step(obs.state)
    with pytest.raises(RuntimeError, match="stepped on"):
        later_unread = env.reset(1)  # a new episode also expires the previous step's images
        later.images["cam_high"]
    assert later_unread.images["cam_high"].shape == (96, 128, 3)
    with pytest.raises(KeyError):
        obs.images["cam_low"]
    env.close()


# -- scenes the policy never saw (sim.perturb) ----------------------------------------------------------------

PERTURB_CAMERA = (CameraConfig("cam_high", 48, 64),)


def _frame(kinds, seed=3, task="transfer_cube"):
    with AlohaSimEnv(task, cameras=PERTURB_CAMERA, perturbations=kinds) as env:
        obs = env.reset(seed)
        return obs.images["cam_high"].astype(np.float64), env.object_poses.copy(), obs.state


@pytest.mark.parametrize("kind", ["lighting", "camera", "distractor", "table"])
def test_each_visual_perturbation_changes_the_frame_not_the_start(kind):
    plain, objects, state = _frame([])
    frame, perturbed_objects, perturbed_state = _frame([kind])
    assert (np.abs(frame - plain).max(axis=-1) > 30).sum() >= 4, kind  # the camera sees another scene
    np.testing.assert_array_equal(perturbed_objects, objects)
    np.testing.assert_array_equal(perturbed_state, state)
    again, _, _ = _frame([kind])
    np.testing.assert_array_equal(again, frame)  # the same seed, the same perturbed scene
    if kind in ("camera", "distractor"):  # drawn per episode
        assert np.abs(_frame([kind], seed=4)[0] - _frame([], seed=4)[0] - (frame - plain)).max() > 30


def test_lighting_darkens_and_the_table_turns_blue():
    plain = _frame([])[0]
    assert _frame(["lighting:0.3"])[0].mean() < 0.6 * plain.mean()
    blue = _frame(["table:1"])[0]
    assert (blue[..., 2] - blue[..., 0]).mean() > (plain[..., 2] - plain[..., 0]).mean() + 20


@pytest.mark.parametrize("task", ["transfer_cube", "insertion"])
def test_object_range_starts_every_object_outside_its_training_box(task):
    from sim.tasks import get_task

    boxes = get_task(task).spawn
    for seed in range(20):
        objects = _frame(["object_range:0.05"], seed=seed, task=task)[1]
        for i, (low, high) in enumerate(boxes):
            xy = objects[7 * i: 7 * i + 2]
            inside = np.all((xy >= np.asarray(low)[:2]) & (xy <= np.asarray(high)[:2]))
            near = np.all((xy >= np.asarray(low)[:2] - 0.05) & (xy <= np.asarray(high)[:2] + 0.05))
            assert not inside and near, (seed, i, xy)


def test_bad_perturbations_are_refused_naming_them():
    from sim.evaluate import EvalConfig
    from sim.perturb import parse_all

    for text, message in [("fog", "unknown kind 'fog'"), ("lighting:x", "must be a number"),
                          ("table:2", r"table's level must be in \[0, 1\]"),
                          ("distractor:1.5", "a number of objects")]:
        with pytest.raises(ValueError, match=message):
            parse_all([text])
    with pytest.raises(ValueError, match="one of each kind"):
        parse_all(["lighting:0.5", "lighting:2"])
    config = EvalConfig(policy="scripted", tasks=("transfer_cube",), episodes=1, scene_perturb=("lighting",))
    assert config.scene_perturb == ("lighting:0.35",)
    assert config.fingerprint() != EvalConfig(policy="scripted", tasks=("transfer_cube",), episodes=1).fingerprint()
