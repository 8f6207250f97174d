"""The camera rig (session/rig.py): several cameras over one BatchedReconstructor, odometry from the primary, one
map in odom from every camera placed through the primary's odometry and each camera's extrinsic.

Geometry is checked with the OracleNetwork (exact point maps and poses of the synthetic box room): a rigid rig moves
through the room, each camera renders its own view, and the map must hold every camera's points on the room's
walls at the places the ground truth says. The tiny random model checks the real network's batching (one model,
cameras of different image sizes in one cycle).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from support.oracle import OracleNetwork
from ttt3r_ros.engine import BatchedReconstructor, geometry
from ttt3r_ros.engine.preprocess import preprocess_pil
from ttt3r_ros.engine.synthetic import BoxRoom, camera_path, pinhole
from ttt3r_ros.engine.voxel_map import _pack_keys
from ttt3r_ros.session.rig import CameraRig, RigFrame, interpolate_pose

H, W, SIZE, FOCAL = 48, 64, 64, 50.0
VOXEL_M = 0.02
FRAME_DT_S = 0.1
THRESHOLD = 3.0   # the oracle's confidence is 5 except a left band of 1.5


def _yaw(angle_rad: float, translation: tuple[float, float, float]) -> np.ndarray:
    """A mount turned about the room's vertical (OpenCV y) axis, with a lever arm."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return geometry.make_se3(np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]), np.array(translation))


# front, left, back: views of different walls, so each camera's points are its own
MOUNTS = [_yaw(0.0, (0.0, 0.0, 0.15)), _yaw(-np.pi / 2, (-0.1, 0.05, 0.0)), _yaw(np.pi, (0.0, 0.0, -0.15))]


class RigScene:
    """n cameras on a rigid rig along `camera_path` (the base's path in the room), rendered frame by frame;
    `offsets[i]`: camera i's capture time offset in frames (rendered at the interpolated base pose)."""

    def __init__(self, n_cameras: int, n_frames: int = 6, offsets: tuple[float, ...] | None = None) -> None:
        self.room = BoxRoom()
        self.k = pinhole(FOCAL, H, W)
        self.base_path = camera_path(n_frames + 1)   # T_room_base per frame (one extra: offsets interpolate)
        self.mounts = MOUNTS[:n_cameras]
        self.offsets = offsets or (0.0,) * n_cameras
        self.n_frames = n_frames
        self.images, self.points, self.poses = {}, {}, {}
        for c in range(n_cameras):
            for t in range(n_frames):
                t_room_cam = self.base_at(t + self.offsets[c]) @ self.mounts[c]
                rgb, _, pts = self.room.render(self.k, H, W, t_room_cam)
                self.images[c, t], self.points[c, t], self.poses[c, t] = rgb, pts, t_room_cam
        keys = list(self.images)
        self.net = OracleNetwork(torch.cat([preprocess_pil(self.images[k], SIZE).images for k in keys]),
                                 np.stack([self.points[k] for k in keys]), np.stack([self.poses[k] for k in keys]))

    def base_at(self, t: float) -> np.ndarray:
        i = int(np.floor(t))
        return self.base_path[i] if t == i else interpolate_pose(self.base_path[i], self.base_path[i + 1], t - i)

    def stamp(self, camera: int, t: int) -> float:
        return (t + self.offsets[camera]) * FRAME_DT_S

    def frame(self, camera: int, t: int) -> RigFrame:
        return RigFrame(self.images[camera, t], self.stamp(camera, t))

    def expected_odom_base(self, t: float) -> np.ndarray:
        return np.linalg.inv(self.base_path[0]) @ self.base_at(t)

    def expected_voxels(self, camera: int, t: int) -> np.ndarray:
        """Packed voxel keys of camera's confident points at frame t, in odom (the base's first pose)."""
        conf = self.net.conf[0].numpy()
        pts_cam = self.points[camera, t][conf > THRESHOLD]
        t_odom_cam = np.linalg.inv(self.base_path[0]) @ self.poses[camera, t]
        pts = geometry.transform_points(t_odom_cam, pts_cam)
        return np.unique(_pack_keys(torch.from_numpy(np.floor(pts / VOXEL_M)).to(torch.int64)).numpy())


