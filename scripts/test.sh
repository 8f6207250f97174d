#!/usr/bin/env bash
# scripts/test.sh: run the whole pytest suite in the venv that scripts/setup.sh built, with a safe ROS environment.
#
#   scripts/test.sh                     # everything
#   scripts/test.sh -k smoke -x         # extra arguments go to pytest
#
# Environment for every process of the run (tests that spawn rclpy processes inherit it):
#   ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST   always: DDS discovery never leaves loopback
#   ROS_DOMAIN_ID                             fresh per run, 50..99 from this script's PID (TTT3R_TEST_DOMAIN_ID
#                                             overrides), so concurrent runs on one machine do not see each other
#   FASTDDS_DEFAULT_PROFILES_FILE             the venv's profile: 16 MiB shared-memory segment, loopback discovery
#   ROS_LOG_DIR                               a temporary folder, removed afterwards
# Fast DDS shared-memory files (/dev/shm/fastdds_*, sem.fastdds_*) that no live process holds are removed before
# and after the run: processes that were killed leave them behind. Files still open or mapped by a running process
# (another run, a developer's node) are left alone.
# Exit status: pytest's; "no tests collected" (pytest exit 5) counts as a failure.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${TTT3R_VENV:-$REPO/.venv}
PROFILE="$VENV/share/ttt3r_ros_dev/fastdds_localhost_shm.xml"
if [ ! -x "$VENV/bin/python" ] || [ ! -f "$PROFILE" ]; then
  echo "[test] no set-up venv at $VENV: run scripts/setup.sh first" >&2
  exit 2
fi

shm_base() {  # fastdds_port7411, its _el lock file and its sem.*_mutex semaphore belong together
  local b=${1##*/}; b=${b#sem.}; b=${b%_mutex}; echo "${b%_el}"
}
clean_stale_fastdds_shm() {
  local in_use f removed=0
  # Base names of every /dev/shm file some process has open (fd) or mapped (maps). A port's named semaphore is
  # only opened while in use, so it counts as held whenever its port segment or lock file is.
  in_use=$( { find /proc/[0-9]*/fd -lname '/dev/shm/*' -printf '%l\n' 2>/dev/null
              cat /proc/[0-9]*/maps 2>/dev/null | grep -o '/dev/shm/[^ ]*'; } \
            | while read -r f; do shm_base "$f"; done | sort -u)
  for f in /dev/shm/fastdds_* /dev/shm/sem.fastdds_*; do
    [ -e "$f" ] || continue
    if ! grep -qxF "$(shm_base "$f")" <<<"$in_use"; then rm -f "$f" && removed=$((removed + 1)); fi
  done
  [ "$removed" = 0 ] || echo "[test] removed $removed stale Fast DDS shared-memory file(s)"
}

export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID=${TTT3R_TEST_DOMAIN_ID:-$(( 50 + $$ % 50 ))}
export FASTDDS_DEFAULT_PROFILES_FILE="$PROFILE"
export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
ROS_LOG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/ttt3r_test_ros_log.XXXXXX")
export ROS_LOG_DIR

cleanup() {
  clean_stale_fastdds_shm
  rm -rf "$ROS_LOG_DIR"
}
trap cleanup EXIT
clean_stale_fastdds_shm

echo "[test] ROS_DOMAIN_ID=$ROS_DOMAIN_ID ROS_AUTOMATIC_DISCOVERY_RANGE=$ROS_AUTOMATIC_DISCOVERY_RANGE profile=$PROFILE"
cd "$REPO"
"$VENV/bin/python" -m pytest "$@"
rc=$?
if [ "$rc" = 5 ]; then
  echo "[test] FAILED: pytest collected no tests (exit 5)" >&2
fi
exit "$rc"
