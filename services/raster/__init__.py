"""Raster steps as small functions with explicit options: inspect, tiling, COG conversion, VRTs."""
