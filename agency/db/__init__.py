"""Persistence: SQLAlchemy 2 async tables, sessions, migrations at start."""
