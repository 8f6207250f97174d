"""Offline tools: no ROS installation needed (rosbag2 files are read and written with `rosbags`; nothing here
imports rclpy).

They translate files into the session layer (``ttt3r_ros.session``: settings, model and engine construction,
odometry bookkeeping, image decoding and message layouts shared with the node) and its results back into files.
This package never imports ``ttt3r_ros.ros``.

Modules, one job each:
  readers          frame sources: rosbag2 (Image/CompressedImage + CameraInfo), image folder, video; prefetching
  bag_io           opening bags, topic summaries
  bag_writing      atomic bag writer, rosbags message factory (the session's message layouts fill it)
  result_bag       odometry/TF/path/cloud/map result bag
  mapping          the mapping loop (periodic + interrupt-safe outputs, run.json)
  evaluation       evo-based ATE/RPE, plot
  *_command        the `ttt3r-ros` subcommands map (typed: `MapOptions` + `map_input`), eval, bag-info,
                   make-bag, demo
"""
