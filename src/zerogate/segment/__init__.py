"""The segment server's host side: SSH to Linux assets with pinned host keys, preflight,
learning collection, commit-confirmed enforcement of ``inet zerogate_segment`` and
break-glass. The controller side (assets, flows, approvals) lives in the controller.
"""
