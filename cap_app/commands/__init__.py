"""Command modules of `python -m cap_app` (see cap_app.cli)."""
