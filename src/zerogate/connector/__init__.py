"""The network connector daemon: dials out to the gateway, forwards into its site."""
