"""Robot profiles, the Robot interface, safety filter and watchdog (numpy only)."""
