"""Statements behind listing jobs: chunks of listed blobs and their per-chunk results (blob_chunks)."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from repositories.named_queries import NamedQueries


class BlobChunkQueries(NamedQueries):
    def delete_blob_chunks(self, job_id: str) -> int:
        return self._run("delete_blob_chunks", {"job_id": job_id})

    def insert_blob_chunk(self, job_id: str, chunk_key: str, blobs: list[dict[str, Any]]) -> None:
        params = {"job_id": job_id, "chunk_key": chunk_key, "blob_count": len(blobs), "blobs": Jsonb(blobs)}
        self._run("insert_blob_chunk", params)

    def get_blob_chunk(self, job_id: str, chunk_key: str) -> dict[str, Any] | None:
        return self._one("get_blob_chunk", {"job_id": job_id, "chunk_key": chunk_key})

    def save_blob_chunk_results(self, job_id: str, chunk_key: str, results: list[dict[str, Any]]) -> int:
        return self._run(
            "save_blob_chunk_results", {"job_id": job_id, "chunk_key": chunk_key, "results": Jsonb(results)}
        )

    def list_blob_chunk_keys(self, job_id: str) -> list[dict[str, Any]]:
        return self._all("list_blob_chunk_keys", {"job_id": job_id})