def make_rig(scene: RigScene, names: list[str], **options) -> CameraRig:
    engine = BatchedReconstructor(scene.net, len(names), size=SIZE, build_map=False, voxel_size=VOXEL_M,
                                  confidence_threshold=THRESHOLD)
    rig = CameraRig(engine, names, **options)
    for c, name in enumerate(names):
        rig.set_extrinsic(name, scene.mounts[c])
    return rig


def assert_map_holds(rig: CameraRig, scene: RigScene, camera_frames: dict[int, list[int]]) -> None:
    """Every map point lies on the room's walls (in the room frame), and the map covers each camera's expected
    voxels at each of its frames."""
    pts, _, _ = rig.map_points()
    assert len(pts) > 0
    in_room = geometry.transform_points(scene.base_path[0], pts.astype(np.float64))
    assert float(np.max(scene.room.surface_distance(in_room))) < VOXEL_M
    keys = set(rig.voxel_map.keys().tolist())
    for c, frames in camera_frames.items():
        for t in frames:
            expected = scene.expected_voxels(c, t)
            covered = np.mean([k in keys for k in expected.tolist()])
            assert covered > 0.98, f"camera {c} frame {t}: only {covered:.1%} of its voxels are in the map"


@pytest.mark.parametrize("n_cameras", [2, 3])
def test_map_holds_every_cameras_points_in_place_and_odometry_is_the_primarys(n_cameras: int) -> None:
    scene = RigScene(n_cameras)
    names = ["front", "left", "back"][:n_cameras]
    rig = make_rig(scene, names)
    for t in range(scene.n_frames):
        for c, name in enumerate(names):
            rig.put(name, scene.frame(c, t))
        step = rig.step()
        assert [o.camera for o in step.outputs] == names and not step.rejected
        assert all(o.result.timestamp == scene.stamp(c, t) for c, o in enumerate(step.outputs))
        assert step.odometry is not None and step.odometry.stamp_s == scene.stamp(0, t)
        assert np.allclose(step.odometry.t_odom_base, scene.expected_odom_base(t), atol=1e-5)
    assert_map_holds(rig, scene, {c: list(range(scene.n_frames)) for c in range(n_cameras)})
    health = rig.health()
    assert [health[n].frames_processed for n in names] == [scene.n_frames] * n_cameras
    assert [health[n].map_frames_placed for n in names] == [scene.n_frames] * n_cameras
    assert all(health[n].ok and health[n].state == "ok" for n in names)
    assert len(rig.odometry.trajectory) == scene.n_frames
    # one model step per cycle for all cameras (one model in memory, batched)
    assert scene.net.calls == scene.n_frames and scene.net.views == scene.n_frames * n_cameras


def test_a_wrong_extrinsic_puts_that_cameras_points_off_the_walls() -> None:
    # the negative control of the geometric check above: the placement really uses each camera's extrinsic
    scene = RigScene(2, n_frames=2)
    rig = make_rig(scene, ["front", "left"])
    rig2 = CameraRig(BatchedReconstructor(scene.net, 2, size=SIZE, build_map=False, voxel_size=VOXEL_M,
                                          confidence_threshold=THRESHOLD), ["front", "left"])
    rig2.set_extrinsic("front", scene.mounts[0])
    rig2.set_extrinsic("left", _yaw(-np.pi / 2, (-0.4, 0.05, 0.0)))   # lever arm off by 30 cm
    for r in (rig, rig2):
        for t in range(2):
            r.put("front", scene.frame(0, t))
            r.put("left", scene.frame(1, t))
            r.step()
    assert_map_holds(rig, scene, {0: [0, 1], 1: [0, 1]})
    with pytest.raises(AssertionError):
        assert_map_holds(rig2, scene, {1: [0, 1]})


