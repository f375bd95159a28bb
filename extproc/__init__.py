"""AI gateway: an Envoy external processor for LLM traffic.

Reads as the request flows: ``server`` -> ``processor`` -> ``stages`` ->
``translators`` / ``store`` / ``telemetry``.
"""

__version__ = "0.1.0"
