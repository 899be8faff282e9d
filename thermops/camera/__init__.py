"""The camera as an instrument: calibration schema (counts <-> degC), pinhole geometry,
sensor model, the calibration registry and the pure comparison of two calibrations."""