def test_a_camera_between_primary_frames_is_placed_with_the_interpolated_primary_pose() -> None:
    # the left camera captures half a frame after the primary: its frame waits for the next primary pose
    scene = RigScene(2, n_frames=5, offsets=(0.0, 0.5))
    rig = make_rig(scene, ["front", "left"])
    placed = []
    for t in range(scene.n_frames):
        rig.put("front", scene.frame(0, t))
        rig.put("left", scene.frame(1, t))
        rig.step()
        placed.append(rig.health()["left"].map_frames_placed)
    assert placed == [0, 1, 2, 3, 4]   # always one cycle behind the primary
    assert_map_holds(rig, scene, {0: list(range(5)), 1: list(range(4))})


def test_interpolate_pose_ends_and_midpoint() -> None:
    a = _yaw(0.2, (0.0, 1.0, 2.0))
    b = _yaw(0.8, (1.0, 1.0, 0.0))
    assert np.allclose(interpolate_pose(a, b, 0.0), a) and np.allclose(interpolate_pose(a, b, 1.0), b)
    assert np.allclose(interpolate_pose(a, b, 0.5), _yaw(0.5, (0.5, 1.0, 1.0)))


def test_a_silent_camera_leaves_the_others_running_and_reports_stale() -> None:
    now = [100.0]
    scene = RigScene(3, n_frames=6)
    names = ["front", "left", "back"]
    rig = make_rig(scene, names, stale_after_s=1.0, clock=lambda: now[0])
    for t in range(scene.n_frames):
        now[0] += 0.5
        for c, name in enumerate(names):
            if name != "back" or t < 2:   # the back camera stops after two frames
                rig.put(name, scene.frame(c, t))
        step = rig.step()
        assert [o.camera for o in step.outputs] == (names if t < 2 else ["front", "left"])
        assert step.odometry is not None
    health = rig.health()
    assert health["front"].frames_processed == health["left"].frames_processed == 6
    assert health["back"].frames_processed == 2
    assert not health["back"].ok and health["back"].state.startswith("stale: no frame for 2.0 s")
    assert health["front"].ok and health["left"].ok
    assert_map_holds(rig, scene, {0: list(range(6)), 1: list(range(6)), 2: [0, 1]})


def test_a_silent_primary_stops_odometry_and_the_others_points_wait_then_are_dropped() -> None:
    scene = RigScene(2, n_frames=6)
    rig = make_rig(scene, ["front", "left"], placement_wait_frames=2)
    for t in range(scene.n_frames):
        if t < 2:
            rig.put("front", scene.frame(0, t))
        rig.put("left", scene.frame(1, t))
        step = rig.step()
        assert step.output("left") is not None   # the other camera's outputs go on
        assert (step.odometry is not None) == (t < 2)
    left = rig.health()["left"]
    # frames 0, 1 placed; 2..5 have no primary pose at or after their stamp: two wait, the rest were given up
    assert (left.frames_processed, left.map_frames_placed, left.map_frames_unplaced) == (6, 2, 2)


def test_a_bad_frame_on_one_camera_is_rejected_and_counted_the_others_are_processed() -> None:
    scene = RigScene(3, n_frames=5)
    names = ["front", "left", "back"]
    rig = make_rig(scene, names)

    def undecodable() -> np.ndarray:
        raise ValueError("corrupt JPEG")

    bad = {1: np.zeros((H, W, 4), np.uint8), 2: RigFrame(undecodable, 0.2), 3: np.zeros((H, W, 3), np.float32)}
    for t in range(scene.n_frames):
        for c, name in enumerate(names):
            frame = scene.frame(c, t)
            if name == "left" and t in bad:
                frame = bad[t] if isinstance(bad[t], RigFrame) else RigFrame(bad[t], scene.stamp(c, t))
            rig.put(name, frame)
        step = rig.step()
        expected = ["front", "back"] if t in bad else names
        assert [o.camera for o in step.outputs] == expected
        if t in bad:
            assert list(step.rejected) == ["left"] and "bad frame" in step.rejected["left"]
            assert not rig.health()["left"].ok and rig.health()["left"].state.startswith("rejecting frames")
    assert "corrupt JPEG" in rig.health()["left"].last_error or "float32" in rig.health()["left"].last_error
    left = rig.health()["left"]
    assert (left.frames_rejected, left.frames_processed) == (3, 2) and left.ok   # the last frame was good
    assert rig.health()["front"].frames_processed == rig.health()["back"].frames_processed == 5
    # the left stream only ever saw its good frames: its state is its own
    assert rig.engine.frames_processed(1) == 2 and rig.engine.frames_processed(0) == 5


