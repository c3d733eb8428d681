"""The policy node for a real dual-arm robot whose drivers are already up (ROS 2 installs with `launch`).

    ros2 launch ros_nodes/launch/robot.launch.py verifier:=consensus n:=16 sink:=interbotix \
        task:="transfer the cube to the left arm" joint_limits_file:=limits.yaml

The node holds the robot unless an operator heartbeat (std_msgs/Header) arrives on /taco/heartbeat at least
every `heartbeat_timeout` seconds (docs/ros.md, "E-stop and heartbeat").

The default policy is `flow32` (32-action chunks with real-time chunking, whose chunk outlasts the
inference delay; its guidance capped at 5, docs/async.md), as for `taco ros robot`, which starts the same
node without `launch`. Add `record:=run.mcap` to record the run.
"""

import sys

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PythonExpression

ARGS = {"policy": "flow32", "verifier": "none", "n": "16", "execute": "8", "rtc_max_weight": "5.0",
        "sink": "interbotix", "profile": "aloha_viperx", "task": "", "rate": "0.0", "max_observation_age": "0.2",
        "max_inference_time": "0.5", "max_future_stamp": "0.05", "heartbeat_timeout": "0.5", "urdf_file": "",
        "joint_limits_file": "", "record": ""}


def _params(names):
    out = []
    for name in names:
        out += ["-p", [f"{name}:=", LaunchConfiguration(name)]]
    return out


def generate_launch_description():
    python = sys.executable
    policy = ExecuteProcess(cmd=[python, "-m", "ros_nodes.policy_node", "--ros-args",
                                 *_params([k for k in ARGS if k != "record"])], output="screen")
    recorder = ExecuteProcess(cmd=[python, "-m", "ros_nodes.recorder", "--ros-args", "-p",
                                   ["out:=", LaunchConfiguration("record")]],
                              condition=IfCondition(PythonExpression(["'", LaunchConfiguration("record"), "' != ''"])),
                              output="screen")
    return LaunchDescription([*(DeclareLaunchArgument(k, default_value=v) for k, v in ARGS.items()), policy, recorder])
