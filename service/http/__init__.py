"""The HTTP service: the app and its middleware, one module per API (v1, v2, repository, score, health), the
connection guard for uvicorn, and the page (ui/)."""
