"""The gateway's routes other than the model APIs (those are :mod:`gateway.fronts`)."""
