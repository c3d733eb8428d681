"""The whole stack without a robot: the MuJoCo sim node and the policy node (ROS 2 installs with `launch`).

    ros2 launch ros_nodes/launch/sim.launch.py policy:=default verifier:=cfn n:=16 sink:=interbotix

Without `launch` (e.g. the venv from `make test`), `taco ros sim` starts the same nodes.
"""

import sys

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess
from launch.substitutions import LaunchConfiguration

ARGS = {"policy": "default", "verifier": "none", "n": "16", "execute": "8", "sink": "interbotix",
        "profile": "aloha_viperx", "task": "transfer_cube", "episodes": "0", "seed": "0"}


def _params(names):
    out = []
    for name in names:
        out += ["-p", [f"{name}:=", LaunchConfiguration(name)]]
    return out


def generate_launch_description():
    python = sys.executable
    sim = ExecuteProcess(cmd=[python, "-m", "ros_nodes.sim_node", "--ros-args",
                              *_params(["task", "sink", "profile", "episodes", "seed"])], output="screen")
    policy = ExecuteProcess(cmd=[python, "-m", "ros_nodes.policy_node", "--ros-args",
                                 *_params(["policy", "verifier", "n", "execute", "sink", "profile"])], output="screen")
    return LaunchDescription([*(DeclareLaunchArgument(k, default_value=v) for k, v in ARGS.items()), sim, policy])
