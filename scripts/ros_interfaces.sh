# scripts/ros_interfaces.sh: the ROS build steps that scripts/setup.sh (the development venv, Python 3.11) and
# scripts/device_ros_env.sh (the GPU machine, its own Python) share. Source it; it only defines functions.
#
#   ros_patch_wheel_cmake_paths PREFIX PYTHON
#       The pip ROS wheels' exported CMake targets (*__rosidl_generator_pyExport.cmake) name the interpreter of the
#       manylinux image they were built in (/opt/python/cp3XY-cp3XY/...). Point them at PYTHON's include folder and
#       numpy. Idempotent; fails when such a path is left over (a new wheel layout).
#   ros_cmake_install SOURCE_DIR BUILD_DIR PREFIX PYTHON LOGFILE [cmake args...]
#       Configure, build and install one ament/rosidl CMake package into PREFIX with the pip rosidl/ament tooling
#       found in PREFIX (the package's own CMakeLists.txt, or the tf2_msgs shim). Output goes to LOGFILE; on failure
#       its tail is printed and the function returns non-zero.
#   ros_write_fastdds_profile PATH
#       The Fast DDS profile every ROS process of the project uses (loopback discovery, 16 MiB shared memory).
#
# The caller sets PATH/PYTHONPATH so that PYTHON imports the rosidl generators (a venv needs nothing; a --prefix
# install needs its site-packages on PYTHONPATH).

ros_patch_wheel_cmake_paths() {
  local prefix=$1 python=$2 pyinc npinc
  pyinc=$("$python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
  npinc=$("$python" -c "import numpy; print(numpy.get_include())")
  if [ ! -f "$pyinc/Python.h" ]; then
    echo "[ros_interfaces] ERROR: $pyinc/Python.h not found: $python has no development headers" >&2
    return 1
  fi
  { grep -rlE '/opt/python/cp3[0-9]+-cp3[0-9]+' "$prefix/share" --include='*.cmake' 2>/dev/null || true; } \
    | xargs -r sed -i -E \
      -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#$pyinc#g" \
      -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include#$npinc#g"
  if grep -rqE '/opt/python/cp3[0-9]+-cp3[0-9]+' "$prefix/share" --include='*.cmake' 2>/dev/null; then
    echo "[ros_interfaces] ERROR: unpatched /opt/python/cp3XY paths remain in $prefix/share (new wheel layout?)" >&2
    return 1
  fi
}

ros_cmake_install() {
  local src=$1 build=$2 prefix=$3 python=$4 logfile=$5
  shift 5
  mkdir -p "$build" "$(dirname "$logfile")"
  # PATH first so the generators run under PYTHON's tools; AMENT_PREFIX_PATH/CMAKE_PREFIX_PATH = PREFIX, the only
  # ament prefix. Installing into PREFIX puts the interfaces beside the wheels' own message packages.
  if ! { PATH="$prefix/bin:$PATH" AMENT_PREFIX_PATH="$prefix" cmake -S "$src" -B "$build" \
          -DCMAKE_INSTALL_PREFIX="$prefix" -DCMAKE_PREFIX_PATH="$prefix" -DBUILD_TESTING=OFF \
          -DPython3_EXECUTABLE="$python" "$@" \
        && PATH="$prefix/bin:$PATH" cmake --build "$build" -j"$(nproc)" \
        && cmake --install "$build"; } > "$logfile" 2>&1; then
    tail -n 40 "$logfile" >&2
    echo "[ros_interfaces] ERROR: building $src failed (full log: $logfile)" >&2
    return 1
  fi
}

ros_write_fastdds_profile() {
  local path=$1
  mkdir -p "$(dirname "$path")"
  cat > "$path.tmp" <<'EOF'
<?xml version="1.0" encoding="UTF-8" ?>
<!-- Written by scripts/ros_interfaces.sh. Discovery by unicast to 127.0.0.1 only (no multicast out of any NIC);
     data over shared memory with a 16 MiB segment: the rmw's default 512 KiB segment cannot hold one 640x480 rgb8
     image, which then travels as UDP fragments (about 12 ms instead of 2 ms per image). -->
<dds xmlns="http://www.eprosima.com">
  <profiles>
    <transport_descriptors>
      <transport_descriptor>
        <transport_id>shm_16mib</transport_id>
        <type>SHM</type>
        <segment_size>16777216</segment_size>
      </transport_descriptor>
      <transport_descriptor>
        <transport_id>udp_loopback</transport_id>
        <type>UDPv4</type>
        <maxInitialPeersRange>32</maxInitialPeersRange>
      </transport_descriptor>
    </transport_descriptors>
    <participant profile_name="ttt3r_localhost_shm" is_default_profile="true">
      <rtps>
        <useBuiltinTransports>false</useBuiltinTransports>
        <userTransports>
          <transport_id>shm_16mib</transport_id>
          <transport_id>udp_loopback</transport_id>
        </userTransports>
        <builtin>
          <metatrafficUnicastLocatorList>
            <locator><udpv4><address>127.0.0.1</address></udpv4></locator>
          </metatrafficUnicastLocatorList>
          <initialPeersList>
            <locator><udpv4><address>127.0.0.1</address></udpv4></locator>
          </initialPeersList>
        </builtin>
      </rtps>
    </participant>
  </profiles>
</dds>
EOF
  mv "$path.tmp" "$path"
}
