"""Learning: datasets, augmentation, the training engine, distributed helpers,
self-supervision, adversarial training and metrics."""
