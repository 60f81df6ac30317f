"""File scoring: the streaming pipeline (rows in == rows out), the upload spool and the `rnnserve-score` CLI."""
