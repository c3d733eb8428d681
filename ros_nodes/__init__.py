"""Thin rclpy nodes and launch files over runtime/, hardware/ and sim/ (the `ros` extra)."""
