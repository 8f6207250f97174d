"""Frame-tree checks of ttt3r_node: the camera's optical frame, the camera-is-base mount, and TF loops.

The model works in the camera's optical frame (REP 103 "_optical": z forward, x right, y down); the node places it
on the robot through T_base_camera. Three ways that go wrong silently, each turned into a readable message here
(pure functions: the node decides when to log them):
- the image's frame_id is a body frame (REP 103 axes: x forward, z up), e.g. `base_link` or `camera_link`: the
  points would come out rotated by 90 degrees;
- `camera_is_base: true` with no base -> optical transform in TF: the node publishes it (`camera_is_base_transform`)
  on /tf_static, so the optical-frame outputs resolve;
- `invert_tf: true` (base -> odom) with the frame names another odometry source also uses: base_link gets two
  parents, or odom <-> base_link forms a loop.
"""
from __future__ import annotations

import numpy as np

# A rotation within this angle of identity between base and camera frame means the "camera" frame has the body's
# axes (x forward, z up), not optical ones: a real optical frame on a forward camera is ~120 deg from the body's.
BODY_AXES_TOLERANCE_RAD = np.deg2rad(10.0)


def optical_frame_name(camera_frame: str, base_frame: str) -> str:
    """The optical frame the node names for `camera_is_base`: the camera frame, unless that is the base frame itself
    (a frame cannot be its own child), then `<base_frame>_optical_frame`."""
    camera_frame, base_frame = camera_frame.lstrip("/"), base_frame.lstrip("/")
    return f"{base_frame}_optical_frame" if camera_frame == base_frame else camera_frame


def body_frame_problem(camera_frame: str, base_frame: str, t_base_camera: np.ndarray | None) -> str | None:
    """Why `camera_frame` looks like a body frame rather than an optical one, or None. `t_base_camera`: the mount
    found in TF (None: not known yet)."""
    camera_frame, base_frame = camera_frame.lstrip("/"), base_frame.lstrip("/")
    fix = ("the model's points, depth and pose are in the camera's OPTICAL frame (z forward, x right, y down); "
           "set camera_frame to the optical frame (e.g. camera_color_optical_frame, with its mount in TF), or "
           "camera_is_base:=true if the camera is the robot body")
    if camera_frame == base_frame and "optical" not in camera_frame:
        return f"image frame_id {camera_frame!r} is the base frame (body axes: x forward, z up), not optical: {fix}"
    if t_base_camera is not None and camera_frame != base_frame:
        from ttt3r_ros.engine import geometry

        angle = geometry.rotation_angle_rad(np.asarray(t_base_camera, dtype=np.float64)[:3, :3])
        if angle < BODY_AXES_TOLERANCE_RAD:
            return (f"camera frame {camera_frame!r} has the same axes as {base_frame!r} in TF "
                    f"({np.rad2deg(angle):.1f} deg apart): it looks like a body frame (x forward, z up) such as "
                    f"camera_link, not an optical frame; {fix}")
    return None


def camera_is_base_transform(base_frame: str, optical_frame: str) -> tuple[np.ndarray, str, str]:
    """(T_base_optical, parent, child) of `camera_is_base`: the camera sits at the base origin with the REP 103
    rotation between body and optical axes (what the engine assumes with camera_is_base)."""
    from ttt3r_ros.engine import geometry

    return geometry.T_BODY_FROM_OPTICAL.copy(), base_frame.lstrip("/"), optical_frame.lstrip("/")


def invert_tf_problem(invert_tf: bool, publish_tf: bool, odom_frame: str, base_frame: str,
                      default_odom_frame: str, default_base_frame: str) -> str | None:
    """Why `invert_tf` may break the TF tree, or None. With the default names another odometry source (wheel
    driver, robot_localization) very likely publishes odom -> base_link, and base_link -> odom makes a loop."""
    if not (invert_tf and publish_tf):
        return None
    if odom_frame.lstrip("/") == default_odom_frame and base_frame.lstrip("/") == default_base_frame:
        return (f"invert_tf is true with the default frames: the node broadcasts {base_frame} -> {odom_frame}; if "
                f"anything else publishes {odom_frame} -> {base_frame} (wheel odometry, robot_localization) TF gets "
                f"a loop. Give ttt3r its own odometry frame (odom_frame:=ttt3r_odom), or use publish_tf:=false "
                f"when an EKF fuses the odom topic")
    return None
