"""Offline tools: no ROS installation needed (rosbag2 files are read and written with `rosbags`; nothing here
imports rclpy).

Modules, one job each:
  readers          frame sources: rosbag2 (Image/CompressedImage + CameraInfo), image folder, video; prefetching
  image_messages   sensor_msgs Image/CompressedImage/CameraInfo -> numpy (also decodes the live node's input)
  bag_io           opening bags, topic summaries          bag_writing   atomic bag writer, message builders
  pointcloud       PointCloud2 layout and packing (one layout for the node and the result bag)
  odometry         covariance, tracking state, twist from confidence and poses (shared with the node)
  result_bag       odometry/TF/path/cloud/map result bag
  mapping          the mapping loop (periodic + interrupt-safe outputs, run.json)
  evaluation       evo-based ATE/RPE, plot                model_setup   weights/device/precision choice
  *_command        the `ttt3r-ros` subcommands map, eval, bag-info, make-bag, demo
"""
