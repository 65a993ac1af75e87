"""What turns a trigger's input into rows for the engine: HTTP bodies and envelopes
(``webhook``, ``envelope``), queue messages and claim checks (``messages``, ``claimcheck``,
``queue_ingest``), uploaded files (``formats``, ``blob_ingest``) and BlobCreated events
(``blob_events``).
"""
