"""The gateway daemon: WireGuard edge, routes and policy in the kernel."""
