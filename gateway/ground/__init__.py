"""The ground-station daemon (``satgw receiver``): store frames, acknowledge, reassemble, decode, write PNG + JSON."""
