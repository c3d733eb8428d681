#!/usr/bin/env bash
# Builds the vendored ROS 2 message packages (ros_nodes/msgs/*) into a virtual environment that has the
# `ros` extra installed, with the rosidl/ament wheels: the venv is the install prefix, so rclpy finds
# them with nothing sourced. Needs cmake and a C/C++ compiler; installs them with apt-get when missing.
#   scripts/build_ros_msgs.sh .venv
set -euo pipefail
venv="$(cd "${1:-.venv}" && pwd)"
root="$(cd "$(dirname "$0")/.." && pwd)"

missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v cc >/dev/null || missing+=(gcc)
command -v c++ >/dev/null || missing+=(g++)
command -v make >/dev/null || missing+=(make)
if ((${#missing[@]})); then
  echo "installing ${missing[*]} (Debian packages) to build ROS messages"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "${missing[@]}"
fi

# One build folder per venv: CMake caches the Python and the prefix it found, so a 3.10 and a 3.12 venv
# must never share one.
builds="$root/build/msgs/$(basename "$venv")-$(printf '%s' "$venv" | sha256sum | cut -c1-8)"
mkdir -p "$builds"
for pkg in "$root"/ros_nodes/msgs/*/; do
  name="$(basename "$pkg")"
  build="$builds/$name"
  echo "building ROS messages: $name"
  # The venv's bin first: ament's cmake scripts run `python3` and must find the venv's packages.
  PATH="$venv/bin:$PATH" cmake -S "$pkg" -B "$build" -DCMAKE_INSTALL_PREFIX="$venv" \
    -DCMAKE_PREFIX_PATH="$venv" -DPython3_EXECUTABLE="$venv/bin/python" -DBUILD_TESTING=OFF \
    -DCMAKE_BUILD_TYPE=Release > "$build.log" 2>&1 || { cat "$build.log"; exit 1; }
  PATH="$venv/bin:$PATH" cmake --build "$build" -j "$(nproc)" >> "$build.log" 2>&1 || { tail -50 "$build.log"; exit 1; }
  cmake --install "$build" >> "$build.log" 2>&1 || { tail -20 "$build.log"; exit 1; }
done
"$venv/bin/python" -c "from interbotix_xs_msgs.msg import JointGroupCommand, JointSingleCommand"
echo "ROS messages installed into $venv"
