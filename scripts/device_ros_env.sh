#!/usr/bin/env bash
# scripts/device_ros_env.sh: ROS 2 (the pip Kilted wheels scripts/requirements-venv.txt pins) for a machine that has
# a Python with torch but no ROS and no network (the GPU machine: Python 3.12, torch 2.11, CUDA), from wheels
# carried in <repo>/.whl.
#
#   scripts/device_ros_env.sh download            # HERE (network): fill .whl with the cp312 builds of the pins
#   scripts/device_ros_env.sh install [PREFIX]    # THERE: install .whl into PREFIX (default /tmp/ttt3r_ros_env),
#                                                 # build the interfaces, write PREFIX/ros_env.sh
#   source PREFIX/ros_env.sh                      # then: python3 -m ttt3r_ros.cli bench --node ...
#
# install does:
#   1. pip install --no-index --no-deps --prefix PREFIX .whl/*.whl with the machine's python3 (TTT3R_DEVICE_PYTHON
#      overrides). --prefix, not --target: the ROS wheels carry shared libraries and ament share/ files as wheel
#      data, which --target does not place. Nothing of the machine's own environment is touched.
#   2. the package's interfaces (msg/, srv/) and the tf2_msgs shim built into PREFIX with the same CMake step as
#      scripts/setup.sh (scripts/ros_interfaces.sh).
#   3. PREFIX/ros_env.sh exporting what the node needs: PYTHONPATH (the wheels' site-packages and this repo),
#      LD_LIBRARY_PATH (the ROS wheels' bootstrapper .pth that sets it in a venv is not read from PYTHONPATH),
#      AMENT_PREFIX_PATH, RMW_IMPLEMENTATION, the Fast DDS profile and ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST.
#   4. a check: rclpy, tf2_msgs and ttt3r_ros.msg import, and rclpy creates a node with the profile.
#
# download keeps .whl small enough to carry (the device tool carries at most 64 MiB with the working tree): wheels
# of packages the GPU image already has (DEVICE_PROVIDES) are removed.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WHEELS=${TTT3R_WHEELS:-$REPO/.whl}
REQUIREMENTS="$REPO/scripts/requirements-venv.txt"
DEVICE_PY_VERSION=3.12
# Already in the GPU machine's image (device README KINDS.md, "Python packages already there"): not carried.
# numpy above all: a second numpy would shadow the one torch was built against.
DEVICE_PROVIDES=(numpy setuptools pyyaml packaging pyparsing python_dateutil typing_extensions tzdata)
# Requirements of scripts/requirements-venv.txt carried to the device: the ROS wheels (runtime and rosidl build
# tooling), catkin-pkg for ament, rosbags for the offline tools. The rest (torch, opencv, pillow, ...) is there.
CARRIED_REQUIREMENT_PATTERN='^(ros-|catkin-pkg==|rosbags==)'
CARRY_LIMIT_MIB=60   # the tool's 64 MiB minus room for the working tree
T0=$(date +%s)
log() { echo "[device_ros_env $(( $(date +%s) - T0 ))s] $*" >&2; }
die() { echo "[device_ros_env] ERROR: $*" >&2; exit 1; }

