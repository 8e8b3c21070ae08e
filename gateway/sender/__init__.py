"""The sender daemon (``satgw sender``): accept jobs, rate-control and packetize them, send with selective repeat."""
