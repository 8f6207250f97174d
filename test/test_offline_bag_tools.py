"""`ttt3r-ros make-bag` and `ttt3r-ros bag-info`: folders/videos to rosbag2 (read back with rosbags), bag summaries."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from test_offline_support import TYPESTORE, pattern_image, write_bag, write_image_folder
from ttt3r_ros.cli import main
from ttt3r_ros.offline.bag_io import open_bag


def read_all(bag):
    reader = open_bag(bag)
    try:
        return [(c.topic, c.msgtype, t, reader.deserialize(raw, c.msgtype)) for c, t, raw in reader.messages()]
    finally:
        reader.close()


def test_make_bag_raw_sqlite3_with_intrinsics_replays_the_folder(tmp_path, capsys):
    folder = tmp_path / "imgs"
    write_image_folder(folder, 5, times=[10.0 + 0.2 * i for i in range(5)])
    bag = tmp_path / "bag"
    rc = main(["make-bag", str(folder), str(bag), "--fx", "50", "--fy", "51", "--cx", "31.5", "--cy", "23.5",
               "--frame-id", "cam_optical"])
    assert rc == 0
    assert "ros2 bag play" in capsys.readouterr().out
    assert (bag / "metadata.yaml").is_file() and list(bag.glob("*.db3"))
    messages = read_all(bag)
    images = [m for topic, _, _, m in messages if topic == "/camera/image_raw"]
    infos = [m for topic, _, _, m in messages if topic == "/camera/camera_info"]
    assert len(images) == len(infos) == 5
    for i, msg in enumerate(images):
        assert msg.encoding == "rgb8" and msg.header.frame_id == "cam_optical"
        assert msg.header.stamp.sec == 10 and abs(msg.header.stamp.nanosec - i * 200_000_000) <= 1
        np.testing.assert_array_equal(np.asarray(msg.data).reshape(48, 64, 3), pattern_image(i))
    np.testing.assert_allclose(np.asarray(infos[0].k).reshape(3, 3), [[50, 0, 31.5], [0, 51, 23.5], [0, 0, 1]])
    assert (infos[0].width, infos[0].height) == (64, 48)


def test_make_bag_compressed_mcap_from_video_with_camera_yaml(tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 4.0, (64, 48))
    for i in range(4):
        writer.write(cv2.cvtColor(pattern_image(i), cv2.COLOR_RGB2BGR))
    writer.release()
    calib = tmp_path / "camera.yaml"
    calib.write_text("image_width: 64\nimage_height: 48\ncamera_matrix:\n  rows: 3\n  cols: 3\n"
                     "  data: [40.0, 0.0, 32.0, 0.0, 41.0, 24.0, 0.0, 0.0, 1.0]\n"
                     "distortion_model: plumb_bob\ndistortion_coefficients:\n  rows: 1\n  cols: 5\n"
                     "  data: [0.1, -0.01, 0.0, 0.0, 0.0]\n")
    bag = tmp_path / "bag"
    assert main(["make-bag", str(video), str(bag), "--compressed", "--storage", "mcap",
                 "--camera-yaml", str(calib)]) == 0
    assert list(bag.glob("*.mcap"))
    messages = read_all(bag)
    images = [m for topic, t, _, m in messages if topic == "/camera/image_raw/compressed"]
    assert [t for topic, _, t, _ in messages if topic == "/camera/image_raw/compressed"] == [
        0, 250_000_000, 500_000_000, 750_000_000]
    assert len(images) == 4 and "jpeg" in images[0].format
    decoded = cv2.imdecode(np.asarray(images[1].data), cv2.IMREAD_COLOR)
    assert decoded.shape == (48, 64, 3)
    info = next(m for topic, _, _, m in messages if topic == "/camera/camera_info")
    assert info.k[0] == 40.0 and info.k[4] == 41.0 and info.d[0] == pytest.approx(0.1)


def test_make_bag_refuses_to_overwrite_and_bad_intrinsics(tmp_path, capsys):
    folder = tmp_path / "imgs"
    write_image_folder(folder, 2)
    bag = tmp_path / "bag"
    assert main(["make-bag", str(folder), str(bag), "--fps", "5"]) == 0
    assert main(["make-bag", str(folder), str(bag), "--fps", "5"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["make-bag", str(folder), str(bag), "--fps", "5", "--overwrite", "--storage", "mcap"]) == 0
    assert list(bag.glob("*.mcap")) and not list(bag.glob("*.db3"))
    assert main(["make-bag", str(folder), str(tmp_path / "b2"), "--fps", "5", "--fx", "50"]) == 2
    assert "all four" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["make-bag", str(empty), str(tmp_path / "b3"), "--fps", "5"]) == 2
    assert "no images in" in capsys.readouterr().err
    assert not (tmp_path / "b2").exists() and not (tmp_path / "b3").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bag_info_lists_topics_types_counts_rates(tmp_path, capsys):
    bag = tmp_path / "bag"
    write_bag(bag, storage="mcap", n_frames=6, compressed=True, camera_info=True)
    assert main(["bag-info", str(bag), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["storage"] == "mcap" and info["messages"] == 18
    assert info["duration_s"] == pytest.approx(0.5, abs=1e-3)
    topics = {t["topic"]: t for t in info["topics"]}
    assert topics["/cam/image_raw/compressed"]["type"] == "sensor_msgs/msg/CompressedImage"
    assert topics["/cam/image_raw/compressed"]["count"] == 6
    assert topics["/cam/image_raw/compressed"]["rate_hz"] == pytest.approx(10.0, rel=1e-3)
    assert topics["/cam/camera_info"]["count"] == 6
    assert main(["bag-info", str(bag)]) == 0
    table = capsys.readouterr().out
    assert "storage:   mcap" in table and "/cam/camera_info" in table and "10.00" in table


def test_bag_info_errors(tmp_path, capsys):
    assert main(["bag-info", str(tmp_path / "nothing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    not_a_bag = tmp_path / "folder"
    not_a_bag.mkdir()
    (not_a_bag / "readme.txt").write_text("x")
    assert main(["bag-info", str(not_a_bag)]) == 2
    assert "not a rosbag2 folder" in capsys.readouterr().err


def test_typestore_hash_matches_so_ros2_bag_play_accepts_types(tmp_path):
    """The bags carry the Kilted type hashes (ros2 bag play checks them against the installed types)."""
    folder = tmp_path / "imgs"
    write_image_folder(folder, 1)
    bag = tmp_path / "bag"
    assert main(["make-bag", str(folder), str(bag), "--fps", "5"]) == 0
    metadata = (bag / "metadata.yaml").read_text()
    expected = TYPESTORE.hash_rihs01("sensor_msgs/msg/Image")
    assert expected in metadata
