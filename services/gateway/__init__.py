"""The gateway: the public API cutout.v1.Cutout."""
