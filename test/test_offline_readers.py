"""Frame sources: rosbag2 (sqlite3/mcap, raw/compressed, CameraInfo), image folders, videos, and bad input."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from test_offline_support import K_TEST, STAMP0_NS, PERIOD_NS, write_bag, write_image_folder, pattern_image
from ttt3r_ros.offline.errors import OfflineInputError
from ttt3r_ros.offline.readers import open_frame_source


def assert_stamps(frames, stamps_ns):
    # float64 seconds at an epoch of 1.7e9 s resolve ~0.24 us; a microsecond is the bar
    assert len(frames) == len(stamps_ns)
    np.testing.assert_allclose([f.timestamp_s for f in frames], np.asarray(stamps_ns) * 1e-9, rtol=0, atol=1e-6)


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
@pytest.mark.parametrize("encoding", ["bgra8", "mono8"])
def test_raw_encodings_with_row_padding_decode_to_rgb(tmp_path, storage, encoding):
    """The reader hands rosbags messages (numpy data, padded rows) to the shared image codec. Every encoding the
    codec supports is tested on its own in test_node_conversions.py; here the two that reorder, drop or repeat
    channels, from both storages."""
    bag = tmp_path / "bag"
    stamps = write_bag(bag, storage=storage, n_frames=3, encoding=encoding, pad=5)
    with open_frame_source(bag) as source:
        frames = list(source)
    assert_stamps(frames, stamps)
    for i, frame in enumerate(frames):
        expected = pattern_image(i)
        if encoding == "mono8":
            expected = np.repeat(expected[:, :, 1:2], 3, axis=2)
        assert frame.rgb.dtype == np.uint8 and frame.rgb.shape == (48, 64, 3)
        np.testing.assert_array_equal(frame.rgb, expected)
        assert frame.intrinsics is None


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_compressed_png_and_camera_info_single_file(tmp_path, storage):
    bag = tmp_path / "bag"
    write_bag(bag, storage=storage, n_frames=4, compressed=True, camera_info=True)
    storage_file = next(p for p in bag.iterdir() if p.suffix in (".db3", ".mcap"))
    # a single storage file (no metadata.yaml next to it is needed) opens too
    with open_frame_source(storage_file, camera_info_topic="/cam/camera_info") as source:
        frames = list(source)
        assert source.describe()["image_type"] == "sensor_msgs/msg/CompressedImage"
    assert len(frames) == 4
    np.testing.assert_array_equal(frames[2].rgb, pattern_image(2))  # png is lossless
    for frame in frames:
        np.testing.assert_allclose(frame.intrinsics, K_TEST)


def test_camera_info_next_to_the_image_topic_is_found(tmp_path):
    bag = tmp_path / "bag"
    write_bag(bag, n_frames=2, compressed=True, camera_info=True)  # /cam/image_raw/compressed + /cam/camera_info
    with open_frame_source(bag) as source:
        assert source.describe()["camera_info_auto"] is True
        assert all(np.allclose(f.intrinsics, K_TEST) for f in source)
    with open_frame_source(bag, auto_camera_info=False) as source:
        assert source.describe()["camera_info_topic"] is None
        assert all(f.intrinsics is None for f in source)


def test_uncalibrated_camera_info_is_ignored_and_reported(tmp_path):
    bag = tmp_path / "bag"
    write_bag(bag, n_frames=3, camera_info=True, k=np.zeros((3, 3)))
    with open_frame_source(bag, camera_info_topic="/cam/camera_info") as source:
        frames = list(source)
        assert all(f.intrinsics is None for f in frames)
        counts = source.warnings.counts
        assert counts["uncalibrated CameraInfo"] == 3
        assert counts["no calibrated CameraInfo yet; intrinsics estimated by the model"] == 3


def test_unusable_camera_info_is_ignored_like_the_node_does(tmp_path):
    """A K the engine would refuse (last row not 0 0 1) is ignored with its reason (model intrinsics are used),
    as the live node does, instead of reaching the engine and failing every frame."""
    bag = tmp_path / "bag"
    skewed = K_TEST.copy()
    skewed[2, 0] = 5.0
    write_bag(bag, n_frames=3, camera_info=True, k=skewed)
    with open_frame_source(bag, camera_info_topic="/cam/camera_info") as source:
        frames = list(source)
        assert len(frames) == 3 and all(f.intrinsics is None for f in frames)
        assert source.warnings.counts["unusable CameraInfo"] == 3
        assert any("last row 0 0 1" in r["reason"] for r in source.warnings.records)


def test_frames_come_in_header_stamp_order(tmp_path):
    bag = tmp_path / "bag"
    stamps = write_bag(bag, n_frames=6, receive_order=[0, 2, 1, 3, 5, 4])
    with open_frame_source(bag) as source:
        frames = list(source)
    assert_stamps(frames, stamps)
    for i, frame in enumerate(frames):
        np.testing.assert_array_equal(frame.rgb, pattern_image(i))


@pytest.mark.parametrize("compressed,kinds", [(False, {1: "garbage", 3: "truncated", 4: "encoding"}),
                                              (True, {2: "badjpeg", 4: "garbage"})])
def test_corrupt_messages_mid_bag_are_skipped_and_counted(tmp_path, compressed, kinds):
    bag = tmp_path / "bag"
    good = write_bag(bag, n_frames=7, compressed=compressed, corrupt=kinds)
    with open_frame_source(bag) as source:
        frames = list(source)
        skipped = source.skipped.as_dict()
    assert_stamps(frames, good)
    assert skipped["total"] == len(kinds)
    reasons = " | ".join(r["reason"] for r in skipped["records"])
    if compressed:
        assert "corrupt compressed image" in reasons
    else:
        assert "data length" in reasons and "unsupported image encoding '16UC1'" in reasons
    assert "undecodable message" in reasons or "undecodable" in reasons


def test_wrong_topic_lists_image_topics(tmp_path):
    bag = tmp_path / "bag"
    write_bag(bag, n_frames=2)
    with pytest.raises(OfflineInputError) as err:
        open_frame_source(bag, image_topic="/front/image")
    message = str(err.value)
    assert "/front/image" in message and "/cam/image_raw [sensor_msgs/msg/Image] 2 msgs" in message
    with pytest.raises(OfflineInputError, match="not Image/CompressedImage"):
        open_frame_source(bag, image_topic="/chatter")
    with pytest.raises(OfflineInputError, match="not a CameraInfo topic"):
        open_frame_source(bag, camera_info_topic="/cam/camera_info")


def test_ambiguous_image_topic_lists_both(tmp_path):
    bag = tmp_path / "bag"
    write_bag(bag, n_frames=2, extra_image_topics=["/cam2/image_raw"])
    with pytest.raises(OfflineInputError) as err:
        open_frame_source(bag)
    assert "several image topics" in str(err.value)
    assert "/cam/image_raw" in str(err.value) and "/cam2/image_raw" in str(err.value)
    with open_frame_source(bag, image_topic="/cam2/image_raw") as source:
        assert len(list(source)) == 2


def test_missing_path_not_a_bag_and_unknown_file(tmp_path):
    with pytest.raises(OfflineInputError, match="no such file or folder"):
        open_frame_source(tmp_path / "missing.db3")
    fake = tmp_path / "fake.db3"
    fake.write_bytes(b"this is not sqlite")
    with pytest.raises(OfflineInputError, match="cannot read .* as a rosbag2"):
        open_frame_source(fake)
    fake_mcap = tmp_path / "fake.mcap"
    fake_mcap.write_bytes(b"\x89MCAP0\r\n" + b"\x00" * 10)
    with pytest.raises(OfflineInputError, match="cannot read .* as a rosbag2"):
        open_frame_source(fake_mcap)
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(OfflineInputError, match="is not a rosbag2 .* an image folder or a video"):
        open_frame_source(other)


def test_image_folder_orders_by_name_and_times(tmp_path):
    folder = tmp_path / "imgs"
    images = write_image_folder(folder, 11, times=[5.0 + 0.5 * i for i in range(11)])
    with open_frame_source(folder) as source:
        frames = list(source)
    assert len(frames) == 11
    assert [f.timestamp_s for f in frames] == [5.0 + 0.5 * i for i in range(11)]
    # natural order: img_2 before img_10
    np.testing.assert_array_equal(frames[10].rgb, images[10])
    np.testing.assert_array_equal(frames[2].rgb, images[2])


def test_image_folder_needs_fps_without_times_and_uses_it(tmp_path):
    folder = tmp_path / "imgs"
    write_image_folder(folder, 3)
    with pytest.raises(OfflineInputError, match="pass --fps"):
        open_frame_source(folder)
    with open_frame_source(folder, fps=4.0) as source:
        assert [f.timestamp_s for f in source] == [0.0, 0.25, 0.5]


def test_tum_layout_rgb_txt_in_parent(tmp_path):
    rgb = tmp_path / "rgb"
    write_image_folder(rgb, 3)
    (tmp_path / "rgb.txt").write_text("# comment\n1305031102.175304 rgb/img_1.png\n"
                                      "1305031102.211214 rgb/img_2.png\n1305031102.143139 rgb/img_0.png\n")
    for path in (rgb, tmp_path):
        with open_frame_source(path) as source:
            frames = list(source)
        assert [f.timestamp_s for f in frames] == [1305031102.143139, 1305031102.175304, 1305031102.211214]
        np.testing.assert_array_equal(frames[0].rgb, pattern_image(0))


def test_empty_folder_and_mismatched_times(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OfflineInputError, match="no images in"):
        open_frame_source(empty, fps=10)
    folder = tmp_path / "imgs"
    write_image_folder(folder, 3, times=[0.0, 1.0])
    with pytest.raises(OfflineInputError, match="2 timestamps but the folder has 3 images"):
        open_frame_source(folder)


def test_unreadable_image_in_folder_is_skipped(tmp_path):
    folder = tmp_path / "imgs"
    write_image_folder(folder, 4)
    (folder / "img_2.png").write_bytes(b"not a png")
    with open_frame_source(folder, fps=10) as source:
        frames = list(source)
        assert len(frames) == 3 and source.skipped.total == 1
        assert "unreadable image (img_2.png)" in source.skipped.records[0]["reason"]


def test_video_frames_and_timestamps(tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (64, 48))
    assert writer.isOpened()
    for i in range(6):
        writer.write(cv2.cvtColor(pattern_image(i), cv2.COLOR_RGB2BGR))
    writer.release()
    with open_frame_source(video) as source:
        frames = list(source)
        assert source.describe()["fps_from"] == "video header"
    assert len(frames) == 6
    assert [f.timestamp_s for f in frames] == pytest.approx([i / 5.0 for i in range(6)])
    assert np.abs(frames[3].rgb.astype(int) - pattern_image(3).astype(int)).mean() < 12  # lossy codec
    with open_frame_source(video, fps=2.0) as source:
        assert [f.timestamp_s for f in source][:2] == [0.0, 0.5]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 100)
    with pytest.raises(OfflineInputError, match="cannot open .* as a video"):
        open_frame_source(broken)


def test_unstamped_images_use_receive_time(tmp_path):
    from test_offline_support import TYPESTORE, image_msg
    from rosbags.rosbag2 import Writer

    bag = tmp_path / "bag"
    with Writer(bag, version=9) as writer:
        conn = writer.add_connection("/cam/image_raw", "sensor_msgs/msg/Image", typestore=TYPESTORE)
        for i in range(3):
            writer.write(conn, STAMP0_NS + i * PERIOD_NS,
                         TYPESTORE.serialize_cdr(image_msg(pattern_image(i), 0), "sensor_msgs/msg/Image"))
    with open_frame_source(bag) as source:
        frames = list(source)
        assert source.describe()["stamps_from_receive_time"] == 3
    assert_stamps(frames, [STAMP0_NS + i * PERIOD_NS for i in range(3)])


def test_duplicate_and_late_stamps_are_skipped_with_reasons(tmp_path):
    from rosbags.rosbag2 import Writer

    from test_offline_support import TYPESTORE, image_msg

    bag = tmp_path / "bag"
    # header stamps (in frame periods) in receive order; 40 is far beyond the reorder window for the late 1
    stamps = [0, 2, 2] + list(range(3, 40)) + [1]
    with Writer(bag, version=9) as writer:
        conn = writer.add_connection("/cam/image_raw", "sensor_msgs/msg/Image", typestore=TYPESTORE)
        for slot, k in enumerate(stamps):
            writer.write(conn, STAMP0_NS + slot * PERIOD_NS,
                         TYPESTORE.serialize_cdr(image_msg(pattern_image(k), STAMP0_NS + k * PERIOD_NS),
                                                 "sensor_msgs/msg/Image"))
    with open_frame_source(bag) as source:
        frames = list(source)
        counts = source.skipped.counts
    assert counts == {"duplicate stamp": 1, "stamp older than frames already processed": 1}
    assert_stamps(frames, [STAMP0_NS + k * PERIOD_NS for k in [0, 2] + list(range(3, 40))])
