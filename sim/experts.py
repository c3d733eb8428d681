"""Scripted experts with several behaviour modes, as a human teleoperator's data would hold.

An expert plans end-effector waypoints for both arms from the task's object poses (privileged
state), drives the mocap version of the scene with them, and records the joint positions the arms
reach: that joint trajectory is what it then commands in the joint-controlled environment (ACT's
recipe). Modes change the waypoints: where and from how high the arm approaches, pauses, detours,
and grasps that close too early and are retried. Smoothed action noise is added on top.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sim.assets import CONTROL_HZ, PHYSICS_DT, START_ARM_POSE, mujoco, unnormalize_gripper
from sim.tasks import Task, get_task

# Ways of doing the task, each of which succeeds (the demonstrations a policy is fine-tuned on).
TASK_MODES = ("clean", "high_approach", "hesitant", "detour", "regrasp")
# Behaviour that is wrong for transfer_cube, for broad mixed-quality pre-training corpora (TACO's regime):
# `no_handover` carries the cube to the meeting point and keeps it there (the left arm never comes),
# `early_release` opens the right gripper before the left one has closed (the cube drops), and `bar_lift`
# is lift_bar's motion in the transfer scene (both arms grasp either side of the cube and lift).
OFF_TASK_MODES = ("no_handover", "early_release", "bar_lift")
MODES = TASK_MODES + OFF_TASK_MODES
# Extra control steps after the last waypoint, so that the final state settles.
SETTLE_STEPS = 10
# Noise scale while the operator works precisely (see Plan.precise).
PRECISE_NOISE_SCALE = 0.2


def quat_mul(a, b) -> np.ndarray:
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return np.array([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2])


def _rotate(q, v) -> np.ndarray:
    """Rotates vector v by unit quaternion q (w, x, y, z)."""
    w, qv = q[0], np.asarray(q[1:])
    t = 2 * np.cross(qv, v)
    return np.asarray(v) + w * t + np.cross(qv, t)


def quat_axis(axis, degrees: float) -> np.ndarray:
    half = np.deg2rad(degrees) / 2
    return np.concatenate([[np.cos(half)], np.sin(half) * np.asarray(axis, np.float64)])


@dataclass
class Waypoint:
    # Control step at which the end effector is at this pose.
    t: int
    # Gripper-link position (m), world frame.
    xyz: np.ndarray
    # Gripper-link orientation (w, x, y, z).
    quat: np.ndarray
    # Normalised gripper command: 0 closed, 1 open.
    gripper: float


@dataclass
class Plan:
    """Waypoints for the left and right arm, plus the expert mode that produced them."""

    left: list[Waypoint]
    right: list[Waypoint]
    mode: str
    # [start, end) control-step windows in which the operator works precisely (noise scaled down),
    # e.g. grasping a small part or inserting it.
    precise: list[tuple[int, int]] = field(default_factory=list)

    @property
    def length(self) -> int:
        return max(self.left[-1].t, self.right[-1].t) + SETTLE_STEPS

    def at(self, t: int) -> tuple[tuple, tuple]:
        return _interpolate(self.left, t), _interpolate(self.right, t)

    def shift_after(self, t0: int, steps: int) -> None:
        """Inserts a pause of `steps` at step t0: both arms hold their pose, everything after happens later."""
        for traj in (self.left, self.right):
            held = _interpolate(traj, t0)
            later = [w for w in traj if w.t > t0]
            for w in later:
                w.t += steps
            if later:
                idx = traj.index(later[0])
                traj[idx:idx] = [Waypoint(t0, *held), Waypoint(t0 + steps, *held)]
        self.precise = [(a + steps if a > t0 else a, b + steps if b > t0 else b) for a, b in self.precise]


def _interpolate(traj: list[Waypoint], t: int):
    if t <= traj[0].t:
        w = traj[0]
        return w.xyz, w.quat, w.gripper
    for a, b in zip(traj, traj[1:]):
        if a.t <= t <= b.t:
            f = 0.0 if b.t == a.t else (t - a.t) / (b.t - a.t)
            bq = b.quat if np.dot(a.quat, b.quat) >= 0 else -b.quat  # the short way round
            quat = (1 - f) * a.quat + f * bq
            return (1 - f) * a.xyz + f * b.xyz, quat / np.linalg.norm(quat), (1 - f) * a.gripper + f * b.gripper
    w = traj[-1]
    return w.xyz, w.quat, w.gripper


@dataclass(frozen=True)
class ExpertConfig:
    """How an expert draws its behaviour for each episode."""

    # Mode -> relative weight; the mode of an episode is drawn from its seed.
    mode_weights: dict = field(default_factory=lambda: {"clean": 0.4, "high_approach": 0.15, "hesitant": 0.15,
                                                        "detour": 0.15, "regrasp": 0.15})
    # Std (rad) of the smoothed noise added to the arm joint commands; 0 for none.
    action_noise: float = 0.01
    # Correlation time (control steps) of that noise: teleoperators drift, they do not jitter.
    noise_steps: int = 10

    def __post_init__(self):
        unknown = set(self.mode_weights) - set(MODES)
        if unknown:
            raise ValueError(f"mode_weights: unknown modes {sorted(unknown)} (known: {', '.join(MODES)})")
        if not self.mode_weights or min(self.mode_weights.values()) < 0 or sum(self.mode_weights.values()) <= 0:
            raise ValueError("mode_weights: need non-negative weights with a positive sum")
        if self.action_noise < 0:
            raise ValueError("action_noise: must be >= 0")

    @classmethod
    def from_mix(cls, text: str, **kwargs) -> ExpertConfig:
        """An expert drawing its modes from `text`: "clean:2,no_handover:1" (weights) or "a,b" (equal)."""
        weights = {}
        for item in text.split(","):
            name, _, weight = item.strip().partition(":")
            try:
                weights[name] = float(weight) if weight else 1.0
            except ValueError:
                raise ValueError(f"mode mix: {item!r} is not NAME or NAME:WEIGHT") from None
        return cls(mode_weights=weights, **kwargs)

    def draw_mode(self, rng: np.random.Generator) -> str:
        names = list(self.mode_weights)
        p = np.array([self.mode_weights[n] for n in names], np.float64)
        return names[rng.choice(len(names), p=p / p.sum())]


# --------------------------------------------------------------------------------------------------
# Plans per task, in mocap coordinates. `home` is each mocap's start pose (consistent with the arm at its
# start pose, so nothing jumps at t=0); targets use ACT's frames (identity orientation at home, pitched
# +-60 degrees to grasp); `objects` are the task's object poses.

def _grasp(xyz, quat, t_approach, t_down, t_close, height, depth, rng, mode) -> list[Waypoint]:
    """Approach above `xyz`, go down, close; with the approach and grasp variations of `mode`."""
    above = xyz + np.array([0, 0, height])
    out = []
    if mode == "high_approach":
        side = rng.choice([-1.0, 1.0]) * rng.uniform(0.04, 0.07)
        out.append(Waypoint(t_approach, xyz + np.array([0, side, height + rng.uniform(0.08, 0.14)]), quat, 1.0))
        out.append(Waypoint(t_down - 10, above, quat, 1.0))
    else:
        out.append(Waypoint(t_approach, above, quat, 1.0))
    low = xyz + np.array([0, 0, depth])
    if mode == "regrasp":
        # Closes too early, a few cm above the object, sees the miss, opens, and grasps properly.
        early = xyz + np.array([0, 0, depth + rng.uniform(0.035, 0.05)])
        out += [Waypoint(t_down, early, quat, 1.0), Waypoint(t_close, early, quat, 0.0),
                Waypoint(t_close + 20, early + np.array([0, 0, 0.02]), quat, 1.0)]
        return out, 60
    out += [Waypoint(t_down, low, quat, 1.0), Waypoint(t_close, low, quat, 0.0)]
    return out, 0


def _finish_regrasp(traj, extra, xyz, quat, depth, t_close) -> list[Waypoint]:
    """After a missed grasp: go down again and close, `extra` steps later than planned."""
    low = xyz + np.array([0, 0, depth])
    traj += [Waypoint(t_close + 45, low, quat, 1.0), Waypoint(t_close + extra, low, quat, 0.0)]
    return traj


def plan_transfer_cube(home, objects, rng, mode) -> Plan:
    (lxyz, lquat), (rxyz, rquat) = home
    box = objects[:3]
    if mode == "bar_lift":
        return _bar_lift(home, box, rng, mode)
    pick = quat_axis([0, 1, 0], -60)
    meet_left = quat_axis([1, 0, 0], 90)
    meet = np.array([0.0, 0.5, 0.25])
    right, extra = _grasp(box, pick, 90, 130, 170, 0.08, -0.015, rng, mode)
    right = [Waypoint(0, rxyz, rquat, 0.0)] + right
    if mode == "regrasp":
        right = _finish_regrasp(right, extra, box, pick, -0.015, 170)
    t = 170 + extra
    if mode == "detour":
        mid = (box + meet) / 2 + np.array([0, rng.choice([-1, 1]) * rng.uniform(0.06, 0.1), rng.uniform(0.06, 0.1)])
        right.append(Waypoint(t + 25, mid, pick, 0.0))
        t += 30
    right += [Waypoint(t + 30, meet + np.array([0.05, 0, 0]), pick, 0.0), Waypoint(t + 50, meet, pick, 0.0),
              Waypoint(t + 140, meet, pick, 1.0), Waypoint(t + 190, meet + np.array([0.1, 0, 0]), pick, 1.0),
              Waypoint(t + 230, meet + np.array([0.1, 0, 0]), pick, 1.0)]
    if mode == "no_handover":
        right[-3:] = [Waypoint(t + 230, meet, pick, 0.0)]
    elif mode == "early_release":
        # Opens on the way, 10 cm short of the meeting point, well before the left gripper is there.
        away = meet + np.array([0.1, 0, 0])
        right[-4:] = [Waypoint(t + 40, away, pick, 0.0), Waypoint(t + 55, away, pick, 1.0),
                      Waypoint(t + 120, away + np.array([0.05, 0, 0.05]), pick, 1.0),
                      Waypoint(t + 230, away + np.array([0.05, 0, 0.05]), pick, 1.0)]
    shift = t - 170
    if mode == "no_handover":
        return Plan([Waypoint(0, lxyz, lquat, 0.0), Waypoint(t + 230, lxyz, lquat, 0.0)], right, mode,
                    precise=[(110, 10**6)])
    left = [Waypoint(0, lxyz, lquat, 0.0),
            Waypoint(100 + shift, meet + np.array([-0.1, 0, -0.02]), meet_left, 1.0),
            Waypoint(260 + shift, meet + np.array([0.02, 0, -0.02]), meet_left, 1.0),
            Waypoint(310 + shift, meet + np.array([0.02, 0, -0.02]), meet_left, 0.0),
            Waypoint(360 + shift, meet + np.array([-0.1, 0, -0.02]), np.array([1.0, 0, 0, 0]), 0.0),
            Waypoint(400 + shift, meet + np.array([-0.1, 0, -0.02]), np.array([1.0, 0, 0, 0]), 0.0)]
    # Steady hands from the grasp on: closing on the cube, carrying it and handing it over all fail when
    # perturbed by more than ~0.01 rad; only the approach is free motion.
    return Plan(left, right, mode, precise=[(110, 10**6)])


def _bar_lift(home, box, rng, mode) -> Plan:
    """lift_bar's motion around the transfer scene's cube: the other task's behaviour in this scene."""
    grip = 0.085
    right, left, t, (pick_right, pick_left) = _both_grasp(home, box + np.array([grip, 0, 0]),
                                                          box - np.array([grip, 0, 0]), (100, 150, 190), -0.01,
                                                          rng, "clean")
    lift = np.array([0, 0, 0.2])
    right += [Waypoint(t + 80, box + np.array([grip, 0, 0]) + lift, pick_right, 0.0),
              Waypoint(t + 130, box + np.array([grip, 0, 0]) + lift, pick_right, 0.0)]
    left += [Waypoint(t + 80, box - np.array([grip, 0, 0]) + lift, pick_left, 0.0),
             Waypoint(t + 130, box - np.array([grip, 0, 0]) + lift, pick_left, 0.0)]
    return Plan(left, right, mode, precise=[(130, 10**6)])


