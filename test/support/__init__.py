"""Test support shared by several test files (stand-ins and reference transcriptions); never imported by
ttt3r_ros itself."""
