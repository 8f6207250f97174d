"""Image intake off the executor: one thread takes the camera's messages straight from rcl.

Why: with the image subscription in rclpy's executor, a flood of images cost most of the node's CPU in the executor
itself (rebuilding its wait set and dispatching a callback per message, under the GIL), which starved the worker and
the publishers. Here the image (and camera_info) subscriptions belong to the node, so names, remaps and namespace
resolve exactly as before and `ros2 node info` lists them under the node, but they sit in a callback group the
executor never waits on (`IntakeOnlyGroup`); the intake thread waits on them in its own rcl wait set (the GIL is
released while it waits) and takes the serialized bytes itself.

Two modes:
- keep-latest (pull): the image subscription's DDS history is one message deep and the intake takes an image only when
  the worker asks for one (``FrameQueue.wait_for_demand``). While the worker is busy nothing is taken: newer images
  overwrite older ones inside DDS and cost no Python at all. The sequence-number gap at the next take is counted as
  frames the keep-latest policy dropped (``FrameQueue.count_dropped_upstream``), not as lost; a gap seen while the
  intake was listening without a break is a real loss (``InputLossCounter.sequence_gaps``).
- process_all_frames (push): every image is taken in order and handed to the callback, which may block on the full
  queue (back-pressure); the subscription's history (``input_qos_depth``) absorbs the rest, and what overflows it is
  counted from the sequence gaps, as before. With no queue (``queue=None``: the multi-camera node, whose
  ``session.rig.CameraRig`` keeps each camera's latest frame or queue itself) every image is pushed the same way.
camera_info is drained to its newest message, which alone is deserialized. The RMW's message-lost events of the
image subscription are taken in the same wait set.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from rclpy.callback_groups import CallbackGroup
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.qos import QoSProfile
from rclpy.serialization import deserialize_message

from ttt3r_ros.ros.frame_queue import FrameQueue
from ttt3r_ros.ros.input_loss import InputLossCounter

WAIT_SLICE_S = 0.25   # longest wait between checks of stop() (a guard condition wakes it at once anyway)


class IntakeOnlyGroup(CallbackGroup):
    """Entities the executor must never wait on or run: the intake thread takes their messages itself."""

    def can_execute(self, entity: Any) -> bool:
        return False

    def beginning_execution(self, entity: Any) -> bool:
        return False

    def ending_execution(self, entity: Any) -> None:
        return None


def image_history_depth(process_all_frames: bool, input_qos_depth: int) -> int:
    """History depth of the image subscription: keep-latest keeps one (the DDS history is the keep-latest slot: an
    image waiting there is replaced by a newer one without the node touching either); process_all_frames keeps
    `input_qos_depth` to absorb bursts while the queue is full."""
    return int(input_qos_depth) if process_all_frames else 1


class ImageIntake:
    """Owns the input subscriptions and the thread that takes from them; `stop()` before destroying the node."""

    def __init__(self, node: Any, image_type: Any, image_topic: str, image_qos: QoSProfile,
                 on_image: Callable[[bytes, dict], None], queue: FrameQueue | None, loss: InputLossCounter, *,
                 camera_info_type: Any = None, camera_info_topic: str = "", camera_info_qos: QoSProfile | None = None,
                 on_camera_info: Callable[[Any], None] | None = None, event_callbacks: Any = None,
                 thread_name: str = "ttt3r_intake") -> None:
        self._node = node
        self._queue = queue
        self._loss = loss
        self._pull = queue is not None and not queue.process_all
        self._on_image = on_image
        self._on_camera_info = on_camera_info
        self._group = IntakeOnlyGroup()
        never_called = _never_called
        self.image_subscription = node.create_subscription(image_type, image_topic, never_called, image_qos,
                                                           callback_group=self._group, raw=True,
                                                           event_callbacks=event_callbacks)
        self.camera_info_subscription = None
        if camera_info_type is not None and on_camera_info is not None:
            self.camera_info_subscription = node.create_subscription(
                camera_info_type, camera_info_topic, never_called, camera_info_qos, callback_group=self._group,
                raw=True)
        self._camera_info_type = camera_info_type
        self._events = list(self.image_subscription.event_handlers)
        self._wake = _rclpy.GuardCondition(node.context.handle)
        self._stop = threading.Event()
        self.taken = 0   # images taken from DDS (tests and profiling)
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self._thread.start()

    @property
    def subscriptions(self) -> list[Any]:
        return [s for s in (self.image_subscription, self.camera_info_subscription) if s is not None]

    def stop(self, timeout_s: float = 10.0) -> None:
        """End the thread (closing the queue first, so a back-pressured put returns). The subscriptions stay: the
        owner destroys them (node.destroy_subscription) after this returns. Call it before the context shuts down:
        shutting the context down under the thread's rcl wait aborts the process (seen with Fast DDS)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._queue is not None:
            self._queue.close()
        self._wake.trigger_guard_condition()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout_s)
        self._wake.destroy_when_not_in_use()

    # ------------------------------------------------------------------------------------ thread
    def _run(self) -> None:
        image = self.image_subscription
        info = self.camera_info_subscription
        context = self._node.context
        wait_set = _rclpy.WaitSet(2 if info is not None else 1, 1, 0, 0, 0, len(self._events), context.handle)
        timeout_ns = int(WAIT_SLICE_S * 1e9)
        listening = False   # keep-latest: listening without a break since the last image taken
        try:
            while not self._stop.is_set() and context.ok():
                if self._pull:
                    # worker busy (or nobody asking): take nothing, DDS keeps only the newest image meanwhile
                    waited = not self._queue.wait_for_demand(timeout_s=0.0)
                    if waited:
                        listening = False
                        if not self._queue.wait_for_demand(timeout_s=WAIT_SLICE_S):
                            continue
                wait_set.clear_entities()
                wait_set.add_subscription(image.handle)
                if info is not None:
                    wait_set.add_subscription(info.handle)
                wait_set.add_guard_condition(self._wake)
                for handler in self._events:
                    handler.add_to_wait_set(wait_set)
                wait_set.wait(timeout_ns)   # releases the GIL
                if self._stop.is_set():
                    break
                ready = wait_set.get_ready_entities("subscription")
                for handler in self._events:
                    if handler.is_ready(wait_set):
                        data = handler.take_data()
                        if data:
                            handler.callback(data)
                if info is not None and info.handle.pointer in ready:
                    self._take_camera_info(info)
                if image.handle.pointer in ready:
                    if self._pull:
                        listening = self._take_newest_image(image, listening)
                    else:
                        self._take_all_images(image)
                elif self._pull:
                    listening = True   # the wait covered the whole slice: nothing was left in DDS unseen
        except Exception as exc:   # the context shut down under us (SIGINT), or a bug: say it, never die silently
            if context.ok() and not self._stop.is_set():
                self._node.get_logger().error(f"image intake stopped: {type(exc).__name__}: {exc}")

    def _take(self, subscription: Any) -> tuple[bytes, dict] | None:
        with subscription.handle:
            return subscription.handle.take_message(subscription.msg_type, True)

    def _take_newest_image(self, image: Any, listening: bool) -> bool:
        newest = None
        while True:   # one message deep, so usually one take; a deeper (user) history is drained to its newest
            taken = self._take(image)
            if taken is None:
                break
            if newest is not None:   # an older one, taken and thrown away: the keep-latest policy dropped it
                self._account_gap(newest[1], listening)
                if listening:
                    self._loss.note(newest[1])   # (the node's callback notes only the image it gets)
                self._queue.count_dropped_upstream(1)
                listening = True   # the history held it: nothing between it and the next was overwritten
            newest = taken
        if newest is None:
            return listening
        self.taken += 1
        self._account_gap(newest[1], listening)
        self._on_image(newest[0], newest[1])   # the node's callback notes the sequence (no gap left) and queues it
        return True

    def _account_gap(self, info: dict, listening: bool) -> None:
        """The publisher's images before this one that nobody took: while the intake listened without a break they
        never reached the node (left for the node's callback to count as lost); otherwise the newest replaced them
        in DDS while the worker was busy, which is the keep-latest policy: counted as dropped."""
        if not listening:
            self._queue.count_dropped_upstream(self._loss.skip_to(info))

    def _take_all_images(self, image: Any) -> None:
        while not self._stop.is_set():
            taken = self._take(image)
            if taken is None:
                return
            self.taken += 1
            self._on_image(taken[0], taken[1])   # may wait on the full queue (back-pressure)

    def _take_camera_info(self, info: Any) -> None:
        newest = None
        while True:
            taken = self._take(info)
            if taken is None:
                break
            newest = taken
        if newest is not None and self._on_camera_info is not None:
            self._on_camera_info(deserialize_message(newest[0], self._camera_info_type))


def _never_called(*_: Any) -> None:
    raise AssertionError("an intake subscription was dispatched by an executor")
