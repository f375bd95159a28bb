"""Token quotas and rate limits: windows, rules, the Redis store."""
