"""The embedded thermal world: scene temperature field, objects and the clip synthesizer."""
