"""STAC objects (pystac) built from raster metadata records."""
