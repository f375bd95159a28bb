"""The management API: a gRPC service (``protos/aigw/management/v1``) on its own port.

``service`` answers it inside the gateway (admin-token authentication, audit
lines); ``client`` is what the ``extproc quota ...`` commands call it with.
"""
