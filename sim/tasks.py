"""Bimanual tasks on the ALOHA scene: models, seeded object poses, stage rewards from contacts.

Each task is registered; `taco list` shows them and the conformance test runs every one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from sim.assets import ARM_JOINTS, apply_mujoco3_fixes, assets_dir, fast_rendering, mujoco

LEFT_FINGERS = ("vx300s_left/10_left_gripper_finger", "vx300s_left/10_right_gripper_finger")
RIGHT_FINGERS = ("vx300s_right/10_left_gripper_finger", "vx300s_right/10_right_gripper_finger")


class Contacts:
    """The set of geom-name pairs in contact after a physics step, queried by the stage functions."""

    def __init__(self, model, data):
        self.pairs = set()
        for i in range(data.ncon):
            c = data.contact[i]
            a, b = model.geom(c.geom1).name, model.geom(c.geom2).name
            self.pairs.add((a, b))
            self.pairs.add((b, a))

    def touch(self, geoms_a, geoms_b) -> bool:
        geoms_a = (geoms_a,) if isinstance(geoms_a, str) else geoms_a
        geoms_b = (geoms_b,) if isinstance(geoms_b, str) else geoms_b
        return any((a, b) in self.pairs for a in geoms_a for b in geoms_b)


@dataclass(frozen=True)
class Task:
    """One bimanual task: which scene, where its objects start, and how far an episode got."""

    # Registry name, e.g. "transfer_cube".
    name: str
    # The language instruction given to the policy.
    instruction: str
    # gym-aloha XML of the joint-controlled scene and of the mocap (end-effector) scene for experts.
    joint_xml: str
    ee_xml: str
    # Free-joint names of the task's objects, in qpos order.
    objects: tuple[str, ...]
    # Control steps before an evaluation episode times out.
    max_steps: int = 500
    # Stage reward of a success.
    max_reward: int = 4
    # Control steps the final stage must hold for an episode to count as a success (0.2 s at 50 Hz): a
    # flailing arm that knocks the object into a gripper for one frame is not a transfer.
    success_hold: int = 10
    # One line per stage, stage 1 first.
    stages: tuple[str, ...] = field(default_factory=tuple)

    def build_model(self, end_effector: bool = False, edit=None):
        """Compiles the task's scene with the MuJoCo 3 fixes and fast rendering settings; `edit(spec)`, when
        given, changes its MjSpec first (scene perturbations add objects so)."""
        model = self._compile(end_effector, edit)
        apply_mujoco3_fixes(model)
        fast_rendering(model)
        return model

    def _compile(self, end_effector: bool, edit=None):
        path = str(assets_dir() / (self.ee_xml if end_effector else self.joint_xml))
        if edit is None:
            return mujoco.MjModel.from_xml_path(path)
        spec = mujoco.MjSpec.from_file(path)
        edit(spec)
        return spec.compile()

    def qpos_indices(self, model) -> tuple[np.ndarray, np.ndarray]:
        """(robot, objects): qpos indices of the 6 arm joints + one finger per arm (left then right), and of
        the objects' free joints (7 each), in either version of the scene."""
        joints = [f"vx300s_{side}/{j}" for side in ("left", "right") for j in (*ARM_JOINTS, "left_finger")]
        robot = np.array([model.joint(j).qposadr[0] for j in joints])
        objects = np.concatenate([np.arange(7) + model.joint(name).qposadr[0] for name in self.objects])
        return robot, objects

    # Per object, in `objects` order, the (low, high) corners of the box its start position is drawn from.
    spawn: ClassVar[tuple] = ()

    def sample_objects(self, rng: np.random.Generator) -> np.ndarray:
        """float[7 * objects]: position (m) and quaternion (w, x, y, z) of each object's free joint, each
        position uniform in its `spawn` box."""
        return np.concatenate([_pose(rng.uniform(low, high)) for low, high in self.spawn])

    def stage(self, model, data) -> int:
        """The stage reached in the current physics state, 0 .. max_reward."""
        raise NotImplementedError


def _pose(xyz) -> np.ndarray:
    return np.concatenate([np.asarray(xyz, np.float64), [1.0, 0.0, 0.0, 0.0]])