def test_a_camera_without_extrinsic_is_skipped_until_it_has_one() -> None:
    scene = RigScene(2, n_frames=4)
    engine = BatchedReconstructor(scene.net, 2, size=SIZE, build_map=False, voxel_size=VOXEL_M,
                                  confidence_threshold=THRESHOLD)
    rig = CameraRig(engine, ["front", "left"])
    rig.set_extrinsic("front", scene.mounts[0])
    for t in range(scene.n_frames):
        if t == 2:
            rig.set_extrinsic("left", scene.mounts[1])
        rig.put("front", scene.frame(0, t))
        rig.put("left", scene.frame(1, t))
        step = rig.step()
        assert [o.camera for o in step.outputs] == (["front"] if t < 2 else ["front", "left"])
        if t < 2:
            assert "no extrinsic" in step.rejected["left"]
            assert rig.health()["left"].state.startswith("waiting for its extrinsic")
    left = rig.health()["left"]
    assert (left.frames_skipped, left.frames_processed, left.frames_rejected) == (2, 2, 0)
    assert_map_holds(rig, scene, {0: [0, 1, 2, 3], 1: [2, 3]})
    with pytest.raises(ValueError, match="fixed once frames were processed"):
        rig.set_extrinsic("left", scene.mounts[0])


def test_keep_latest_drops_waiting_frames_and_process_all_keeps_every_cameras_order() -> None:
    scene = RigScene(2, n_frames=3)
    latest = make_rig(scene, ["front", "left"])
    for t in range(3):
        latest.put("front", scene.frame(0, t))
    latest.put("left", scene.frame(1, 0))
    step = latest.step()
    assert [o.result.timestamp for o in step.outputs] == [scene.stamp(0, 2), scene.stamp(1, 0)]
    assert latest.health()["front"].frames_dropped == 2

    in_order = make_rig(RigScene(2, n_frames=3), ["front", "left"], process_all=True, queue_size=8)
    for t in range(3):
        in_order.put("front", scene.frame(0, t))
    in_order.put("left", scene.frame(1, 0))
    stamps = []
    while in_order.wait_for_frames(timeout_s=0.0):
        stamps.append([(o.camera, o.result.timestamp) for o in in_order.step().outputs])
    assert stamps == [[("front", 0.0), ("left", 0.0)], [("front", 0.1)], [("front", 0.2)]]
    assert in_order.health()["front"].frames_dropped == 0


def test_restart_clears_odometry_and_map() -> None:
    scene = RigScene(2, n_frames=3)
    rig = make_rig(scene, ["front", "left"])
    for t in range(2):
        rig.put("front", scene.frame(0, t))
        rig.put("left", scene.frame(1, t))
        rig.step()
    assert len(rig.voxel_map) > 0
    rig.reset(restart_odometry=True)
    assert len(rig.voxel_map) == 0 and len(rig.odometry.trajectory) == 0
    rig.put("front", scene.frame(0, 2))
    step = rig.step()
    assert np.allclose(step.odometry.t_odom_base, np.eye(4), atol=1e-9)   # the next primary frame is odom


