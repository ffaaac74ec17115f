"""Customer identity: the linking rules (rules) and the service that applies them."""