download() {
  local tmp plat=() n
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  grep -E "$CARRIED_REQUIREMENT_PATTERN" "$REQUIREMENTS" | sed 's/[[:space:]]*#.*//' > "$tmp/requirements.txt"
  [ -s "$tmp/requirements.txt" ] || die "no requirement matched $CARRIED_REQUIREMENT_PATTERN in $REQUIREMENTS"
  for n in 2_17 2_24 2_27 2_28 2_31 2_34 2_35; do plat+=(--platform "manylinux_${n}_x86_64"); done
  plat+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
  rm -rf "$WHEELS"; mkdir -p "$WHEELS"
  # empy (rosidl's template engine) is published as an sdist only; it is pure Python, so a wheel built here is the
  # same for every interpreter.
  log "building a wheel of empy (sdist only on the index)"
  python3 -m pip wheel -q --no-deps -w "$tmp/local" empy
  log "pip download: cp${DEVICE_PY_VERSION/./} wheels of $(wc -l < "$tmp/requirements.txt") pins and their dependencies"
  python3 -m pip download -q --only-binary=:all: --python-version "$DEVICE_PY_VERSION" --implementation cp \
    "${plat[@]}" --find-links "$tmp/local" -d "$WHEELS" -r "$tmp/requirements.txt"
  for n in "${DEVICE_PROVIDES[@]}"; do
    find "$WHEELS" -maxdepth 1 -iname "${n}-*.whl" -print -delete | sed 's#^#  not carried (the GPU image has it): #' >&2
  done
  check_wheels
  local mib; mib=$(( $(du -sb "$WHEELS" | cut -f1) / 1048576 ))
  log "$WHEELS: $(ls "$WHEELS" | wc -l) wheels, ${mib} MiB"
  [ "$mib" -le "$CARRY_LIMIT_MIB" ] || die "$WHEELS is ${mib} MiB, over the ${CARRY_LIMIT_MIB} MiB that can be carried"
}

check_wheels() {  # one version of each distribution (pip --no-deps would install both and fail)
  local dups
  dups=$(ls "$WHEELS" | grep '\.whl$' | cut -d- -f1 | tr 'A-Z.' 'a-z_' | sort | uniq -d)
  [ -z "$dups" ] || die "more than one wheel of: $dups (in $WHEELS)"
}

