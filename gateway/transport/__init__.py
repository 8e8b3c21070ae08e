"""What every process on the wire shares: sockets, CURVE keys, the link peer, the lazy-pirate client,
the one control-server loop, the JSON event log, the YAML config reader and the contact plan.

The link simulator depends on this package (and on :mod:`gateway.errors`) and
on nothing else of the gateway's, so everything both sides of a socket must
agree on lives here.
"""
