"""Cutout's public contract (generated under cutout.v1) and its command-line client."""