install() {
  local prefix=${1:-/tmp/ttt3r_ros_env}
  local python=${TTT3R_DEVICE_PYTHON:-$(command -v python3 || true)}
  [ -n "$python" ] || die "no python3 on PATH (set TTT3R_DEVICE_PYTHON)"
  local pytag; pytag=$("$python" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
  [ -d "$WHEELS" ] || die "no wheel folder $WHEELS: run 'scripts/device_ros_env.sh download' where pip has network \
and carry .whl (run tool: carry=[\".whl\"])"
  ls "$WHEELS"/ros_rclpy-*-"$pytag"-*.whl >/dev/null 2>&1 \
    || die "$WHEELS has no $pytag build of ros-rclpy ($python is $pytag; found: $(ls "$WHEELS" | grep rclpy || echo none))"
  check_wheels
  "$python" -c 'import numpy' 2>/dev/null || die "$python has no numpy (the ROS message packages need it)"

  command -v cmake >/dev/null || die "cmake not found: building the interfaces needs cmake and a C++ compiler"
  command -v c++ >/dev/null || command -v g++ >/dev/null || command -v clang++ >/dev/null \
    || die "no C++ compiler (c++, g++ or clang++) found: the interfaces' type support is C++"
  if ! command -v make >/dev/null; then
    command -v ninja >/dev/null || die "neither make nor ninja found: cmake needs one of them"
    export CMAKE_GENERATOR=Ninja
  fi

  log "pip install $(ls "$WHEELS"/*.whl | wc -l) wheels into $prefix with $python ($pytag)"
  mkdir -p "$prefix"
  # --ignore-installed: a package the machine already has at the same version must still land in PREFIX, and
  # nothing of the machine's environment may be uninstalled or upgraded.
  "$python" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir \
    --ignore-installed --prefix "$prefix" "$WHEELS"/*.whl
  local rclpy_init site
  rclpy_init=$(find "$prefix" -path '*-packages/rclpy/__init__.py' | head -n 1)
  [ -n "$rclpy_init" ] || die "pip put no rclpy under $prefix"
  site=$(dirname "$(dirname "$rclpy_init")")

  local libdirs="$prefix/lib" d
  for d in "$site"/ros_*.libs; do [ -d "$d" ] && libdirs="$libdirs:$d"; done
  export LD_LIBRARY_PATH="$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export PYTHONPATH="$REPO:$site${PYTHONPATH:+:$PYTHONPATH}"

  # shellcheck source=ros_interfaces.sh
  source "$REPO/scripts/ros_interfaces.sh"
  ros_patch_wheel_cmake_paths "$prefix" "$python" || die "patching the wheels' CMake paths failed"
  log "interfaces tf2_msgs (shim): cmake build + install into $prefix"
  ros_cmake_install "$REPO/ros_shims/tf2_msgs" "$prefix/build/tf2_msgs" "$prefix" "$python" \
    "$prefix/build/tf2_msgs.log" || die "building tf2_msgs failed"
  log "interfaces ttt3r_ros: cmake build + install into $prefix"
  ros_cmake_install "$REPO" "$prefix/build/ttt3r_ros" "$prefix" "$python" "$prefix/build/ttt3r_ros.log" \
    -DTTT3R_INSTALL_PYTHON_PACKAGE=OFF || die "building the ttt3r_ros interfaces failed"

  # ament installs Python modules where the interpreter's scheme says; add that folder if it is not pip's.
  local pypath="$REPO:$site" f
  for f in "$(find "$prefix" -path "$prefix/build" -prune -o -name ttt3r_ros.pkg -print | head -n 1)" \
           "$(dirname "$(find "$prefix" -path "$prefix/build" -prune -o -path '*-packages/tf2_msgs/__init__.py' -print \
                         | head -n 1)")"; do
    [ -n "$f" ] && [ "$f" != . ] || die "the interface build installed no ttt3r_ros.pkg / tf2_msgs under $prefix"
    d=$(dirname "$f")
    case ":$pypath:" in *":$d:"*) ;; *) pypath="$pypath:$d" ;; esac
  done

  local profile="$prefix/share/ttt3r_ros_dev/fastdds_localhost_shm.xml"
  ros_write_fastdds_profile "$profile"
  cat > "$prefix/ros_env.sh" <<EOF
# Written by scripts/device_ros_env.sh install: source it, then run the node or the benchmark with $python.
export PYTHONPATH="$pypath\${PYTHONPATH:+:\$PYTHONPATH}"
export LD_LIBRARY_PATH="$libdirs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export AMENT_PREFIX_PATH="$prefix"
export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
export FASTDDS_DEFAULT_PROFILES_FILE="$profile"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST   # DDS discovery stays on loopback
export ROS_LOG_DIR="\${ROS_LOG_DIR:-/tmp/ttt3r_ros_log}"
EOF

  log "check: imports and one rclpy node"
  # shellcheck disable=SC1091
  ( source "$prefix/ros_env.sh" && cd / && "$python" - "$REPO" <<'EOF'
import os, sys
import rclpy, tf2_msgs.msg, ttt3r_ros.msg, ttt3r_ros.srv  # noqa: E401
import ttt3r_ros
src = os.path.realpath(ttt3r_ros.__path__[0])
if src != os.path.join(os.path.realpath(sys.argv[1]), "ttt3r_ros"):
    sys.exit(f"ttt3r_ros imports from {src}, not from the repository {sys.argv[1]}")
rclpy.init()
node = rclpy.create_node("device_ros_env_check")
node.create_publisher(ttt3r_ros.msg.Status, "device_ros_env_check", 1)
node.destroy_node()
rclpy.shutdown()
print(f"[device_ros_env] ok: rclpy {os.path.dirname(rclpy.__file__)}, interfaces "
      f"{os.path.dirname(ttt3r_ros.msg.__file__)}", file=sys.stderr)
EOF
  ) || die "the installed environment does not work (see above)"
  log "done: source $prefix/ros_env.sh"
}

case "${1:-}" in
  download) download ;;
  install) shift; install "$@" ;;
  *) echo "usage: $0 download | install [PREFIX]" >&2; exit 2 ;;
esac
