"""Measuring: side-by-side replay against the base model (`gati eval`) and load generation (`gati bench`)."""
