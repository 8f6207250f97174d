"""Opening rosbag2 recordings (sqlite3 .db3, .mcap; a bag folder or a single storage file) with rosbags, no ROS.

Also the topic summary that bag-info prints and that the map command lists when a topic is missing.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from .errors import OfflineInputError

BAG_FILE_SUFFIXES = (".db3", ".mcap")
# Bags without embedded message definitions (older sqlite3 bags) are decoded with this store's definitions.
DEFAULT_STORE = Stores.ROS2_KILTED


def default_typestore():
    return get_typestore(DEFAULT_STORE)


def looks_like_bag(path: Path) -> bool:
    """True for a storage file or a folder holding metadata.yaml or a storage file."""
    if path.is_file():
        return path.suffix in BAG_FILE_SUFFIXES or path.suffix == ".bag"
    if path.is_dir():
        if (path / "metadata.yaml").is_file():
            return True
        return any(child.suffix in BAG_FILE_SUFFIXES for child in path.iterdir())
    return False


def open_bag(path: str | Path) -> AnyReader:
    """An opened AnyReader (caller closes it), or OfflineInputError that says what is wrong with the path."""
    bag_path = Path(path)
    if not bag_path.exists():
        raise OfflineInputError(f"no such file or folder: {bag_path}")
    if bag_path.is_dir() and not (bag_path / "metadata.yaml").is_file():
        # A folder without metadata.yaml (e.g. a copied storage file): open its single storage file directly.
        storage_files = sorted(p for p in bag_path.iterdir() if p.suffix in BAG_FILE_SUFFIXES)
        if len(storage_files) == 1:
            bag_path = storage_files[0]
        elif not storage_files:
            raise OfflineInputError(f"{bag_path} is not a rosbag2 folder (no metadata.yaml, .db3 or .mcap file)")
        else:
            raise OfflineInputError(
                f"{bag_path} has no metadata.yaml and several storage files "
                f"({', '.join(p.name for p in storage_files)}); pass one file")
    reader = AnyReader([bag_path], default_typestore=default_typestore())
    try:
        reader.open()
    except Exception as err:  # rosbags raises several unrelated types for unreadable files
        raise OfflineInputError(f"cannot read {bag_path} as a rosbag2: {err}") from err
    return reader


@dataclass(frozen=True)
class TopicSummary:
    topic: str
    msgtype: str
    count: int
    rate_hz: float | None  # from receive times: (count - 1) / (last - first); None with fewer than 2 messages

    def describe(self) -> str:
        rate = f", {self.rate_hz:.2f} Hz" if self.rate_hz is not None else ""
        return f"{self.topic} [{self.msgtype}] {self.count} msgs{rate}"


def summarise_topics(reader: AnyReader, measure_rates: bool = True) -> list[TopicSummary]:
    """One entry per topic, sorted by name. Rates need a pass over the message index (no deserialisation)."""
    first_ns: dict[str, int] = {}
    last_ns: dict[str, int] = {}
    if measure_rates:
        for connection, timestamp_ns, _ in reader.messages():
            first_ns.setdefault(connection.topic, timestamp_ns)
            last_ns[connection.topic] = timestamp_ns
    by_topic: dict[str, tuple[str, int]] = {}
    for connection in reader.connections:
        msgtype, count = by_topic.get(connection.topic, (connection.msgtype, 0))
        by_topic[connection.topic] = (msgtype, count + connection.msgcount)
    summaries = []
    for topic in sorted(by_topic):
        msgtype, count = by_topic[topic]
        rate = None
        if measure_rates and count >= 2 and last_ns.get(topic, 0) > first_ns.get(topic, 0):
            rate = (count - 1) / ((last_ns[topic] - first_ns[topic]) * 1e-9)
        summaries.append(TopicSummary(topic, msgtype, count, rate))
    return summaries


def storage_identifier(reader: AnyReader) -> str:
    """'sqlite3' or 'mcap' (from the storage files' suffixes; rosbags does not expose the plugin name)."""
    kinds = set()
    for path in reader.paths:
        files = [path] if path.is_file() else list(path.iterdir())
        for file in files:
            if file.suffix == ".db3":
                kinds.add("sqlite3")
            elif file.suffix == ".mcap":
                kinds.add("mcap")
            elif file.suffix == ".bag":
                kinds.add("rosbag1")
    return ",".join(sorted(kinds)) or "unknown"
