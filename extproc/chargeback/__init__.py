"""Chargeback: model prices, the cost of each request, latency buckets of the rollups."""
