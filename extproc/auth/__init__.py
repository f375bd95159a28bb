"""Who is calling: org API keys, JWT verification and the access rules applied to both."""
