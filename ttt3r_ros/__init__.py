"""ttt3r_ros: TTT3R monocular reconstruction as a library, command line and ROS 2 node.

Layers (each usable without the one above it):
  ttt3r_ros.model    pure PyTorch CUT3R/TTT3R network, checkpoints, update rules
  ttt3r_ros.engine   streaming reconstructor, preprocessing, geometry and frame conventions, voxel map, exports
  ttt3r_ros.session  settings (the one table of defaults), model/engine construction, odometry bookkeeping,
                     image decoding and message layouts shared by the node and the offline tools (no ROS)
  ttt3r_ros.offline  rosbag2/folder/video readers and the map/eval/demo commands (no ROS install needed)
  ttt3r_ros.ros      the ROS 2 node (the only place that imports rclpy)
"""
import pkgutil as _pkgutil

# The rosidl-generated interfaces (ttt3r_ros.msg, ttt3r_ros.srv) are installed by CMake into an install prefix
# (a colcon install space, or the venv) while this source tree may be imported from elsewhere (pip editable
# install). Let the package span every `ttt3r_ros` folder on sys.path so both halves import as one package.
__path__ = _pkgutil.extend_path(__path__, __name__)

__version__ = "0.1.0"
