"""pip / setuptools entry point.

On a ROS 2 workspace the package is built by colcon through CMakeLists.txt (ament_cmake: it generates the
interfaces and installs this Python package); `pip install -e .` is the path for machines without ROS.
"""
from setuptools import find_packages, setup

setup(
    name="ttt3r_ros",
    version="0.1.0",
    description="TTT3R (CUT3R + test-time-training state update) monocular odometry, depth and dense mapping for ROS 2",
    license="Apache-2.0",
    packages=find_packages(include=["ttt3r_ros", "ttt3r_ros.*"]),
    package_data={"ttt3r_ros": ["py.typed"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/ttt3r_ros"]),
        ("share/ttt3r_ros", ["package.xml"]),
    ],
    python_requires=">=3.10",
    # torch is deliberately not pinned here: scripts/setup.sh installs the CPU wheel, a Jetson or GPU host brings
    # its own build. A plain `torch` requirement would make pip fetch a multi-GB CUDA build on a fresh machine.
    install_requires=[
        "numpy",
        "torch>=2.1",
        "safetensors>=0.4",
        "pillow>=10",
        "tqdm",
        "rosbags>=0.10",
        "opencv-python-headless>=4.8",
        "evo>=1.28",
        "ruamel.yaml",  # imported directly by the offline tools (evo also depends on it)
        "matplotlib",
    ],
    extras_require={"test": ["pytest>=8", "pytest-timeout", "scipy", "hypothesis>=6"]},
    entry_points={
        "console_scripts": [
            "ttt3r-ros = ttt3r_ros.cli:main",
            "ttt3r_node = ttt3r_ros.ros.node:main",
        ],
    },
)
