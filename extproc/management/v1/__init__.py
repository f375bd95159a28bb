"""Stubs generated from ``protos/aigw/management/v1/management.proto``: do not edit.

Regenerate with ``make protos`` after changing the proto (grpcio-tools, with
``--pyi_out`` for the message types); the generated files are committed.
"""