class TransferCube(Task):
    spawn = (([0.0, 0.4, 0.05], [0.2, 0.6, 0.05]),)

    def stage(self, model, data):
        c = Contacts(model, data)
        right, left, table = c.touch("red_box", RIGHT_FINGERS), c.touch("red_box", LEFT_FINGERS), c.touch("red_box", "table")
        if left and not table:
            return 4
        if left:
            return 3
        if right and not table:
            return 2
        return 1 if right else 0


class Insertion(Task):
    SOCKET = ("socket-1", "socket-2", "socket-3", "socket-4")

    spawn = (([0.1, 0.4, 0.05], [0.2, 0.6, 0.05]), ([-0.2, 0.4, 0.05], [-0.1, 0.6, 0.05]))  # peg, socket

    def stage(self, model, data):
        c = Contacts(model, data)
        if c.touch("red_peg", "pin"):
            return 4
        right, left = c.touch("red_peg", RIGHT_FINGERS), c.touch(self.SOCKET, LEFT_FINGERS)
        on_table = c.touch("red_peg", "table") or c.touch(self.SOCKET, "table")
        if c.touch("red_peg", self.SOCKET) and not on_table:
            return 3
        if left and right and not on_table:
            return 2
        return 1 if left and right else 0


class LiftBar(Task):
    """Our bimanual task: a 24 cm bar that each arm grasps near one end; lifted level with both arms.

    Built from gym-aloha's transfer-cube scene by turning the cube into a bar (MjSpec), so the
    object keeps the cube's free joint and keyframe layout.
    """

    HALF_SIZE = (0.12, 0.012, 0.012)
    # Bar centre height (m) that counts as lifted.
    LIFT_HEIGHT = 0.12

    def _compile(self, end_effector: bool, edit=None):
        spec = mujoco.MjSpec.from_file(str(assets_dir() / (self.ee_xml if end_effector else self.joint_xml)))
        geom = spec.geom("red_box")
        geom.name = "bar"
        geom.size = list(self.HALF_SIZE)
        geom.rgba = [0.1, 0.7, 0.2, 1.0]
        body = spec.body("box")
        body.name = "bar"
        body.mass = 0.08
        body.inertia = [0.0005, 0.0005, 0.0005]
        if edit is not None:
            edit(spec)
        return spec.compile()

    spawn = (([-0.05, 0.45, 0.03], [0.05, 0.6, 0.03]),)

    def stage(self, model, data):
        c = Contacts(model, data)
        left, right, table = c.touch("bar", LEFT_FINGERS), c.touch("bar", RIGHT_FINGERS), c.touch("bar", "table")
        height = float(data.xpos[model.body("bar").id][2])
        if left and right and not table and height > self.LIFT_HEIGHT:
            return 4
        if left and right and not table:
            return 3
        if left and right:
            return 2
        return 1 if left or right else 0


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> None:
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is already registered")
    TASKS[task.name] = task


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"task: unknown {name!r}; registered tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


register_task(TransferCube(
    name="transfer_cube", instruction="pick up the red cube with the right arm and hand it to the left arm",
    joint_xml="bimanual_viperx_transfer_cube.xml", ee_xml="bimanual_viperx_end_effector_transfer_cube.xml",
    objects=("red_box_joint",), max_steps=500,
    stages=("right gripper touches the cube", "cube lifted by the right gripper", "left gripper touches the cube",
            "cube held by the left gripper off the table")))
register_task(Insertion(
    name="insertion", instruction="pick up the peg and the socket and insert the peg into the socket",
    joint_xml="bimanual_viperx_insertion.xml", ee_xml="bimanual_viperx_end_effector_insertion.xml",
    objects=("red_peg_joint", "blue_socket_joint"), max_steps=500,
    stages=("both grippers touch their object", "both objects lifted", "peg touches the socket in the air",
            "peg touches the pin inside the socket")))
register_task(LiftBar(
    name="lift_bar", instruction="grasp the green bar at both ends and lift it with both arms",
    joint_xml="bimanual_viperx_transfer_cube.xml", ee_xml="bimanual_viperx_end_effector_transfer_cube.xml",
    objects=("red_box_joint",), max_steps=400,
    stages=("one gripper touches the bar", "both grippers touch the bar", "bar held off the table by both",
            f"bar lifted above {LiftBar.LIFT_HEIGHT} m by both")))
