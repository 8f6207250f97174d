#!/usr/bin/env bash
# scripts/setup.sh: from nothing to a working .venv/ in the repository root, no manual steps.
#
#   scripts/setup.sh          # create or update .venv; safe and fast to re-run (steps whose inputs did not change
#                             # are skipped: stamps keyed on hashes of their inputs)
#
# What it does:
#   1. cmake/g++/make from apt, only if missing (needed to build the interfaces).
#   2. a Python 3.11 venv with the exact pins of scripts/requirements-venv.txt (ROS 2 Kilted wheels, rosidl build
#      tooling, torch CPU, rosbags, evo, ...) and this project in editable mode with its [test] extras.
#   3. this package's own CMakeLists.txt built with the pip-installed rosidl/ament into the venv prefix (only the
#      msg/ and srv/ interfaces: -DTTT3R_INSTALL_PYTHON_PACKAGE=OFF), and the tf2_msgs build shim
#      (ros_shims/tf2_msgs) the same way.
#   4. a Fast DDS profile (loopback-only discovery, 16 MiB shared-memory segment) and .venv/ros_env.sh.
#
# Knobs (environment): TTT3R_VENV (default <repo>/.venv), TTT3R_PYTHON (default python3.11, else python3),
# TTT3R_SETUP_FORCE=1 (ignore the stamps). PIP_NO_CACHE_DIR=1 etc. pass through to pip.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${TTT3R_VENV:-$REPO/.venv}
REQUIREMENTS="$REPO/scripts/requirements-venv.txt"
T0=$(date +%s)
log() { echo "[setup $(( $(date +%s) - T0 ))s] $*"; }
die() { echo "[setup] ERROR: $*" >&2; exit 1; }

hash_inputs() {  # sha256 over the named files' contents and paths (missing files hash as absent)
  local f
  for f in "$@"; do
    if [ -f "$f" ]; then echo "$f"; sha256sum < "$f"; else echo "$f absent"; fi
  done | sha256sum | cut -d' ' -f1
}
stamp_ok() { [ "${TTT3R_SETUP_FORCE:-0}" != 1 ] && [ -f "$VENV/.ttt3r_setup/$1" ] && [ "$(cat "$VENV/.ttt3r_setup/$1")" = "$2" ]; }
stamp_write() { mkdir -p "$VENV/.ttt3r_setup"; echo "$2" > "$VENV/.ttt3r_setup/$1"; }

