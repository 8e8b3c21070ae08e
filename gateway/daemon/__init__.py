"""What the sender and the ground station share as daemons: typed config, start-up, the link-attached base."""