def _both_grasp(home, right_xyz, left_xyz, times, depth, rng, mode):
    """Both arms grasp at once (insertion, lift_bar): each approaches, descends and closes, with the same mode.

    Returns (right, left, t, picks): the waypoint lists, the step at which both hold their object, and the
    two grasp orientations. A hesitant or regrasping operator is so with both hands.
    """
    (lxyz, lquat), (rxyz, rquat) = home
    picks = quat_axis([0, 1, 0], -60), quat_axis([0, 1, 0], 60)
    t_approach, t_down, t_close = times
    seed = rng.integers(2**31)
    right, extra_r = _grasp(right_xyz, picks[0], t_approach, t_down, t_close, 0.08, depth,
                            np.random.default_rng(seed), mode)
    left, extra_l = _grasp(left_xyz, picks[1], t_approach, t_down, t_close, 0.08, depth,
                           np.random.default_rng(seed + 1), mode)
    right, left = [Waypoint(0, rxyz, rquat, 0.0)] + right, [Waypoint(0, lxyz, lquat, 0.0)] + left
    if mode == "regrasp":
        right = _finish_regrasp(right, extra_r, right_xyz, picks[0], depth, t_close)
        left = _finish_regrasp(left, extra_l, left_xyz, picks[1], depth, t_close)
    return right, left, t_close + max(extra_r, extra_l), picks


