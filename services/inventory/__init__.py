"""Listing jobs: containers listed in chunks, blobs probed in place."""
