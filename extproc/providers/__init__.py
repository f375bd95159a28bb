"""How the gateway authenticates itself to providers that need more than a static header.

``aws_signer``: SigV4 signatures for Bedrock, over credentials from the config or from
botocore's default chain.
"""
