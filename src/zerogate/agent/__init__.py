"""The device runtime every daemon shares: identity and state directory,
enrollment, the snapshot follower, reporting, start and stop."""
