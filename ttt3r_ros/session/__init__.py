"""The session layer: everything a front end (the ROS node, the offline tools, the bench) needs from the model and
the engine, with no ROS and no file-format dependency (no rclpy, no rosbags).

Modules, one job each:
  settings        the one table of defaults: `SessionConfig` (every setting with description, range, live or
                  configure-time) and its validation; node parameters, `ttt3r-ros map` flags, config/live.yaml
                  and the launch files derive from it or are checked against it
  build           weights / device / precision resolution, model and engine construction (`open_session`)
  odometry        per-frame odometry bookkeeping (`OdometryTracker`: pose, twist, covariance, tracking state)
  image_codec     sensor_msgs Image / CompressedImage / CameraInfo -> numpy (live and offline decode alike)
  message_codec   message layouts filled into any message factory (rclpy or rosbags classes): PointCloud2,
                  Pose, TransformStamped, Odometry
  snapshot        session snapshots: one engine stream + input position + provenance in one file; save, check,
                  restore (refuses other models/settings and damaged files before changing anything)
  errors          SessionError, FrameDecodeError

This file imports nothing on purpose: `ttt3r_ros.ros.conversions` imports the codecs, which must not load torch.
"""
