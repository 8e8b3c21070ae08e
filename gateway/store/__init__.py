"""Durable state in SQLite: opening a database the durable way, the sender's spool, the ground's frame store."""
