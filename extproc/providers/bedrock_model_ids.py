"""Bedrock model ids: which foundation model an id, an inference profile or an ARN names.

Kept free of the gateway's other modules, so that anything reading a model id (the
translators, the quota's estimate of an InvokeModel body) can import it.
"""

from __future__ import annotations

# ARN resource types whose name is a model id or an inference profile id.
_ARN_MODEL_RESOURCES = ("foundation-model", "inference-profile")
# The geographic prefix of a cross-region inference profile id (us.anthropic...).
_PROFILE_REGION_GROUPS = frozenset({"us", "us-gov", "eu", "apac", "au", "ca", "jp", "global"})


def base_model_id(model_id: str) -> str:
    """The foundation model a model id names, e.g. ``amazon.titan-text-express-v1``.

    Strips the ARN of a foundation model or inference profile and the profile's
    geographic prefix (``us.``, ``eu.``...). Other ARNs (provisioned throughput, custom
    models, application inference profiles) hide their model: they are returned as is.
    """
    if model_id.startswith("arn:"):
        resource = model_id.split(":", 5)[-1]
        kind, _, name = resource.partition("/")
        if kind not in _ARN_MODEL_RESOURCES:
            return model_id
        model_id = name
    region_group, dot, rest = model_id.partition(".")
    return rest if dot and region_group in _PROFILE_REGION_GROUPS else model_id