def plan_insertion(home, objects, rng, mode) -> Plan:
    peg, socket = objects[:3], objects[7:10]
    meet = np.array([0.0, 0.5, 0.15])
    lift_right = 0.00715
    right, left, t, (pick_right, pick_left) = _both_grasp(home, peg, socket, (120, 170, 220), -0.03, rng, mode)
    if mode == "detour":
        up = rng.uniform(0.06, 0.1)
        right.append(Waypoint(t + 30, (peg + meet) / 2 + np.array([0, -0.06, up]), pick_right, 0.0))
        left.append(Waypoint(t + 30, (socket + meet) / 2 + np.array([0, -0.06, up]), pick_left, 0.0))
        t += 35
    right += [Waypoint(t + 65, meet + np.array([0.1, 0, lift_right]), pick_right, 0.0),
              Waypoint(t + 120, meet + np.array([0.05, 0, lift_right]), pick_right, 0.0),
              Waypoint(t + 180, meet + np.array([0.05, 0, lift_right]), pick_right, 0.0)]
    left += [Waypoint(t + 65, meet + np.array([-0.1, 0, 0]), pick_left, 0.0),
             Waypoint(t + 120, meet + np.array([-0.05, 0, 0]), pick_left, 0.0),
             Waypoint(t + 180, meet + np.array([-0.05, 0, 0]), pick_left, 0.0)]
    # Grasping the thin peg and socket, and lining them up, take a steady hand.
    return Plan(left, right, mode, precise=[(150, t + 10), (t + 40, 10**6)])


