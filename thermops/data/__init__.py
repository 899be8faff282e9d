"""Data formats: raw clips, importers of real sets, extraction to tubelets, the
prepared-data contract and its validation."""
