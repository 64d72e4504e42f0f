"""Signed job-completion webhooks (the job option ``callback_url``), Standard Webhooks style.

``urls`` checks callback URLs and addresses (SSRF rules), ``events`` schedules one delivery per
subscription when a job ends (called by ``services.engine.job_lifecycle`` in the same transaction),
``signing`` signs, ``sender`` makes one POST connecting only to checked addresses, and ``delivery``
runs one attempt per queue message and schedules the next one with backoff.
"""
