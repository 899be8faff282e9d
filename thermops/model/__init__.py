"""The model: network, the one input preprocessing (units, resampling, normalization)
and the model card."""