def plan_lift_bar(home, objects, rng, mode) -> Plan:
    bar = objects[:3]
    grip = 0.085  # grasp points: this far from the bar centre along x
    right_end, left_end = bar + np.array([grip, 0, 0]), bar - np.array([grip, 0, 0])
    right, left, t, (pick_right, pick_left) = _both_grasp(home, right_end, left_end, (100, 150, 190), -0.01, rng,
                                                          mode)
    lift = np.array([0, 0, 0.2])
    if mode == "detour":
        sway = np.array([0, rng.choice([-1, 1]) * rng.uniform(0.05, 0.08), 0.1])
        right.append(Waypoint(t + 40, right_end + sway, pick_right, 0.0))
        left.append(Waypoint(t + 40, left_end + sway, pick_left, 0.0))
        t += 40
    right += [Waypoint(t + 80, right_end + lift, pick_right, 0.0), Waypoint(t + 130, right_end + lift, pick_right, 0.0)]
    left += [Waypoint(t + 80, left_end + lift, pick_left, 0.0), Waypoint(t + 130, left_end + lift, pick_left, 0.0)]
    # Both hands hold one rigid bar from the grasp on: neither may drift away from the other.
    return Plan(left, right, mode, precise=[(130, 10**6)])


PLANNERS = {"transfer_cube": plan_transfer_cube, "insertion": plan_insertion, "lift_bar": plan_lift_bar}


