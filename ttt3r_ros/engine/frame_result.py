"""One frame's outputs (``FrameResult``): poses on the host, dense maps on the model's device until read.

The engine's last stage builds it from the step's outputs. Host copies are made once on first read and cached; on
the CUDA fast path the engine hands over arrays it is already copying asynchronously (fresh pinned memory,
``host_copies``) with an event to wait for on the first read.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from . import geometry
from .geometry import ResizeCrop


class FrameResult:
    """One frame's outputs. Dense tensors stay on the model's device until asked for; host copies are cached.

    Host-side properties (numpy): camera_to_world, camera_to_world_model, base_in_odom, intrinsics_model,
    intrinsics_input, focal_model, intrinsics_network, focal_disagreement, depth, confidence, colour, points_camera,
    points_world, gate_mean/min/max.
    Device tensors: ``tensor(name)`` for name in ('points_camera', 'points_world', 'depth', 'confidence',
    'colour'). ``numpy(name)`` returns the cached host copy of any of those.
    """

    def __init__(self, *, index: int, stream: int, timestamp: float, transform: ResizeCrop,
                 camera_to_world: np.ndarray, camera_to_world_model: np.ndarray, camera_to_base: np.ndarray,
                 points_camera: torch.Tensor, confidence: torch.Tensor, colour: torch.Tensor,
                 gate: torch.Tensor | None, intrinsics_input: np.ndarray | None, was_reset: bool,
                 chunk_index: int, timings_ms: dict[str, float], valid: bool = True, focal_pixel_stride: int = 1,
                 host: dict[str, np.ndarray] | None = None, host_ready: Any = None) -> None:
        """gate: [3] float32 (mean, min, max of the update rate: ``step_runner.gate_statistics``) on the device, or
        None when ``host`` already holds it. host: arrays being copied from the device (ready once the CUDA event
        ``host_ready`` has completed), keyed like ``numpy(name)`` plus 'gate'."""
        self.index = index
        self.stream = stream
        self.timestamp = timestamp
        self.transform = transform
        self.camera_to_world = camera_to_world
        self.camera_to_world_model = camera_to_world_model
        self.was_reset = was_reset
        self.chunk_index = chunk_index
        self.timings_ms = timings_ms
        # False: the network gave a non-finite pose, output or state (e.g. an fp16 overflow): do not publish this
        # frame; the engine has reset the stream (BatchedReconstructor._result), a session may switch precision
        # (session.build.Session.handle_invalid)
        self.valid = valid
        self._camera_to_base = camera_to_base
        self._tensors: dict[str, torch.Tensor] = {"points_camera": points_camera, "confidence": confidence,
                                                  "colour": colour}
        if gate is None and not (host and "gate" in host):
            raise ValueError("FrameResult needs a gate tensor or a host 'gate'")
        self._gate = gate
        # host copies: prefetched by the fast path (fresh pinned arrays, still being written until host_ready, a
        # CUDA event, has completed), else made on first read
        self._host: dict[str, np.ndarray] = dict(host) if host else {}
        self._host_ready = host_ready
        self._k_input_given = intrinsics_input
        self._k_model: np.ndarray | None = None
        self._k_network: np.ndarray | None = None
        self._focal_pixel_stride = focal_pixel_stride

    # ---------------------------------------------------------------------------------------------- sizes
    @property
    def model_size(self) -> tuple[int, int]:
        return self.transform.model_size

    @property
    def input_size(self) -> tuple[int, int]:
        return self.transform.input_size

    @property
    def intrinsics_source(self) -> str:
        return "calibrated" if self._k_input_given is not None else "estimated"

    # ---------------------------------------------------------------------------------------------- poses
    @property
    def base_in_odom(self) -> np.ndarray:
        """T_odom_base = T_base_cam @ T_cam0_camt @ inv(T_base_cam) (REP 103 body axes; identity at frame 0)."""
        return geometry.odom_from_camera(self._camera_to_base, self.camera_to_world)

    # ------------------------------------------------------------------------------------------ intrinsics
    @property
    def intrinsics_model(self) -> np.ndarray:
        """3x3 at model resolution: the calibration mapped through resize/crop, or the reference estimate
        (Weiszfeld focal on the self-view points, principal point (W//2, H//2))."""
        if self._k_model is None:
            if self._k_input_given is not None:
                self._k_model = geometry.intrinsics_input_to_model(self._k_input_given, self.transform)
            else:
                self._k_model = self.intrinsics_network
        return self._k_model

    @property
    def intrinsics_network(self) -> np.ndarray:
        """3x3 at model resolution implied by the network's own point map, whatever calibration was given: the
        reference estimate (Weiszfeld focal on the self-view points, principal point (W//2, H//2)). The camera
        that ``depth`` back-projects with into ``points_camera`` (up to the network's deviation from a pinhole),
        so a depth image is published with it. Computed on first read (a few reductions over the point map)."""
        if self._k_network is None:
            h, w = self.model_size
            pp = geometry.reference_principal_point(h, w)
            focal = float(geometry.estimate_focal_weiszfeld(self._tensors["points_camera"], pp,
                                                            pixel_stride=self._focal_pixel_stride))
            self._k_network = geometry.intrinsics_matrix(focal, *pp)
        return self._k_network

    @property
    def intrinsics_network_computed(self) -> bool:
        """Whether ``intrinsics_network`` has been read already (then ``focal_disagreement`` costs nothing)."""
        return self._k_network is not None

    @property
    def focal_disagreement(self) -> float | None:
        """|f_network / f_calibrated - 1| at model resolution (f_calibrated: the mean of fx and fy of the given,
        undistorted calibration mapped through resize/crop); None without a calibration. A health figure: a large
        value means the calibration does not describe the images (wrong camera_info, zoom) or the network's scale
        of the scene is off."""
        if self._k_input_given is None:
            return None
        k_cal = self.intrinsics_model
        f_cal = 0.5 * (float(k_cal[0, 0]) + float(k_cal[1, 1]))
        return abs(float(self.intrinsics_network[0, 0]) / f_cal - 1.0)

    @property
    def intrinsics_input(self) -> np.ndarray:
        """3x3 at the input image's resolution (the given calibration, or the estimate mapped back)."""
        if self._k_input_given is not None:
            return self._k_input_given
        return geometry.intrinsics_model_to_input(self.intrinsics_model, self.transform)

    @property
    def focal_model(self) -> float:
        return float(self.intrinsics_model[0, 0])

    # ----------------------------------------------------------------------------------------- dense maps
    def tensor(self, name: str) -> torch.Tensor:
        if name not in self._tensors:
            if name == "depth":
                self._tensors[name] = self._tensors["points_camera"][..., 2]
            elif name == "points_world":
                t = torch.as_tensor(self.camera_to_world, dtype=torch.float32,
                                    device=self._tensors["points_camera"].device)
                pc = self._tensors["points_camera"]
                # one [N,3]x[3,3] GEMM (a broadcast [h,w,3] @ [3,3] is a slow batched matmul on CPU)
                self._tensors[name] = torch.addmm(t[:3, 3], pc.reshape(-1, 3), t[:3, :3].T).reshape(pc.shape)
            else:
                raise KeyError(f"FrameResult has no tensor {name!r}; known: points_camera, points_world, depth, "
                               f"confidence, colour")
        return self._tensors[name]

    def _wait_host(self) -> None:
        if self._host_ready is not None:
            self._host_ready.synchronize()
            self._host_ready = None

    def numpy(self, name: str) -> np.ndarray:
        self._wait_host()
        if name not in self._host:
            self._host[name] = self.tensor(name).detach().cpu().numpy()
        return self._host[name]

    @property
    def depth(self) -> np.ndarray:
        return self.numpy("depth")

    @property
    def confidence(self) -> np.ndarray:
        return self.numpy("confidence")

    @property
    def colour(self) -> np.ndarray:
        return self.numpy("colour")

    @property
    def points_camera(self) -> np.ndarray:
        return self.numpy("points_camera")

    @property
    def points_world(self) -> np.ndarray:
        return self.numpy("points_world")

    # ------------------------------------------------------------------------------------------------ gate
    def _gate_host(self) -> np.ndarray:
        self._wait_host()
        if "gate" not in self._host:
            self._host["gate"] = self._gate.cpu().numpy()
        return self._host["gate"]

    @property
    def gate_mean(self) -> float:
        return float(self._gate_host()[0])

    @property
    def gate_min(self) -> float:
        return float(self._gate_host()[1])

    @property
    def gate_max(self) -> float:
        return float(self._gate_host()[2])
