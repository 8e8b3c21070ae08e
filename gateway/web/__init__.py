"""The ground station's live web page (``satgw web``): pictures as they land, the link, the sender's queue.

Read-only by construction: it reads the outbox's ``<id>.json`` records and
PNGs and the frame store through a read-only SQLite connection, and asks the
daemons' control sockets for their status when they answer. It can run
beside the ground station, or after it, on the same files.
"""
