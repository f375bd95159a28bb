"""promptfoo model evaluations run against the gateway (`make eval`)."""
