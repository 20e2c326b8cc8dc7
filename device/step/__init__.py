"""The update step as one compiled program (device/step/program.py), executed by numpy or the C core."""
