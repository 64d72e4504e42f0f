"""Vector files → PostGIS: sources (blob → local file / GDAL path), names, types, geometries, COPY.

A domain library: it imports neither the engine nor the job types (controllers/stage_vector.py
composes it). Reading is pyogrio (GDAL from its wheel, Arrow batches); writing is psycopg binary
COPY into a staging table, swapped into place in one transaction (``postgis.py``).
"""