class ScriptedExpert:
    """Plans and executes one task's expert; `plan_episode` is called at reset, `actions` replayed by step."""

    def __init__(self, task: str | Task, config: ExpertConfig | None = None):
        self.task = get_task(task) if isinstance(task, str) else task
        if self.task.name not in PLANNERS:
            raise KeyError(f"task {self.task.name!r} has no scripted expert")
        self.config = config or ExpertConfig()
        self.model = self.task.build_model(end_effector=True)
        self.data = mujoco.MjData(self.model)
        self.substeps = round(1.0 / (CONTROL_HZ * PHYSICS_DT))
        self._qpos_index, self._object_qpos = self.task.qpos_indices(self.model)
        self._links = [self.model.body(f"vx300s_{side}/gripper_link").id for side in ("left", "right")]
        # float[T] of the last `actions` call: 0 in free motion, 1 inside the plan's precise windows.
        self.precision: np.ndarray | None = None

    def _reset(self, object_poses: np.ndarray):
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[:16] = START_ARM_POSE
        self.data.qpos[self._object_qpos] = object_poses
        mujoco.mj_forward(self.model, self.data)
        # Each mocap starts at the pose the weld already holds the gripper in: gripper = mocap * relpose, so
        # mocap = gripper * relpose^-1. (ACT started the mocaps at the gripper's position with identity
        # orientation, which the 13.5 cm weld offset turned into a ~0.85 rad jump of the arm in the first
        # steps: 12 rad/s in the recorded actions.)
        home = []
        for arm, link in enumerate(self._links):
            rel_pos, rel_quat = self.model.eq_data[arm, 3:6], self.model.eq_data[arm, 6:10]
            quat = quat_mul(self.data.xquat[link], rel_quat * np.array([1.0, -1.0, -1.0, -1.0]))
            home.append((self.data.xpos[link] - _rotate(quat, rel_pos), quat / np.linalg.norm(quat)))
        for arm, (xyz, quat) in enumerate(home):
            self.data.mocap_pos[arm], self.data.mocap_quat[arm] = xyz, quat
        closed = unnormalize_gripper(0.0)
        self.data.ctrl[:] = [closed, -closed, closed, -closed]
        return home

    def plan(self, object_poses: np.ndarray, seed: int, mode: str | None = None) -> Plan:
        """The waypoints for an episode; the mode is drawn from `seed` unless given."""
        rng = np.random.default_rng([seed, 7])
        mode = mode or self.config.draw_mode(rng)
        if mode not in MODES:
            raise ValueError(f"mode: unknown {mode!r} (known: {', '.join(MODES)})")
        if mode in OFF_TASK_MODES and self.task.name != "transfer_cube":
            raise ValueError(f"mode: {mode!r} is a transfer_cube mode; {self.task.name} has {', '.join(TASK_MODES)}")
        home = self._reset(object_poses)
        plan = PLANNERS[self.task.name](home, np.asarray(object_poses), rng, mode)
        if mode == "hesitant":
            for _ in range(rng.integers(1, 4)):
                plan.shift_after(int(rng.integers(60, plan.length - 60)), int(rng.integers(15, 41)))
        return plan

    def actions(self, object_poses: np.ndarray, seed: int, mode: str | None = None) -> tuple[np.ndarray, str]:
        """float[T, 14] joint-space actions for an episode, and its mode.

        Runs the plan on the mocap scene and records, each control step, the arm joint positions
        reached and the gripper command; adds the configured smoothed noise to the arm joints.
        """
        plan = self.plan(object_poses, seed, mode)
        self._reset(object_poses)
        out = np.empty((plan.length, 14))
        for t in range(plan.length):
            (lxyz, lquat, lg), (rxyz, rquat, rg) = plan.at(t)
            self.data.mocap_pos[0], self.data.mocap_quat[0] = lxyz, lquat
            self.data.mocap_pos[1], self.data.mocap_quat[1] = rxyz, rquat
            lf, rf = unnormalize_gripper(lg), unnormalize_gripper(rg)
            self.data.ctrl[:] = [lf, -lf, rf, -rf]
            mujoco.mj_step(self.model, self.data, nstep=self.substeps)
            q = self.data.qpos[self._qpos_index]
            out[t, 0:6], out[t, 7:13] = q[0:6], q[7:13]
            out[t, 6], out[t, 13] = lg, rg
        # Kept for whoever perturbs this episode's execution (DART recording), which calms down here too.
        self.precision = self._precision(plan)
        if self.config.action_noise > 0:
            noise = smoothed_arm_noise(plan.length, self.config.action_noise, self.config.noise_steps,
                                       np.random.default_rng([seed, 11]))
            out += noise * calm_scale(self.precision, PRECISE_NOISE_SCALE)[:, None]
        return out, plan.mode

    @staticmethod
    def _precision(plan: Plan) -> np.ndarray:
        """float[T]: 0 in free motion, 1 inside the plan's precise windows, with 20-step ramps in between."""
        t = np.arange(plan.length, dtype=np.float64)
        calm = np.zeros(plan.length)
        for start, end in plan.precise:
            inside = np.minimum(np.clip((t - start) / 20.0 + 1.0, 0, 1), np.clip((end - t) / 20.0 + 1.0, 0, 1))
            calm = np.maximum(calm, inside)
        return calm


def calm_scale(precision: np.ndarray, scale: float) -> np.ndarray:
    """float[T]: a noise multiplier, 1 in free motion and `scale` where `precision` (ScriptedExpert.precision) is 1."""
    return 1.0 - (1.0 - scale) * precision


def smoothed_arm_noise(length: int, std: float, steps: int, rng: np.random.Generator) -> np.ndarray:
    """float[T, 14]: low-pass filtered Gaussian noise of stationary std `std` on the 12 arm joints, correlated
    over about `steps` control steps; zero on the grippers. Teleoperators drift, they do not jitter."""
    alpha = 1.0 / max(1, steps)
    white = rng.standard_normal((length, 14))
    smooth = np.zeros_like(white)
    for t in range(1, length):
        smooth[t] = (1 - alpha) * smooth[t - 1] + alpha * white[t]
    smooth *= std / np.sqrt(alpha / (2 - alpha))
    smooth[:, [6, 13]] = 0.0
    return smooth