# The machine's pip config lists local file indexes that warn once per ros-* name; keep real errors visible.
pip_install() {
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

# --- 1. system build tools --------------------------------------------------------------------------------------
missing=()
for tool in cmake g++ make; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install cmake g++ make (missing: ${missing[*]})"
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get: install cmake, g++ and make"
  SUDO=(); [ "$(id -u)" = 0 ] || SUDO=(sudo)
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq cmake g++ make >/dev/null
fi

# --- 2. venv and pinned packages --------------------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  PYTHON=${TTT3R_PYTHON:-$(command -v python3.11 || command -v python3 || true)}
  [ -n "$PYTHON" ] || die "no python3.11 found (the ROS 2 Kilted wheels are built for CPython 3.11)"
  log "creating venv $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
PYVER=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$PYVER" = 3.11 ] || die "$VENV uses Python $PYVER; the ROS 2 Kilted wheels need CPython 3.11 (remove the venv, set TTT3R_PYTHON)"

PIP_HASH=$(hash_inputs "$REQUIREMENTS" "$REPO/setup.py" "$REPO/setup.cfg")
if stamp_ok pip "$PIP_HASH"; then
  log "python packages: up to date (stamp)"
else
  log "pip: pinned packages + this project in editable mode (this is the slow step on a fresh machine)"
  # One resolver run for everything, so the project's loose requirements meet the exact pins.
  pip_install -r "$REQUIREMENTS" -e "$REPO[test]"
  stamp_write pip "$PIP_HASH"
fi

# --- 3. interfaces built with the pip rosidl/ament into the venv prefix -------------------------------------------
# The build steps live in scripts/ros_interfaces.sh, shared with scripts/device_ros_env.sh (the GPU machine).
source "$REPO/scripts/ros_interfaces.sh"
# Re-run after every pip step (pip may rewrite the wheels' CMake files); idempotent.
ros_patch_wheel_cmake_paths "$VENV" "$VENV/bin/python" || die "patching the wheels' CMake paths failed"

build_interfaces() {  # build_interfaces NAME SOURCE_DIR [cmake args...]: configure, build, install into $VENV
  local name=$1 src=$2; shift 2
  local build="$VENV/.ttt3r_setup/build/$name" logfile="$VENV/.ttt3r_setup/build_$name.log"
  local inputs; inputs=$(find "$src/CMakeLists.txt" "$src/package.xml" "$src/msg" "$src/srv" -type f 2>/dev/null | sort)
  local h; h=$( { hash_inputs $inputs "$PIP_HASH_FILE" "$REPO/scripts/ros_interfaces.sh"
                  echo "$INTERFACE_BUILD_RECIPE $*"; } | sha256sum | cut -d' ' -f1)
  if stamp_ok "interfaces_$name" "$h"; then log "interfaces $name: up to date (stamp)"; return 0; fi
  log "interfaces $name: cmake configure + build + install into $VENV (log: $logfile)"
  # Installing into the venv prefix means no extra env vars at run time.
  ros_cmake_install "$src" "$build" "$VENV" "$VENV/bin/python" "$logfile" "$@" || die "building $name failed"
  stamp_write "interfaces_$name" "$h"
}
PIP_HASH_FILE="$VENV/.ttt3r_setup/pip"
INTERFACE_BUILD_RECIPE=1  # bump when build_interfaces() changes in a way that needs a rebuild
build_interfaces tf2_msgs "$REPO/ros_shims/tf2_msgs"
build_interfaces ttt3r_ros "$REPO" -DTTT3R_INSTALL_PYTHON_PACKAGE=OFF

# --- 4. Fast DDS profile and env file -----------------------------------------------------------------------------
PROFILE="$VENV/share/ttt3r_ros_dev/fastdds_localhost_shm.xml"
ros_write_fastdds_profile "$PROFILE"

cat > "$VENV/ros_env.sh.tmp" <<EOF
# Written by scripts/setup.sh. Source it for an interactive shell with ROS 2 from the venv:
#   source .venv/ros_env.sh
# LD_LIBRARY_PATH is not needed: ros-wheels-bootstrapper (a .pth file) re-executes the venv python with it.
source "$VENV/bin/activate"
export AMENT_PREFIX_PATH="$VENV"                  # for ament_index_python; rclpy itself runs without it
export RMW_IMPLEMENTATION=rmw_fastrtps_cpp        # the only rmw with a wheel
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST    # keep DDS discovery on loopback (ROS_LOCALHOST_ONLY does not)
export FASTDDS_DEFAULT_PROFILES_FILE="$PROFILE"
export ROS_LOG_DIR="\${ROS_LOG_DIR:-\${TMPDIR:-/tmp}/ttt3r_ros_log}"
export ROS_DOMAIN_ID="\${ROS_DOMAIN_ID:-0}"       # ROS' default; scripts/test.sh runs take 50..99, so they never collide
EOF
mv "$VENV/ros_env.sh.tmp" "$VENV/ros_env.sh"

# --- 5. check the result: cheap, and a stale stamp must never hide a broken venv ---------------------------------
if ! "$VENV/bin/python" - "$REPO" <<'EOF'
import os, sys
repo = sys.argv[1]
import ttt3r_ros, ttt3r_ros.msg, ttt3r_ros.srv, tf2_msgs.msg, rclpy, torch  # noqa: E401,F401
src = os.path.realpath(os.path.dirname(ttt3r_ros.__file__))
if src != os.path.join(os.path.realpath(repo), "ttt3r_ros"):
    sys.exit(f"ttt3r_ros imports from {src}, not from the repository {repo}")
print(f"[setup] ttt3r_ros from {src}; interfaces from {os.path.dirname(ttt3r_ros.msg.__file__)}; "
      f"torch {torch.__version__}; rclpy ok")
EOF
then
  rm -rf "$VENV/.ttt3r_setup"   # forget every stamp: the next run redoes all steps
  die "the venv does not import what it should (stamps cleared; re-run scripts/setup.sh)"
fi
log "done: $VENV ($(du -sh "$VENV" 2>/dev/null | cut -f1)). Tests: scripts/test.sh; shell: source ${VENV#$REPO/}/ros_env.sh"