def test_placed_by_another_thread_the_map_is_the_one_step_would_build() -> None:
    """place_in_step=False (the node: a map thread feeds the map): step only queues each frame's points; a
    place_pending from another thread, running while later steps go on, ends with the same map as in-step
    placement, key for key."""
    import threading

    from ttt3r_ros.session.rig import MAP_BEHIND_MAX_FRAMES

    scene = RigScene(2)
    names = ["front", "left"]
    in_step, threaded = make_rig(scene, names), make_rig(scene, names, place_in_step=False)
    for t in range(2):
        for rig in (in_step, threaded):
            for c, name in enumerate(names):
                rig.put(name, scene.frame(c, t))
            rig.step()
    assert len(threaded.voxel_map) == 0 and all(h.map_frames_placed == 0 for h in threaded.health().values())
    placer = threading.Thread(target=threaded.place_pending)
    placer.start()
    for t in range(2, scene.n_frames):   # the other thread places while these steps run
        for rig in (in_step, threaded):
            for c, name in enumerate(names):
                rig.put(name, scene.frame(c, t))
            rig.step()
    placer.join()
    threaded.place_pending()
    assert sorted(threaded.voxel_map.keys().tolist()) == sorted(in_step.voxel_map.keys().tolist())
    assert [h.map_frames_placed for h in threaded.health().values()] == [scene.n_frames] * 2
    assert_map_holds(threaded, scene, {c: list(range(scene.n_frames)) for c in range(2)})
    assert MAP_BEHIND_MAX_FRAMES >= 1


def test_a_map_thread_too_far_behind_loses_the_oldest_frames_counted() -> None:
    from ttt3r_ros.session.rig import MAP_BEHIND_MAX_FRAMES

    n_frames = MAP_BEHIND_MAX_FRAMES + 3
    scene = RigScene(1, n_frames=n_frames)
    rig = make_rig(scene, ["front"], place_in_step=False, placement_wait_frames=0)
    for t in range(n_frames):
        rig.put("front", scene.frame(0, t))
        rig.step()
    health = rig.health()["front"]
    assert health.map_frames_unplaced == 3 and "map thread" in health.last_error
    assert rig.place_pending() == MAP_BEHIND_MAX_FRAMES
    assert_map_holds(rig, scene, {0: list(range(3, n_frames))})   # the newest frames made it


def test_points_queued_before_a_map_restart_never_reach_the_new_map() -> None:
    scene = RigScene(1, n_frames=3)
    rig = make_rig(scene, ["front"], place_in_step=False)
    for t in range(2):
        rig.put("front", scene.frame(0, t))
        rig.step()
    rig.reset(restart_odometry=True)
    assert rig.place_pending() == 0 and len(rig.voxel_map) == 0
    rig.put("front", scene.frame(0, 2))
    rig.step()
    assert rig.place_pending() == 1 and len(rig.voxel_map) > 0


def test_rig_refuses_inconsistent_setups() -> None:
    scene = RigScene(2, n_frames=1)
    with pytest.raises(ValueError, match="build_map=False"):
        CameraRig(BatchedReconstructor(scene.net, 2, size=SIZE), ["a", "b"])
    engine = BatchedReconstructor(scene.net, 2, size=SIZE, build_map=False)
    with pytest.raises(ValueError, match="2 streams for 3 cameras"):
        CameraRig(engine, ["a", "b", "c"])
    with pytest.raises(ValueError, match="distinct"):
        CameraRig(engine, ["a", "a"])
    rig = CameraRig(engine, ["a", "b"])
    with pytest.raises(KeyError, match="unknown camera 'c'"):
        rig.put("c", scene.frame(0, 0))
    with pytest.raises(ValueError, match="rigid"):
        rig.set_extrinsic("a", np.diag([2.0, 1, 1, 1]))


def test_tiny_model_one_model_for_cameras_of_two_image_sizes() -> None:
    from ttt3r_ros.session.build import open_session
    from ttt3r_ros.session.settings import SessionConfig

    session = open_session(SessionConfig(model_config="tiny", image_size=64, device="cpu", warmup_frames=0,
                                         weights="random", confidence_threshold=1.0))
    engine = session.new_batched_engine(3, build_map=False)
    assert engine.model is session.model and engine.config.confidence_threshold == 1.0
    rig = CameraRig(engine, ["front", "left", "right"], on_invalid=session.handle_invalid)
    rng = np.random.default_rng(0)
    for name, mount in zip(rig.camera_names, MOUNTS):
        rig.set_extrinsic(name, mount)
    sizes = {"front": (48, 64), "left": (48, 64), "right": (64, 48)}   # portrait: another model size
    for t in range(3):
        for name, (h, w) in sizes.items():
            if name != "left" or t != 1:   # left silent once
                rig.put(name, RigFrame(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), 0.1 * t))
        step = rig.step()
        expected = ["front", "right"] if t == 1 else ["front", "left", "right"]
        assert [o.camera for o in step.outputs] == expected and not step.rejected
        assert step.output("right").result.model_size == (64, 48)
        assert step.output("front").result.model_size == (48, 64)
        assert step.odometry is not None and np.all(np.isfinite(step.odometry.t_odom_base))
    health = rig.health()
    assert [health[n].frames_processed for n in rig.camera_names] == [3, 2, 3]
    assert all(np.isfinite(health[n].latency_ms) for n in rig.camera_names)
    assert len(rig.voxel_map) > 0
    assert [rig.engine.frames_processed(s) for s in range(3)] == [3, 2, 3]


