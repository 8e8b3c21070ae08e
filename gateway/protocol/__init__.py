"""The sans-IO core of the link protocol: pacing, retransmit timeouts, link windows, selective repeat.

Nothing here touches a socket, a clock or a file: every call takes ``now``,
so the sender and the ground station drive it from their event loops and the
tests drive it with made-up times (in the spirit of aioquic).
"""
