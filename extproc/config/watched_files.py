"""Files a config reads secrets from, watched like the config file itself.

Rotating a secret that lives in a file (a Kubernetes Secret mounted as files:
an admin token, a provider key, an org API key, a JWKS file, a moderation
service's key) changes that file, not the config. The reloader watches these
too, so a rotation takes effect within a poll interval, without a restart or a
SIGHUP: the new admin token is accepted and the old one refused, the new
provider key is sent. So are the shared AWS credentials and config files a
Bedrock provider's default credential chain reads, and a Vertex provider's
service account key file.
"""

from __future__ import annotations

import os
from pathlib import Path

from extproc.config.model import GatewayConfig
from extproc.providers.aws_signer import shared_aws_files


def secret_files(config: GatewayConfig) -> list[Path]:
    """Every file and directory the config takes a secret from."""
    paths: list[str | None] = [token.token_file for token in config.management.admin_tokens]
    for provider in config.providers:
        paths.append(provider.api_key_file)
        if provider.aws is not None:
            aws = provider.aws
            paths += [aws.access_key_id_file, aws.secret_access_key_file, aws.session_token_file]
        if provider.gcp is not None:
            paths.append(provider.gcp.credentials_file)
            if provider.gcp.credentials_file is None:
                # Application Default Credentials' key file, when the environment names one.
                paths.append(os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"))
    if any(provider.aws is not None for provider in config.providers):
        # The default chain's shared files (a provider without keys of its own signs with
        # their profile), rewritten in place by rotation tools.
        paths += [str(path) for path in shared_aws_files()]
    paths += [key.key_file for key in config.auth.api_keys]
    # A mounted Secret's directory changes (its `..data` link is swapped) on rotation.
    paths.append(config.auth.api_key_directory)
    paths += [p.jwks.file for p in config.auth.jwt_providers if p.jwks is not None]
    paths += [moderation.api_key_file for moderation in config.guardrails.moderation]
    return [Path(path) for path in paths if path]