def _tiny_rig(names: list[str]) -> CameraRig:
    from ttt3r_ros.session.build import open_session
    from ttt3r_ros.session.settings import SessionConfig

    session = open_session(SessionConfig(model_config="tiny", image_size=64, device="cpu", warmup_frames=0,
                                         weights="random", confidence_threshold=1.0))
    rig = CameraRig(session.new_batched_engine(len(names), build_map=False), names,
                    on_invalid=session.handle_invalid)
    for name, mount in zip(names, MOUNTS):
        rig.set_extrinsic(name, mount)
    return rig


def test_camera_models_pass_through_undistorted_and_one_of_another_size_is_ignored() -> None:
    from ttt3r_ros.engine.camera_model import CameraModel

    rig = _tiny_rig(["front", "left"])
    k = pinhole(FOCAL, H, W)
    distorted = CameraModel.create(k, [-0.2, 0.05, 0.0, 0.0, 0.0], "plumb_bob", W, H)
    other_size = CameraModel.create(pinhole(FOCAL, 2 * H, 2 * W), [], "plumb_bob", 2 * W, 2 * H)
    rng = np.random.default_rng(1)
    rig.put("front", RigFrame(rng.integers(0, 255, (H, W, 3), dtype=np.uint8), 0.0, camera_model=distorted))
    rig.put("left", RigFrame(rng.integers(0, 255, (H, W, 3), dtype=np.uint8), 0.0, camera_model=other_size))
    step = rig.step()
    assert [o.camera for o in step.outputs] == ["front", "left"] and not step.rejected
    # the distorted camera was undistorted: its calibration is the undistorted camera's, not K
    k_used = step.output("front").result.intrinsics_input
    assert np.allclose(k_used, distorted.new_camera_matrix) and not np.allclose(k_used, k)
    assert "front" not in step.notes
    assert "differs from the image size" in step.notes["left"]
    # a frame with both a K and a camera model is refused (for that camera alone)
    rig.put("front", RigFrame(rng.integers(0, 255, (H, W, 3), dtype=np.uint8), 0.1, intrinsics=k,
                              camera_model=distorted))
    rig.put("left", RigFrame(rng.integers(0, 255, (H, W, 3), dtype=np.uint8), 0.1))
    step = rig.step()
    assert "both intrinsics and a camera model" in step.rejected["front"]
    assert [o.camera for o in step.outputs] == ["left"]


def test_warm_up_steps_every_batch_size_then_starts_clean() -> None:
    rig = _tiny_rig(["front", "left", "back"])
    assert rig.warm_up(1, (H, W)) > 0
    assert [rig.engine.frames_processed(s) for s in range(3)] == [0, 0, 0]
    assert all(len(rig.engine.trajectory_of(s)) == 0 for s in range(3))
    assert len(rig.voxel_map) == 0 and all(h.frames_processed == 0 for h in rig.health().values())
    rig.put("front", RigFrame(np.zeros((H, W, 3), dtype=np.uint8), 0.0))
    step = rig.step()
    assert step.odometry is not None and np.allclose(step.odometry.t_odom_base, np.eye(4), atol=1e-6)
    with pytest.raises(RuntimeError, match="before the first frame"):
        rig.warm_up(1, (H, W))
