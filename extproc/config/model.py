"""The gateway's configuration schema: one YAML file, validated at load.

Every section lives here with its defaults, so the config reference in
``docs/configuration.md`` and the code never disagree. Models are frozen: a
loaded config is a snapshot that in-flight requests keep using across reloads.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator
from enum import StrEnum
from typing import Annotated, Literal, get_args
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator

from extproc.config.agents_model import AgentsConfig, agent_route_problems
from extproc.config.auth_model import AuthConfig, RouteAuthConfig
from extproc.config.egress_model import EgressConfig, egress_problems
from extproc.config.guard_model import EnrichmentConfig, GuardrailsConfig, RoutePolicies
from extproc.config.metrics_model import MetricsConfig
from extproc.config.pricing_model import PricingConfig
from extproc.config.quota_model import QuotasConfig
from extproc.config.section import Section as _Section
from extproc.config.service_urls import checked_url
from extproc.config.telemetry_model import LogConfig, TracingConfig
from extproc.config.tls_model import ListenerTlsConfig, ManagementTlsConfig, ServerTlsConfig
from extproc.event_loop import EventLoopKind
from extproc.model_names import comparable

_NAME = r"^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$"
Name = Annotated[str, Field(pattern=_NAME)]
# Fallbacks of one model (see ModelConfig.fallbacks).
MAX_FALLBACKS = 4
# store.usage_retention_days: about 274,000 years.
MAX_USAGE_RETENTION_DAYS = 100_000_000


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be HOST:PORT with a port between 1 and 65535")
    return value


class KeepaliveConfig(_Section):
    """HTTP/2 PINGs Envoy sends on its connections to the gateway (docs/operations.md).

    Both ends are rendered from these two values: Envoy pings every ``interval_s``
    and drops a connection whose ping goes unanswered for ``timeout_s``; the
    gateway's gRPC server permits pings that often, idle or not.
    """

    interval_s: float = Field(default=30.0, ge=1.0, le=3600.0)
    timeout_s: float = Field(default=10.0, ge=0.1, le=300.0)

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> KeepaliveConfig:
        # A ping still unanswered when the next one would be due means the connection
        # is not healthy: a longer wait only finds a dead connection later.
        if self.timeout_s > self.interval_s:
            raise ValueError("timeout_s must not be longer than interval_s")
        return self


class ServerConfig(_Section):
    """Where the ext_proc gRPC server and its HTTP side listen."""

    grpc_address: str = "127.0.0.1:50051"
    unix_socket: str | None = None
    http_address: str = "127.0.0.1:9464"
    grace_period_s: float = Field(default=10.0, ge=0, le=300)
    # TLS (and mTLS) between Envoy and the gateway; none: plaintext on loopback or a pod.
    tls: ServerTlsConfig | None = None
    # Worker processes (`extproc serve --workers N`): each serves ext_proc on its own
    # endpoint (grpc port + i, or unix_socket.i) and Envoy balances across them.
    workers: int = Field(default=1, ge=1, le=64)
    # auto: uvloop when installed, else asyncio's loop (extproc.event_loop).
    event_loop: EventLoopKind = "auto"
    # Envoy's pings on its connections to this server. Here rather than under `envoy`
    # because the server's permission is fixed at start: a changed interval needs a
    # restart, which a reload says for `server` fields.
    keepalive: KeepaliveConfig = KeepaliveConfig()

    _check_grpc = field_validator("grpc_address", "http_address")(_host_port)


class EnvoyConfig(_Section):
    """The parts of the rendered Envoy bootstrap that operators tune."""

    listener_address: str = "127.0.0.1"
    listener_port: int = Field(default=10000, gt=0, lt=65536)
    admin_address: str = "127.0.0.1"
    admin_port: int = Field(default=9901, gt=0, lt=65536)
    # Where Envoy reaches the gateway: defaults to server.grpc_address.
    ext_proc_address: str | None = None
    # Several gateway processes behind one Envoy (overrides ext_proc_address).
    ext_proc_addresses: tuple[str, ...] = ()
    message_timeout_ms: int = Field(default=5000, gt=0)
    failure_mode_allow: bool = False
    upstream_timeout_s: float = Field(default=300.0, gt=0)
    # Time a request spends outside its upstream calls (the gateway's phases: guardrail
    # webhooks, moderation, queuing), added to the longest wait for an answer to start
    # for Envoy's stream idle timer: slower guards need more.
    request_slack_s: float = Field(default=30.0, gt=0, le=3600)
    access_log: bool = True
    concurrency: int = Field(default=1, ge=1, le=64)
    # Pass-through requests skip the response-headers message (docs/performance.md).
    lean_responses: bool = True
    # Envoy's circuit breakers, per cluster (the gateway's own, each provider's, each
    # failover chain's): calls in flight, connections, pending calls and failovers.
    # An LLM call holds its slot for seconds to minutes; Envoy's default is 1024.
    max_concurrent_requests: int = Field(default=10_000, ge=1)
    # The largest provider answer Envoy buffers whole for the gateway (a non-streamed
    # one). One gRPC message must carry it to the gateway, which takes up to 64 MiB.
    max_response_body_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1024 * 1024, le=63 * 1024 * 1024
    )
    # HTTPS on the listener (certificate and key files, as Envoy sees them); none: HTTP.
    listener_tls: ListenerTlsConfig | None = None


class StoreConfig(_Section):
    """The Redis-protocol store. No URL means an embedded Valkey under ``data_dir``."""

    url: str | None = None
    data_dir: str = ".data/valkey"
    # Writes the store could not take (usage rollups, quota settlements), replayed later.
    spool_dir: str = ".data/spool"
    key_prefix: str = "aigw:"
    timeout_ms: int = Field(default=500, gt=0)
    # Usage rollups are kept this long; every key the gateway writes expires. Bounded
    # where "forever" (999999) still loads: past about 10^11 days the store refuses the
    # expiry itself, and every flush would have failed after a clean load.
    usage_retention_days: int = Field(default=400, ge=1, le=MAX_USAGE_RETENTION_DAYS)
    # Who created each stored Responses API response, kept this long (OpenAI keeps a
    # response 30 days); 0: no records, and any caller may continue any response.
    response_owner_retention_days: int = Field(default=30, ge=0, le=3650)

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str | None) -> str | None:
        if url is None or url == "":
            return None
        scheme = urlsplit(url).scheme
        if scheme not in {"redis", "rediss", "unix", "redis+sentinel", "redis+cluster"}:
            raise ValueError(
                "scheme must be redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://"
            )
        # What serve would refuse at start (a raw '/' in the password): check-config says
        # so too. Imported here: redis-py is not needed to read a config.
        from extproc.store.connection import url_problem

        if (problem := url_problem(url)) is not None:
            raise ValueError(problem)
        return url


class ProviderType(StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    BEDROCK = "bedrock"
    # Google Cloud Vertex AI: Claude through Anthropic's Messages API as Vertex serves it
    # (rawPredict), every other model through Vertex's OpenAI-compatible endpoint.
    VERTEX = "vertex"


class GcpConfig(_Section):
    """The Google Cloud project, region and credentials of a Vertex AI provider.

    Requests carry an OAuth2 access token, minted from a service account key file, or
    with none given from Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS``,
    gcloud's file, the metadata server of GKE, Cloud Run or Compute Engine).
    """

    project: str = Field(min_length=1, max_length=128, pattern=r"^[a-z0-9][a-z0-9.:-]*$")
    # A region (us-east5, europe-west1...), or `global`, as Vertex names its locations.
    region: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9-]+$")
    credentials_file: str | None = None
    # How long a start or a reload tries for the first token while its endpoint cannot
    # be reached or does not answer (GKE's metadata server in a pod's first seconds);
    # a reload holds the reloader that long, so no later reload applies meanwhile.
    first_token_timeout_s: float = Field(default=20.0, gt=0, le=600)


class AwsConfig(_Section):
    """AWS credentials and region for a Bedrock provider, signed with SigV4.

    Static credentials come from the values or the files; with none given,
    botocore's default chain is used (environment, web identity for Kubernetes
    service accounts, shared config, instance metadata).
    """

    region: str = Field(min_length=1)
    service: str = "bedrock"
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    access_key_id_file: str | None = None
    secret_access_key_file: str | None = None
    session_token_file: str | None = None

    @model_validator(mode="after")
    def _pairs(self) -> AwsConfig:
        has_id = self.access_key_id is not None or self.access_key_id_file is not None
        has_secret = self.secret_access_key is not None or self.secret_access_key_file is not None
        if has_id != has_secret:
            raise ValueError("set both the access key id and the secret access key, or neither")
        return self


class ProviderConfig(_Section):
    """An upstream LLM service, rendered into one Envoy cluster."""

    name: Name
    type: ProviderType = ProviderType.OPENAI
    base_url: str
    # The provider credential: given inline (usually ``${ENV_VAR}``) or read from a file.
    api_key: SecretStr | None = None
    api_key_file: str | None = None
    timeout_s: float | None = Field(default=None, gt=0)
    # Anthropic only: sent as `anthropic-version` when the client sends none.
    anthropic_version: str = "2023-06-01"
    # Bedrock only: region and credentials for SigV4.
    aws: AwsConfig | None = None
    # Vertex only: project, region and credentials for its OAuth2 tokens.
    gcp: GcpConfig | None = None
    # Bedrock and Vertex only: the anthropic-beta flags their Claude models take from
    # Anthropic clients; others are left out (Bedrock refuses a flag it does not know:
    # "invalid beta flag"; Vertex: "Unexpected value(s) ... for the anthropic-beta
    # header"). None: every flag the client sends goes on.
    anthropic_betas: tuple[str, ...] | None = None

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, url: str) -> str:
        # Only the scheme, authority and path make the provider's requests: a query
        # (Azure's `?api-version=`) was dropped from every one of them without a word,
        # and a user and password went on as part of the `:authority` sent to the
        # provider, in the clear in the rendered bootstrap, never as a credential.
        url = checked_url(
            url,
            no_query=(
                "the gateway sends none of it to the provider (Azure OpenAI: use its v1 "
                "API, https://<resource>.openai.azure.com/openai/v1, which takes no "
                "api-version)"
            ),
            no_credentials="give the provider's key in api_key",
        )
        return url.rstrip("/")

    @property
    def tls(self) -> bool:
        return urlsplit(self.base_url).scheme == "https"

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.base_url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def path_prefix(self) -> str:
        """The path the provider's API lives under, e.g. ``/v1`` for OpenAI."""
        return urlsplit(self.base_url).path.rstrip("/")

    @property
    def authority(self) -> str:
        parts = urlsplit(self.base_url)
        return parts.netloc


class ModelKind(StrEnum):
    """What a model does: which client APIs may ask for it."""

    # Chat completions and messages (and Anthropic's token counts).
    CHAT = "chat"
    # Embeddings only.
    EMBEDDINGS = "embeddings"
    # Pictures only (a GPT Image model): the Images API's routes alone. It does not fail
    # over (docs/providers.md#images-api), so such a model takes no fallbacks.
    IMAGES = "images"
    # Speech to text only (whisper-1, gpt-4o-transcribe): the audio API's routes alone.
    # It does not fail over (its form cannot be re-made by a failover attempt), so such
    # a model takes no fallbacks.
    TRANSCRIPTION = "transcription"
    # Text to speech only (tts-1, gpt-4o-mini-tts): /v1/audio/speech on the audio API's routes
    # alone. It does not fail over either, so such a model takes no fallbacks.
    SPEECH = "speech"
    # Content classification only (omni-moderation-latest, text-moderation-latest): the
    # Moderations API's routes alone. Free at OpenAI: never billed, no token reserved. It
    # does not fail over, so such a model takes no fallbacks.
    MODERATION = "moderation"
    # Rerank only (Cohere's rerank-v3.5, Jina's, Voyage's, a vLLM-served reranker): the
    # rerank routes alone (/v1/rerank, /v2/rerank).
    RERANK = "rerank"


class ModelConfig(_Section):
    """A model clients may ask for, and which provider serves it."""

    name: str = Field(min_length=1, max_length=256)
    provider: Name
    # chat, embeddings or images: requests of another kind are refused (400) before the
    # quota and the provider, and /v1/models lists the model where it can be used.
    # Unset: any route may send it, and the provider decides.
    kind: ModelKind | None = None
    # The name sent upstream, when it differs from what clients ask for.
    upstream_model: str | None = None
    # Other names clients may use for this model (e.g. `haiku` for a Bedrock model id).
    aliases: tuple[str, ...] = ()
    # Models to try, in order, when this one's provider fails (429, 5xx, timeout,
    # connection failure) before the first response byte. Each on another provider.
    # At most MAX_FALLBACKS: Envoy gets one chain per subset a caller's access rules
    # may leave (envoy_failover), 2**n of them.
    fallbacks: tuple[str, ...] = Field(default=(), max_length=MAX_FALLBACKS)


# How long a group member whose provider failed is passed over, by default (seconds).
DEFAULT_GROUP_COOLDOWN_S = 10.0


class ModelGroupMember(_Section):
    """One deployment of a model group: a configured model and its share of the requests."""

    # A model's configured name (not an alias): the member's failover chain, price and
    # provider are that model's.
    model: str = Field(min_length=1, max_length=256)
    # Requests are spread in proportion to the weights of the members that can serve them.
    weight: int = Field(default=1, ge=1, le=1_000_000)


class ModelGroupConfig(_Section):
    """One name clients ask for, served by one of several models (deployments of the same
    model on several providers), each request's member chosen at random by weight
    (docs/providers.md#load-balancing-across-deployments)."""

    name: str = Field(min_length=1, max_length=256)
    members: tuple[ModelGroupMember, ...] = Field(min_length=1)
    # A member whose provider failed a request (429, 5xx, no connection, a timeout) is
    # passed over for this long, unless every member is; 0: never passed over. Kept in
    # each gateway process's memory.
    cooldown_s: float = Field(default=DEFAULT_GROUP_COOLDOWN_S, ge=0.0, le=86_400.0)


class ModelPrefixConfig(_Section):
    """Models not listed by name, recognised by prefix (``claude-`` -> anthropic)."""

    prefix: str = Field(min_length=1)
    provider: Name


class RouteApi(StrEnum):
    OPENAI_CHAT = "openai_chat"
    OPENAI_MODELS = "openai_models"
    ANTHROPIC_MESSAGES = "anthropic_messages"
    # Anthropic's /v1/messages/count_tokens: a Messages body in, {"input_tokens": N} out;
    # nothing is generated, so nothing is billed and no token quota is reserved.
    ANTHROPIC_COUNT_TOKENS = "anthropic_count_tokens"
    # OpenAI's /v1/embeddings: input text in, vectors out; billed by prompt tokens only.
    OPENAI_EMBEDDINGS = "openai_embeddings"
    # Rerank (/v1/rerank and /v2/rerank: a query and documents in, their indexes by
    # relevance out), in the wire format Cohere defined and Jina, Voyage and vLLM serve:
    # passed through to OpenAI-compatible providers; billed by prompt tokens, or by the
    # search units Cohere reports (extproc.rerank_api).
    RERANK = "rerank"
    # OpenAI's Responses API (/v1/responses): passed through to OpenAI-compatible
    # providers, billed like chat completions (input and output tokens).
    OPENAI_RESPONSES = "openai_responses"
    # OpenAI's legacy text completions (/v1/completions: a prompt in, choices[].text
    # out): passed through to OpenAI-compatible providers, billed like chat completions.
    OPENAI_COMPLETIONS = "openai_completions"
    # OpenAI's Images API (/v1/images/generations: a prompt in, pictures out, as
    # base64; /v1/images/edits: the same with pictures to edit, as multipart/form-data):
    # passed through to OpenAI-compatible providers, billed by its usage (text and image
    # input, the pictures' tokens at the image price). Variations are refused on its
    # routes (extproc.images_api).
    OPENAI_IMAGES = "openai_images"
    # OpenAI's speech to text (/v1/audio/transcriptions and /v1/audio/translations: a
    # multipart/form-data form of an audio file in, its text out): passed through to
    # OpenAI-compatible providers, billed by its usage (audio and text input tokens and
    # output tokens, or whisper-1's seconds of audio), and text to speech
    # (/v1/audio/speech: JSON text in, audio out, billed per character of its input, or
    # by the tokens gpt-4o-mini-tts reports in its event stream: extproc.speech_api).
    OPENAI_AUDIO = "openai_audio"
    # The Responses API's compaction (/v1/responses/compact): a Responses input in, the
    # window to carry on out (its user messages and one encrypted compaction item). It
    # generates, so it is billed by its usage; it does not stream. OpenAI-compatible
    # providers only.
    OPENAI_RESPONSES_COMPACT = "openai_responses_compact"
    # The Responses API's token count (/v1/responses/input_tokens): a Responses body in,
    # {"object": "response.input_tokens", "input_tokens": N} out; as Anthropic's
    # count_tokens, nothing is generated, billed or reserved.
    OPENAI_RESPONSES_INPUT_TOKENS = "openai_responses_input_tokens"
    # A stored response, by its id (/v1/responses/{id}: retrieve, delete; its
    # input_items and cancel): served only to the caller who created it, at the provider
    # that stores it (stages.stored_responses); nothing is generated or billed.
    OPENAI_RESPONSES_STORED = "openai_responses_stored"
    # OpenAI's Moderations API (/v1/moderations: text, texts or text and image parts in,
    # a classification per input out): passed through to OpenAI-compatible providers
    # under the provider's name for the model (OpenAI's default, omni-moderation-latest,
    # when the body names none: extproc.moderations_api). OpenAI's moderation is free and
    # its answer has no usage: counted as one request for request-rate limits, never
    # billed, no token reserved, no token limit refuses it; request guards do not read its
    # input (classifying that text is its purpose).
    OPENAI_MODERATIONS = "openai_moderations"
    # The caller's own quotas, rate limits and budgets as they stand (GET
    # /aigw/v1/limits): answered by the gateway from the store, never sent upstream or
    # billed (stages.limits_view).
    AIGW_LIMITS = "aigw_limits"
    # AWS Bedrock's own Converse API (/model/{modelId}/converse and converse-stream, as
    # boto3's bedrock-runtime sends it): passed through to Bedrock providers, re-signed
    # with the gateway's AWS credentials; billed by the usage Converse reports.
    BEDROCK_CONVERSE = "bedrock_converse"
    # Bedrock's InvokeModel (/model/{modelId}/invoke and invoke-with-response-stream) with
    # Claude's body (Anthropic's Messages API as Bedrock takes it): served by a
    # bedrock_converse route, which takes Bedrock Runtime's paths under its prefix; not a
    # route's own api (RouteConfig refuses it). Passed through, re-signed, billed by
    # Claude's usage.
    BEDROCK_INVOKE = "bedrock_invoke"
    # Bedrock's CountTokens (/model/{modelId}/count-tokens): a count of a Converse or
    # InvokeModel request, served by a bedrock_converse route likewise; as Anthropic's
    # count_tokens, nothing is generated, billed or reserved.
    BEDROCK_COUNT_TOKENS = "bedrock_count_tokens"
    # Gemini's native API, as Google's SDKs and Gemini CLI call it (a path_prefix route:
    # <prefix>/{model}:generateContent, :streamGenerateContent, the model and the stream
    # named by the path, the key in x-goog-api-key): passed through to Vertex providers
    # with their access token; billed by the usageMetadata Gemini reports.
    GEMINI_GENERATE_CONTENT = "gemini_generate_content"
    # Gemini's countTokens (<prefix>/{model}:countTokens), served by a
    # gemini_generate_content route likewise; never billed.
    GEMINI_COUNT_TOKENS = "gemini_count_tokens"
    # Anthropic's Messages API at Vertex AI's paths, as Vertex's clients call it
    # (AnthropicVertex, Claude Code's Vertex mode; a path_prefix route:
    # <prefix>/projects/{project}/locations/{region}/publishers/anthropic/models/
    # {model}:rawPredict or :streamRawPredict, the model named by the path). Once its path
    # is read the request is an anthropic_messages one (extproc.vertex_client_api), sent
    # wherever those go and billed alike.
    ANTHROPIC_VERTEX = "anthropic_vertex"
    # Its token count (.../models/count-tokens:rawPredict), served by an anthropic_vertex
    # route likewise: an anthropic_count_tokens request once read, never billed.
    ANTHROPIC_VERTEX_COUNT_TOKENS = "anthropic_vertex_count_tokens"
    # Agent traffic (docs/agents.md): an MCP server or an A2A agent of agents.servers.
    MCP = "mcp"
    A2A = "a2a"


# The kind of model each client API asks for (model-list and agent routes name none).
ROUTE_MODEL_KIND = {
    RouteApi.OPENAI_CHAT: ModelKind.CHAT,
    RouteApi.ANTHROPIC_MESSAGES: ModelKind.CHAT,
    RouteApi.ANTHROPIC_COUNT_TOKENS: ModelKind.CHAT,
    RouteApi.BEDROCK_CONVERSE: ModelKind.CHAT,
    # InvokeModel takes both kinds (Titan's and Cohere's embeddings too): not listed.
    RouteApi.BEDROCK_COUNT_TOKENS: ModelKind.CHAT,
    RouteApi.OPENAI_EMBEDDINGS: ModelKind.EMBEDDINGS,
    RouteApi.RERANK: ModelKind.RERANK,
    RouteApi.OPENAI_IMAGES: ModelKind.IMAGES,
    RouteApi.OPENAI_AUDIO: ModelKind.TRANSCRIPTION,
    RouteApi.OPENAI_MODERATIONS: ModelKind.MODERATION,
    RouteApi.OPENAI_RESPONSES: ModelKind.CHAT,
    # A chat model served by an OpenAI-compatible server (vLLM, llama.cpp) completes
    # prompts too: the config has no kind of its own for completion models.
    RouteApi.OPENAI_COMPLETIONS: ModelKind.CHAT,
    RouteApi.OPENAI_RESPONSES_COMPACT: ModelKind.CHAT,
    RouteApi.OPENAI_RESPONSES_INPUT_TOKENS: ModelKind.CHAT,
    RouteApi.GEMINI_GENERATE_CONTENT: ModelKind.CHAT,
    RouteApi.GEMINI_COUNT_TOKENS: ModelKind.CHAT,
    RouteApi.ANTHROPIC_VERTEX: ModelKind.CHAT,
    RouteApi.ANTHROPIC_VERTEX_COUNT_TOKENS: ModelKind.CHAT,
}

# The client APIs that count a prompt's tokens: they generate nothing, so they are never
# billed and reserve no quota tokens (one request for request-rate limits).
# The kinds of model an audio route serves, by its path: speech to text, and text to
# speech at /v1/audio/speech.
AUDIO_MODEL_KINDS = frozenset({ModelKind.TRANSCRIPTION, ModelKind.SPEECH})


def route_takes_kind(api: RouteApi, kind: ModelKind | None) -> bool:
    """Whether a route of ``api`` serves a model of ``kind`` at some path of its; None: a
    model of no stated kind, which every route but a moderation one serves (moderation is
    never metered by tokens: only a model the config declares one is reached there)."""
    if kind is None:
        return api is not RouteApi.OPENAI_MODERATIONS
    if api is RouteApi.OPENAI_AUDIO:
        return kind in AUDIO_MODEL_KINDS
    return kind is ROUTE_MODEL_KIND.get(api)


# The provider types each client API can reach at all (backends.check_pair refuses the
# others for every request): a route's own provider of another type is refused at load.
# Chat completions reach every type, translated; the APIs not listed name no provider.
_ALL_PROVIDER_TYPES = frozenset(ProviderType)
_OPENAI_ONLY = frozenset({ProviderType.OPENAI})
_CLAUDE_TYPES = frozenset({ProviderType.ANTHROPIC, ProviderType.BEDROCK, ProviderType.VERTEX})
ROUTE_PROVIDER_TYPES = {
    RouteApi.OPENAI_CHAT: _ALL_PROVIDER_TYPES,
    RouteApi.ANTHROPIC_MESSAGES: _CLAUDE_TYPES,
    RouteApi.ANTHROPIC_COUNT_TOKENS: _CLAUDE_TYPES,
    RouteApi.ANTHROPIC_VERTEX: _CLAUDE_TYPES,
    RouteApi.OPENAI_EMBEDDINGS: frozenset(
        {ProviderType.OPENAI, ProviderType.BEDROCK, ProviderType.VERTEX}
    ),
    RouteApi.BEDROCK_CONVERSE: frozenset({ProviderType.BEDROCK}),
    RouteApi.GEMINI_GENERATE_CONTENT: frozenset({ProviderType.VERTEX}),
    RouteApi.RERANK: _OPENAI_ONLY,
    RouteApi.OPENAI_RESPONSES: _OPENAI_ONLY,
    RouteApi.OPENAI_RESPONSES_COMPACT: _OPENAI_ONLY,
    RouteApi.OPENAI_RESPONSES_INPUT_TOKENS: _OPENAI_ONLY,
    RouteApi.OPENAI_COMPLETIONS: _OPENAI_ONLY,
    RouteApi.OPENAI_IMAGES: _OPENAI_ONLY,
    RouteApi.OPENAI_AUDIO: _OPENAI_ONLY,
    RouteApi.OPENAI_MODERATIONS: _OPENAI_ONLY,
}


# The client APIs whose requests are input alone (texts to embed, documents to rank):
# billed by their prompt, nothing generated, no allowance reserved, never streamed.
INPUT_ONLY_APIS = frozenset({RouteApi.OPENAI_EMBEDDINGS, RouteApi.RERANK})

# The client APIs that count a prompt's tokens: they generate nothing, so they are never
TOKEN_COUNT_APIS = frozenset(
    {
        RouteApi.ANTHROPIC_COUNT_TOKENS,
        RouteApi.OPENAI_RESPONSES_INPUT_TOKENS,
        RouteApi.BEDROCK_COUNT_TOKENS,
        RouteApi.GEMINI_COUNT_TOKENS,
    }
)
# The client APIs that consume no tokens at all: the token counts, and OpenAI's
# moderation (free, its answer without usage). Each counts as one request for
# request-rate limits and in every ledger (zero tokens), reserves no quota tokens, is
# refused by no token or cost limit, and its answer is never read as usage.
UNMETERED_APIS = TOKEN_COUNT_APIS | {RouteApi.OPENAI_MODERATIONS}
# The APIs of a bedrock_converse route's own operations beside Converse: given to a
# request by its path (stages.routing), never a route's own api.
BEDROCK_OPERATION_APIS = frozenset({RouteApi.BEDROCK_INVOKE, RouteApi.BEDROCK_COUNT_TOKENS})
# Gemini's native API, its generateContent and countTokens (a gemini_generate_content
# route serves both, by the path's operation).
GEMINI_APIS = frozenset({RouteApi.GEMINI_GENERATE_CONTENT, RouteApi.GEMINI_COUNT_TOKENS})
# The client APIs whose body is an Anthropic Messages call (Claude's, on Bedrock's
# InvokeModel): read, guarded, enriched and capped alike, whatever the envelope.
MESSAGES_BODY_APIS = frozenset({RouteApi.ANTHROPIC_MESSAGES, RouteApi.BEDROCK_INVOKE})
# Anthropic's APIs at Vertex's paths (an anthropic_vertex route serves both, by the path),
# and the API each request becomes once its path is read (stages.chat_request).
ANTHROPIC_VERTEX_APIS = {
    RouteApi.ANTHROPIC_VERTEX: RouteApi.ANTHROPIC_MESSAGES,
    RouteApi.ANTHROPIC_VERTEX_COUNT_TOKENS: RouteApi.ANTHROPIC_COUNT_TOKENS,
}


# The client APIs whose bodies carry no chat messages for enrichment to add to (Gemini's
# contents take them: guardrails.enrichment).
_WITHOUT_MESSAGES = frozenset(
    {
        RouteApi.OPENAI_EMBEDDINGS,
        RouteApi.OPENAI_COMPLETIONS,
        RouteApi.OPENAI_IMAGES,
        RouteApi.OPENAI_AUDIO,
        RouteApi.OPENAI_MODERATIONS,
        RouteApi.RERANK,
    }
)

# A DNS name, or a wildcard for every name under one (``*.gateway.local``); no port.
_HOST = re.compile(
    r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
)
_MAX_HOST = 253


# What Envoy's path normalisation (normalize_path, merge_slashes) rewrites, so a route
# path holding it could never be matched: a backslash becomes a slash, these characters
# are percent-encoded, and a client percent-encodes whitespace and non-ASCII (sent raw,
# Envoy refuses the request).
_REWRITTEN_CHARACTERS = frozenset('\\"<>`{}|^')
# Percent-encoded unreserved characters (letters, digits, -._~), which Envoy decodes.
_DECODED_ESCAPE = re.compile(r"%(?:3[0-9]|4[1-9a-f]|5[0-9a]|6[1-9a-f]|7[0-9a]|2[de]|5f|7e)", re.I)


def _unreachable_path(path: str) -> str | None:
    """Why no request path could ever equal (or start with) ``path``, or None."""
    for char in path:
        if char in _REWRITTEN_CHARACTERS or not " " < char < "\x7f":
            return f"holds {char!r}, which Envoy rewrites (or a client percent-encodes)"
    escape = _DECODED_ESCAPE.search(path)
    if escape is not None:
        decoded = chr(int(escape.group()[1:], 16))
        return f"holds {escape.group()}, which Envoy decodes to {decoded!r}"
    segments = path.split("/")[1:-1] if path.endswith("/") else path.split("/")[1:]
    if "" in segments or "." in segments or ".." in segments:
        return "holds an empty, '.' or '..' segment, which Envoy removes"
    return None


# The largest request body any limit may allow: the gateway reads it whole, and Envoy
# sends it in one gRPC message.
MAX_REQUEST_BODY_BYTES = 64 * 1_048_576


class RouteConfig(_Section):
    """A client-facing path and the API spoken on it."""

    name: Name
    # Serve the route only to requests for these hosts (virtual hosts on one
    # listener): exact names or ``*.suffix`` wildcards; none: every host.
    hosts: tuple[str, ...] = ()
    path: str | None = None
    path_prefix: str | None = None
    api: RouteApi = RouteApi.OPENAI_CHAT
    # When set, every request on this route goes to this model, whatever the body says.
    model: str | None = None
    # Where else the model may be named, strongest first: the path segment after
    # path_prefix (`/openai/gpt-4o`), a request header, a query parameter; then the body.
    model_from_path: bool = False
    model_header: str | None = None
    model_query: str | None = None
    # Serve this route from one provider: models it does not list by name are
    # sent to it under the name the client used (`/bedrock/<any model id>`).
    provider: str | None = None
    # Credentials this route accepts; default: auth.default.
    auth: RouteAuthConfig | None = None
    # Guard policies (names in guardrails.policies) and prompt enrichment.
    guardrails: RoutePolicies = ()
    enrichment: EnrichmentConfig | None = None
    # api mcp / a2a: the entry of agents.servers this route leads to.
    server: str | None = None
    # The largest body this route takes (a 413 above it); default:
    # limits.max_request_body_bytes. Its own, so that raising it for an Images API
    # route's pictures does not let every key make a worker buffer and parse that much
    # chat or agent JSON.
    max_request_body_bytes: int | None = Field(default=None, gt=0, le=MAX_REQUEST_BODY_BYTES)

    @field_validator("hosts")
    @classmethod
    def _check_hosts(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        normalized = []
        for host in hosts:
            name = host.strip().lower().removesuffix(".")
            if len(name) > _MAX_HOST or not _HOST.fullmatch(name):
                raise ValueError(
                    f"{host!r} is not a host name (openai.gateway.local) or a wildcard"
                    " (*.gateway.local); give it without a scheme, port or path"
                )
            if name in normalized:
                raise ValueError(f"{host!r} is listed twice")
            normalized.append(name)
        return tuple(normalized)

    @field_validator("path", "path_prefix")
    @classmethod
    def _check_path(cls, path: str | None) -> str | None:
        if path is not None:
            problem = _unreachable_path(path)
            if problem is not None:
                raise ValueError(
                    f"{problem}: Envoy normalises each request's path before the gateway "
                    "reads it, so no request could ever match this one"
                )
        return path

    @model_validator(mode="after")
    def _one_matcher(self) -> RouteConfig:
        if (self.path is None) == (self.path_prefix is None):
            raise ValueError("set exactly one of path and path_prefix")
        target = self.path or self.path_prefix or ""
        if not target.startswith("/") or "?" in target or "#" in target:
            raise ValueError("path must start with / and hold no query or fragment")
        if self.model_from_path and self.path_prefix is None:
            raise ValueError("model_from_path needs a path_prefix")
        if self.api in BEDROCK_OPERATION_APIS:
            raise ValueError(
                "InvokeModel and CountTokens are served by a bedrock_converse route, under "
                "its path_prefix (<prefix>/<modelId>/invoke); declare that route instead"
            )
        if self.api is RouteApi.ANTHROPIC_VERTEX_COUNT_TOKENS:
            raise ValueError(
                "Vertex's count-tokens is served by an anthropic_vertex route, under its "
                "path_prefix (<prefix>/projects/.../models/count-tokens:rawPredict); declare "
                "that route instead"
            )
        if self.api is RouteApi.ANTHROPIC_VERTEX:
            if self.path_prefix is None:
                raise ValueError(
                    "an anthropic_vertex route needs a path_prefix (clients call "
                    "<prefix>/projects/{project}/locations/{region}/publishers/anthropic/"
                    "models/{model}:rawPredict, <prefix> being their Vertex base URL's path)"
                )
            if self.model_from_path or self.model_header or self.model_query:
                # Vertex's path names the model: another place naming one would make a
                # request for a model its client never asked for.
                raise ValueError(
                    "on an anthropic_vertex route Vertex's path names the model: "
                    "model_from_path, model_header and model_query do not apply"
                )
        if self.api is RouteApi.GEMINI_COUNT_TOKENS:
            raise ValueError(
                "countTokens is served by a gemini_generate_content route, under its "
                "path_prefix (<prefix>/<model>:countTokens); declare that route instead"
            )
        if self.api is RouteApi.GEMINI_GENERATE_CONTENT and self.path_prefix is None:
            raise ValueError(
                "a gemini_generate_content route needs a path_prefix (clients call "
                "<prefix>/<model>:generateContent, e.g. /v1beta/models)"
            )
        if (
            self.api is RouteApi.OPENAI_AUDIO
            and self.path is not None
            and _audio_endpoint(self.path) not in _AUDIO_ENDPOINT_KINDS
        ):
            # Each request's endpoint is its path's last segment: on a route by this one
            # path there is none, and every request would be a 404.
            raise ValueError(
                f"an openai_audio route by path serves the audio endpoint its path ends"
                f" in (transcriptions, translations or speech), and {self.path!r} ends in"
                " none: every request on it would be a 404; end it in one"
                " (/v1/audio/transcriptions), or serve all three by path_prefix (/v1/audio)"
            )
        if self.api is RouteApi.BEDROCK_CONVERSE and self.path_prefix is None:
            # Converse names its model and operation in the path, under the prefix.
            raise ValueError(
                "a bedrock_converse route needs a path_prefix (clients call "
                "<prefix>/<modelId>/converse)"
            )
        if self.api in _WITHOUT_MESSAGES and self.enrichment is not None:
            raise ValueError(f"enrichment adds chat messages, and an {self.api} route has none")
        if self.api is RouteApi.OPENAI_RESPONSES_COMPACT and self.enrichment is not None:
            # The compacted window goes back to the client, which sends it on with its
            # next /v1/responses call: enriched there again, the route's messages would
            # pile up in the conversation (and its user messages reach the client).
            raise ValueError(
                "enrichment would fold the route's messages into the compacted window the "
                "client carries on (its next /v1/responses call is enriched again): an "
                "openai_responses_compact route takes none"
            )
        return self


class LimitsConfig(_Section):
    """Bounds on what a client may send."""

    max_request_body_bytes: int = Field(default=1_048_576, gt=0, le=MAX_REQUEST_BODY_BYTES)
    max_messages: int = Field(default=1000, gt=0)
    # Nesting of lists and objects in a JSON body; stays under orjson's 254 for writing.
    max_json_depth: int = Field(default=64, ge=8, le=200)
    # Rendered into Envoy: the request line and headers together, and how many headers.
    max_request_headers_kb: int = Field(default=64, ge=8, le=8192)
    max_request_headers: int = Field(default=100, ge=16, le=10_000)


class TelemetryConfig(_Section):
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()
    tracing: TracingConfig = TracingConfig()


def unsendable_token_problem(token: str) -> str | None:
    """Why no gRPC client can send ``token`` in its ``authorization`` header, or None.

    gRPC metadata carries printable ASCII only: a token with an accented letter, a tab
    or a line break inside it loads, and every call is then refused before it leaves
    the client ("Invalid metadata"), the management API unusable. Never quotes it."""
    if token.isascii() and token.isprintable():
        return None
    return (
        "holds a character no gRPC client can send (only printable ASCII: no accented"
        " letter, no tab or line break inside it)"
    )


# What an admin token may do, one scope per kind of call of the management API. A
# write scope includes its read: each change answers the state it leaves anyway.
AdminScope = Literal["quotas:read", "quotas:write", "keys:read", "keys:write", "usage:read"]
ADMIN_SCOPES: tuple[AdminScope, ...] = get_args(AdminScope)


def granted_scopes(scopes: tuple[AdminScope, ...] | None) -> frozenset[AdminScope]:
    """What a token configured with ``scopes`` may do: everything when unset (tokens
    configured before scopes existed keep their access), each write with its read."""
    if scopes is None:
        return frozenset(ADMIN_SCOPES)
    reads = {scope.replace(":write", ":read") for scope in scopes}
    return frozenset(scope for scope in ADMIN_SCOPES if scope in scopes or scope in reads)


class AdminTokenConfig(_Section):
    """One admin token of the management API; ``id`` names the caller in audit lines."""

    id: Name
    # The secret: given inline (usually ``${AIGW_ADMIN_TOKEN}``) or read from a file.
    token: SecretStr | None = None
    token_file: str | None = None
    # Unset: every scope. A finance job reading usage reports needs only usage:read.
    scopes: tuple[AdminScope, ...] | None = None

    @field_validator("scopes", mode="before")
    @classmethod
    def _known_scopes(cls, value: object) -> object:
        # Named with a hint here: pydantic's own message would not quote the name, since
        # a value under admin_tokens is never echoed (it may be a token).
        if isinstance(value, list | tuple):
            for name in value:
                if isinstance(name, str) and name not in ADMIN_SCOPES:
                    hint = did_you_mean(name, list(ADMIN_SCOPES))
                    raise ValueError(
                        f"unknown scope {name!r}{hint} (scopes: {', '.join(ADMIN_SCOPES)})"
                    )
        return value

    @model_validator(mode="after")
    def _one_source(self) -> AdminTokenConfig:
        if (self.token is None) == (self.token_file is None):
            raise ValueError("set exactly one of token and token_file")
        if self.token is not None and not self.token.get_secret_value().strip():
            # An empty token (an unset variable) would let `Bearer ` through.
            raise ValueError("token is empty")
        if self.token is not None:
            problem = unsendable_token_problem(self.token.get_secret_value().strip())
            if problem is not None:
                raise ValueError(f"token {problem}")
        if self.scopes == ():
            # Most likely a list emptied by mistake; a token that may do nothing is no token.
            raise ValueError(
                "scopes is empty: list what the token may do"
                f" ({', '.join(ADMIN_SCOPES)}), or leave scopes out for all of it"
            )
        return self


class ManagementConfig(_Section):
    """The management API (quotas at run time) on its own gRPC port."""

    # Loopback by default: Envoy's public listener never routes to it.
    address: str = "127.0.0.1:9465"
    admin_tokens: tuple[AdminTokenConfig, ...] = ()
    # Default: served when at least one admin token is configured.
    enabled: bool | None = None
    # Unset: plaintext gRPC (keep the address on loopback or a private network).
    tls: ManagementTlsConfig | None = None

    _check_address = field_validator("address")(_host_port)

    @model_validator(mode="after")
    def _tokens(self) -> ManagementConfig:
        if self.enabled and not self.admin_tokens:
            raise ValueError("enabled needs at least one entry in admin_tokens")
        ids = [token.id for token in self.admin_tokens]
        if len(set(ids)) != len(ids):
            raise ValueError("admin_tokens: every id must be unique")
        return self

    @property
    def serving(self) -> bool:
        return bool(self.admin_tokens) if self.enabled is None else self.enabled


def _prefixed_routes(
    name: str, versioned: str, api: RouteApi, endpoint: str
) -> tuple[RouteConfig, RouteConfig]:
    """The routes of one endpoint under a prefix, with and without its ``/v1``; named after
    the endpoint's path (``responses/compact``: ``...-prefix-responses-compact``)."""
    bare = versioned.rsplit("/", 1)[0]
    label = endpoint.replace("/", "-").replace("_", "-")
    return (
        RouteConfig(name=f"{name}-prefix-{label}", path=f"{versioned}/{endpoint}", api=api),
        RouteConfig(name=f"{name}-bare-prefix-{label}", path=f"{bare}/{endpoint}", api=api),
    )


# The body limit of the audio routes: OpenAI takes audio files of up to 25 MB; 26 MiB
# holds such a file (25 MB is 23.8 MiB) and its form's text fields with room to spare.
AUDIO_MAX_REQUEST_BODY_BYTES = 26 * 1_048_576


# Where the audio routes are, by the name their routes start with: /v1 and, for an SDK
# based there, /openai/v1 and /openai.
_AUDIO_BASES = (
    ("openai", "/v1"),
    ("openai-prefix", "/openai/v1"),
    ("openai-bare-prefix", "/openai"),
)


def _audio_routes() -> tuple[RouteConfig, ...]:
    """The audio routes: transcriptions, translations and text-to-speech under each of
    ``_AUDIO_BASES``, the speech-to-text ones each taking an audio file's form."""
    routes = [
        RouteConfig(
            name=f"{name}-audio-{endpoint}",
            path=f"{base}/audio/{endpoint}",
            api=RouteApi.OPENAI_AUDIO,
            # Text-to-speech's body is JSON text of 4,096 characters at most.
            max_request_body_bytes=None if endpoint == "speech" else AUDIO_MAX_REQUEST_BODY_BYTES,
        )
        for endpoint in ("transcriptions", "translations", "speech")
        for name, base in _AUDIO_BASES
    ]
    # Every other path under them: refused with a 404 naming what is served (the exact
    # paths above win over these prefixes).
    routes.extend(
        RouteConfig(name=f"{name}-audio", path_prefix=f"{base}/audio", api=RouteApi.OPENAI_AUDIO)
        for name, base in _AUDIO_BASES
    )
    return tuple(routes)


def _default_routes() -> tuple[RouteConfig, ...]:
    return (
        RouteConfig(name="openai-chat", path="/v1/chat/completions"),
        RouteConfig(name="openai-models", path="/v1/models", api=RouteApi.OPENAI_MODELS),
        RouteConfig(name="aigw-limits", path="/aigw/v1/limits", api=RouteApi.AIGW_LIMITS),
        RouteConfig(
            name="openai-embeddings", path="/v1/embeddings", api=RouteApi.OPENAI_EMBEDDINGS
        ),
        # Rerank, at Cohere's v1 (Jina's, Voyage's, vLLM's) and v2 paths; no /openai twins:
        # no OpenAI SDK reranks, and rerank clients take the gateway's root as their base.
        RouteConfig(name="rerank", path="/v1/rerank", api=RouteApi.RERANK),
        RouteConfig(name="rerank-v2", path="/v2/rerank", api=RouteApi.RERANK),
        RouteConfig(name="openai-responses", path="/v1/responses", api=RouteApi.OPENAI_RESPONSES),
        RouteConfig(
            name="openai-responses-compact",
            path="/v1/responses/compact",
            api=RouteApi.OPENAI_RESPONSES_COMPACT,
        ),
        RouteConfig(
            name="openai-responses-input-tokens",
            path="/v1/responses/input_tokens",
            api=RouteApi.OPENAI_RESPONSES_INPUT_TOKENS,
        ),
        RouteConfig(
            name="openai-completions", path="/v1/completions", api=RouteApi.OPENAI_COMPLETIONS
        ),
        # OpenAI's Moderations API: free, never billed (extproc.moderations_api).
        RouteConfig(
            name="openai-moderations", path="/v1/moderations", api=RouteApi.OPENAI_MODERATIONS
        ),
        # The Images API: generations and edits served, variations refused with a 400
        # naming what is served (extproc.images_api).
        RouteConfig(name="openai-images", path_prefix="/v1/images", api=RouteApi.OPENAI_IMAGES),
        RouteConfig(
            name="openai-prefix-images", path_prefix="/openai/v1/images", api=RouteApi.OPENAI_IMAGES
        ),
        RouteConfig(
            name="openai-bare-prefix-images",
            path_prefix="/openai/images",
            api=RouteApi.OPENAI_IMAGES,
        ),
        # Speech to text: an audio file of up to 25 MB in a form (extproc.audio_api).
        *_audio_routes(),
        # Every other path under /v1/responses: a stored response by its id (the exact
        # paths above win over this prefix).
        RouteConfig(
            name="openai-responses-stored",
            path_prefix="/v1/responses",
            api=RouteApi.OPENAI_RESPONSES_STORED,
        ),
        RouteConfig(
            name="openai-prefix-responses-stored",
            path_prefix="/openai/v1/responses",
            api=RouteApi.OPENAI_RESPONSES_STORED,
        ),
        RouteConfig(
            name="openai-bare-prefix-responses-stored",
            path_prefix="/openai/responses",
            api=RouteApi.OPENAI_RESPONSES_STORED,
        ),
        # An SDK whose base_url is <gateway>/openai/v1 or <gateway>/openai: its
        # embeddings, responses and completions calls land under the chat prefix, which
        # would read them as chat completions (exact paths win over the prefix).
        *_prefixed_routes("openai", "/openai/v1", RouteApi.OPENAI_EMBEDDINGS, "embeddings"),
        *_prefixed_routes("openai", "/openai/v1", RouteApi.OPENAI_RESPONSES, "responses"),
        *_prefixed_routes(
            "openai", "/openai/v1", RouteApi.OPENAI_RESPONSES_COMPACT, "responses/compact"
        ),
        *_prefixed_routes(
            "openai", "/openai/v1", RouteApi.OPENAI_RESPONSES_INPUT_TOKENS, "responses/input_tokens"
        ),
        *_prefixed_routes("openai", "/openai/v1", RouteApi.OPENAI_COMPLETIONS, "completions"),
        *_prefixed_routes("openai", "/openai/v1", RouteApi.OPENAI_MODERATIONS, "moderations"),
        # ...and its model list (models.list(), a chat UI's model picker), which the chat
        # prefix would refuse as a GET.
        *_prefixed_routes("openai", "/openai/v1", RouteApi.OPENAI_MODELS, "models"),
        RouteConfig(name="openai", path_prefix="/openai"),
        RouteConfig(
            name="anthropic-messages", path="/v1/messages", api=RouteApi.ANTHROPIC_MESSAGES
        ),
        RouteConfig(
            name="anthropic-count-tokens",
            path="/v1/messages/count_tokens",
            api=RouteApi.ANTHROPIC_COUNT_TOKENS,
        ),
        # Anthropic's Vertex clients (AnthropicVertex, Claude Code's Vertex mode) with
        # <gateway>/vertex as their base URL: Claude at Vertex's paths under it.
        RouteConfig(name="anthropic-vertex", path_prefix="/vertex", api=RouteApi.ANTHROPIC_VERTEX),
        # AWS SDKs' Bedrock Runtime clients with the gateway as their endpoint:
        # /model/{modelId}/converse and /model/{modelId}/converse-stream.
        RouteConfig(name="bedrock-converse", path_prefix="/model", api=RouteApi.BEDROCK_CONVERSE),
    )


class GatewayConfig(_Section):
    """The whole gateway config file."""

    version: Literal[1] = 1
    server: ServerConfig = ServerConfig()
    envoy: EnvoyConfig = EnvoyConfig()
    store: StoreConfig = StoreConfig()
    limits: LimitsConfig = LimitsConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    providers: tuple[ProviderConfig, ...] = Field(min_length=1)
    models: tuple[ModelConfig, ...] = Field(min_length=1)
    model_prefixes: tuple[ModelPrefixConfig, ...] = ()
    # Names clients ask for that several models serve in turn, by weight (load balancing).
    model_groups: tuple[ModelGroupConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = Field(default_factory=_default_routes)
    auth: AuthConfig = AuthConfig()
    quotas: QuotasConfig = QuotasConfig()
    management: ManagementConfig = ManagementConfig()
    pricing: PricingConfig = PricingConfig()
    guardrails: GuardrailsConfig = GuardrailsConfig()
    agents: AgentsConfig = AgentsConfig()
    # The forward proxy outbound traffic goes through (docs/configuration.md, egress).
    egress: EgressConfig = EgressConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> GatewayConfig:
        # Every check across sections runs, so that a config's problems come out at once
        # (the loader lists each line of the message as a problem of its own).
        problems = [
            *_reference_problems(self),
            *_store_wait_problems(self),
            *_jwks_wait_problems(self),
            *_host_route_problems(self),
            *_route_policy_problems(self),
            *_route_model_problems(self),
            *_auth_route_problems(self),
            *_key_header_subject_problems(self),
            *egress_problems(self.egress, _envoy_destinations(self)),
        ]
        if problems:
            raise ValueError("\n".join(problems))
        return self

    # The secrets the file held or read (``echoed_secrets``), starred out of its warnings.
    _secrets_read: frozenset[str] = PrivateAttr(default=frozenset())

    def request_body_limit(self, route: RouteConfig) -> int:
        """The largest body ``route`` takes: its own limit, or limits.max_request_body_bytes."""
        return route.max_request_body_bytes or self.limits.max_request_body_bytes

    def largest_request_body_bytes(self) -> int:
        """The largest body any route takes: what Envoy may hand the gateway."""
        return max(
            [self.limits.max_request_body_bytes]
            + [self.request_body_limit(route) for route in self.routes]
        )

    def provider(self, name: str) -> ProviderConfig:
        return next(p for p in self.providers if p.name == name)

    def keep_secrets_read(self, secrets: frozenset[str]) -> None:
        """Remember the secrets of the file this config was loaded from: a warning that
        quotes a value (a rule's model names) quotes one put in the wrong field too."""
        self._secrets_read = secrets

    @property
    def secrets_read(self) -> frozenset[str]:
        return self._secrets_read


def _reference_problems(config: GatewayConfig) -> Iterator[str]:
    """Names that must resolve (providers, models, fallbacks, routes' models) and what
    each provider type requires."""
    providers = [p.name for p in config.providers]
    yield from _duplicates(
        (f"providers[{index}].name", name) for index, name in enumerate(providers)
    )
    yield from _duplicates(_model_names(config.models))
    yield from _duplicates(
        (f"routes[{index}].name", route.name) for index, route in enumerate(config.routes)
    )
    known = set(providers)
    for index, provider in enumerate(config.providers):
        yield from _provider_problems(index, provider)
    for index, model in enumerate(config.models):
        if model.provider not in known:
            yield (
                f"models[{index}].provider: unknown provider {model.provider!r}"
                f" (known: {', '.join(sorted(known))})"
            )
    yield from _fallback_problems(config)
    yield from _group_problems(config)
    for index, prefix in enumerate(config.model_prefixes):
        if prefix.provider not in known:
            yield f"model_prefixes[{index}].provider: unknown provider {prefix.provider!r}"
    models = {name for m in config.models for name in (m.name, *m.aliases)}
    models.update(group.name for group in config.model_groups)
    if config.management.serving and config.management.address in (
        config.server.grpc_address,
        config.server.http_address,
    ):
        yield "management.address: must differ from the server's addresses"
    for index, route in enumerate(config.routes):
        if route.model is not None and route.model not in models:
            yield f"routes[{index}].model: unknown model {route.model!r}"
        if route.provider is not None and route.provider not in known:
            yield f"routes[{index}].provider: unknown provider {route.provider!r}"
    yield from agent_route_problems(config.routes, config.agents)


def _provider_problems(index: int, provider: ProviderConfig) -> Iterator[str]:
    if (provider.type is ProviderType.BEDROCK) != (provider.aws is not None):
        yield f"providers[{index}].aws: required for bedrock providers and only for them"
    if (provider.type is ProviderType.VERTEX) != (provider.gcp is not None):
        yield f"providers[{index}].gcp: required for vertex providers and only for them"
    if provider.type is ProviderType.VERTEX and (
        provider.api_key is not None or provider.api_key_file is not None
    ):
        yield (
            f"providers[{index}].api_key: a vertex provider authenticates with its "
            "gcp credentials (OAuth2 tokens), not an API key"
        )
    if provider.type is ProviderType.VERTEX and provider.path_prefix.endswith(("/v1", "/v1beta1")):
        yield (
            f"providers[{index}].base_url: a vertex provider's base_url is the service "
            "endpoint without a version path (https://us-east5-aiplatform.googleapis.com"
            "): the gateway adds /v1/projects/..."
        )
    if provider.anthropic_betas is not None and provider.type not in (
        ProviderType.BEDROCK,
        ProviderType.VERTEX,
    ):
        yield (
            f"providers[{index}].anthropic_betas: for bedrock and vertex providers only "
            "(an anthropic provider takes every flag Anthropic knows)"
        )


# The kinds whose APIs do not fail over, and those APIs: a model of one takes no fallbacks
# and is no other model's fallback (it would be reached only by another API's requests,
# which it does not serve).
_KIND_API = {
    ModelKind.IMAGES: "the Images API",
    ModelKind.TRANSCRIPTION: "the audio API",
    ModelKind.SPEECH: "the audio API",
    ModelKind.MODERATION: "the Moderations API",
    ModelKind.RERANK: "the rerank API",
}


def _stands_in(kind: ModelKind | None, fallback: ModelKind | None) -> bool:
    """Whether a model of kind ``fallback`` can stand in for one of ``kind`` (chat,
    embeddings or none: the kinds that take fallbacks): a fallback serves the API of the
    model it stands in for. A model of no stated kind is sent by every route (the provider
    decides): as a fallback it may stand in for either kind; as the primary its chat
    requests fail over, so its fallbacks are chat models or of no stated kind too."""
    if fallback is None:
        return True
    return fallback is (kind or ModelKind.CHAT)


def _stand_in_problem(index: int, model: ModelConfig, name: str, kind: ModelKind) -> str:
    """The load error for ``name``, of ``kind``, in ``model``'s fallbacks, which it
    cannot stand in for (``_stands_in``): a request that failed over would be sent to a
    model that does not serve its API."""
    field = f"models[{index}].fallbacks: {name!r} is {_a(kind)} {kind} model"
    if model.kind is None:
        return (
            f"{field}, and {model.name!r} states no kind: its chat requests fail over, and"
            f" {name!r} serves no chat (state kind: {kind} on {model.name!r} if it is"
            f" {_a(kind)} {kind} model too, or name a fallback that serves chat)"
        )
    return (
        f"{field}, and {model.name!r} is {_a(model.kind)} {model.kind} model: a request that"
        f" failed over would be sent to a model that serves no {model.kind} (a model's"
        " fallbacks are of its kind, or state none)"
    )


def _a(kind: ModelKind) -> str:
    return "an" if kind in (ModelKind.EMBEDDINGS, ModelKind.IMAGES) else "a"


def _fallback_problems(config: GatewayConfig) -> Iterator[str]:
    by_name = {m.name: m for m in config.models}
    alias_of = {alias: m.name for m in config.models for alias in m.aliases}
    group_names = {group.name for group in config.model_groups}
    chains: dict[str, str] = {}
    for index, model in enumerate(config.models):
        if model.fallbacks:
            other = chains.setdefault(failover_chain_name(model.name), model.name)
            if other != model.name:
                yield (
                    f"models[{index}].name: {model.name!r} and {other!r} both have fallbacks"
                    " and differ only in case or punctuation, so Envoy would get one"
                    " failover chain for two models; rename one"
                )
        unknown = [name for name in model.fallbacks if name not in by_name]
        for name in unknown:
            # A name the config knows otherwise is told as what it is, not as unknown.
            if name in alias_of:
                yield (
                    f"models[{index}].fallbacks: {name!r} is an alias; name its model"
                    f" {alias_of[name]!r}"
                )
            elif name in group_names:
                yield f"models[{index}].fallbacks: {name!r} is a model group; a fallback is a model"
            else:
                yield f"models[{index}].fallbacks: unknown model {name!r}"
        if unknown:
            continue
        chain = [model.provider, *(by_name[name].provider for name in model.fallbacks)]
        if len(set(chain)) != len(chain):
            yield f"models[{index}].fallbacks: each fallback must be on another provider"
        if model.kind in AUDIO_MODEL_KINDS and model.fallbacks:
            yield (
                f"models[{index}].fallbacks: {model.name!r} is a {model.kind} model, and"
                " the audio API does not fail over (its form cannot be re-made by a"
                " failover attempt): its requests go to its own provider alone; remove"
                " its fallbacks"
            )
        if model.kind is ModelKind.MODERATION and model.fallbacks:
            yield (
                f"models[{index}].fallbacks: {model.name!r} is a moderation model, and the"
                " Moderations API does not fail over: its requests go to its own provider"
                " alone; remove its fallbacks"
            )
        if model.kind is ModelKind.RERANK and model.fallbacks:
            yield (
                f"models[{index}].fallbacks: {model.name!r} is a rerank model, and rerank"
                " does not fail over: its requests go to its own provider alone; remove"
                " its fallbacks"
            )
        if model.kind not in _KIND_API:
            for name in model.fallbacks:
                kind = by_name[name].kind
                if kind is not None and kind in _KIND_API:
                    # Reached only by another API's requests, which it does not serve
                    # (and a moderation model priced at its zero price where pricing
                    # names none).
                    yield (
                        f"models[{index}].fallbacks: {name!r} is a {kind} model, served by"
                        f" {_KIND_API[kind]} alone, which does not fail over: it can be no"
                        " model's fallback"
                    )
                elif kind is not None and not _stands_in(model.kind, kind):
                    yield _stand_in_problem(index, model, name, kind)
        if model.kind is ModelKind.IMAGES and model.fallbacks:
            # Served as written, they were never used: an operator counting on them found
            # out when the provider failed (config.image_fallbacks warns of a model
            # without a kind, whose chat requests do fail over).
            yield (
                f"models[{index}].fallbacks: {model.name!r} is an images model, and the"
                " Images API does not fail over (an edit's form cannot be re-made by a"
                " failover attempt): its requests go to its own provider alone; remove"
                " its fallbacks"
            )


def _group_problems(config: GatewayConfig) -> Iterator[str]:
    """``model_groups``: each member a configured model (by its own name, once), all of
    one kind, and each group's name its own (no model, alias or other group has it)."""
    by_name = {m.name: m for m in config.models}
    alias_of = {alias: m.name for m in config.models for alias in m.aliases}
    # Names as rules compare them (case, Vertex's `@`): a group `GPT-4o` beside a model
    # `gpt-4o` would be one name to every access and quota rule naming either.
    model_named = {comparable(m.name): m.name for m in config.models}
    alias_named = {comparable(alias): name for alias, name in alias_of.items()}
    groups: dict[str, int] = {}
    for index, group in enumerate(config.model_groups):
        where = f"model_groups[{index}]"
        name_read = comparable(group.name)
        if name_read in model_named:
            yield (
                f"{where}.name: {group.name!r} is already a model's name"
                f" ({model_named[name_read]!r})"
            )
        elif name_read in alias_named:
            yield (
                f"{where}.name: {group.name!r} is already an alias of model"
                f" {alias_named[name_read]!r}"
            )
        other = groups.setdefault(name_read, index)
        if other != index:
            yield f"{where}.name: {group.name!r} is already the name of model_groups[{other}]"
        seen: set[str] = set()
        kinds: dict[ModelKind, str] = {}
        kindless: list[str] = []
        for position, member in enumerate(group.members):
            field = f"{where}.members[{position}].model"
            name = member.model
            if name in seen:
                yield f"{field}: {name!r} is a member twice (give it one entry and its weight)"
                continue
            seen.add(name)
            if name not in by_name:
                if name in alias_of:
                    yield (f"{field}: {name!r} is an alias; name its model {alias_of[name]!r}")
                elif any(name == g.name for g in config.model_groups):
                    yield f"{field}: {name!r} is a group; a group's members are models"
                else:
                    yield (f"{field}: unknown model {name!r}{did_you_mean(name, list(by_name))}")
                continue
            kind = by_name[name].kind
            if kind is not None:
                kinds.setdefault(kind, name)
            else:
                kindless.append(name)
        if ModelKind.MODERATION in kinds and kindless:
            # The moderation routes serve no model of unstated kind (route_takes_kind):
            # such a member's draws would be 400s, the others' classified.
            yield (
                f"{where}.members: {kinds[ModelKind.MODERATION]!r} is a moderation model and"
                f" {', '.join(map(repr, kindless))} states no kind: a moderation group's"
                " members must each be of kind moderation (a request for the group would"
                " be refused or not by the member drawn)"
            )
        if len(kinds) > 1:
            listed = ", ".join(f"{name!r} is {kind}" for kind, name in kinds.items())
            yield (
                f"{where}.members: a group's members must be of one kind ({listed}):"
                " a request for the group would be refused or not by the member drawn"
            )


def _route_model_problems(config: GatewayConfig) -> Iterator[str]:
    """A route's own ``provider`` of a type its API cannot reach, and its own ``model`` of
    a kind its API does not serve (route_takes_kind, as each request is checked): taken,
    every request on the route was refused."""
    by_name = {m.name: m for m in config.models}
    kinds: dict[str, ModelKind | None] = {
        name: m.kind for m in config.models for name in (m.name, *m.aliases)
    }
    for group in config.model_groups:
        # The group's kind is its members' (one, _group_problems), as the runtime reads it.
        members = [by_name[member.model] for member in group.members if member.model in by_name]
        kinds[group.name] = next((m.kind for m in members if m.kind is not None), None)
    types = {provider.name: provider.type for provider in config.providers}
    for index, route in enumerate(config.routes):
        article = "an" if route.api.startswith(("openai", "anthropic", "aigw")) else "a"
        reaches = ROUTE_PROVIDER_TYPES.get(route.api, _ALL_PROVIDER_TYPES)
        provider_type = types.get(route.provider or "")
        if provider_type is not None and provider_type not in reaches:
            listed = [t.value for t in ProviderType if t in reaches]
            names = " and ".join(
                [", ".join(listed[:-1]), listed[-1]] if len(listed) > 1 else listed
            )
            type_article = (
                "an" if provider_type in (ProviderType.OPENAI, ProviderType.ANTHROPIC) else "a"
            )
            yield (
                f"routes[{index}].provider: {route.provider!r} is {type_article}"
                f" {provider_type} provider, which {article} {route.api} route cannot send"
                f" to (it sends to {names} providers): every request on the route would be"
                " refused"
            )
        if route.model not in kinds or route.api not in ROUTE_MODEL_KIND:
            continue  # an unknown model is _reference_problems'; a model list takes none
        kind = kinds[route.model]
        field = f"routes[{index}].model: {route.model!r}"
        endpoint_kind = _audio_path_kind(route)
        if endpoint_kind is not None and kind in AUDIO_MODEL_KINDS and kind is not endpoint_kind:
            # The audio API serves both kinds, each at its own endpoint: a route whose one
            # path is the other endpoint's would refuse its every request (a route by
            # path_prefix serves both endpoints, the forced model's among them).
            yield (
                f"{field} is {_a(kind)} {kind} model, and the route's path {route.path!r} is"
                f" the audio API's endpoint for {endpoint_kind} models, which serves no"
                f" {kind} model (served at {_AUDIO_KIND_ENDPOINTS[kind]}): every request on"
                " the route would be refused; force it on a route of that path, or by"
                " path_prefix"
            )
            continue
        if route_takes_kind(route.api, kind):
            continue
        if kind is None:
            yield (
                f"{field} states no kind, and {article} {route.api} route serves models of"
                " kind moderation alone (every request on the route would be refused)"
            )
            continue
        if route.api is RouteApi.OPENAI_AUDIO:
            served = "transcription and speech models, by the path"
        else:
            served = f"{ROUTE_MODEL_KIND[route.api]} models"
        kind_article = "an" if kind in (ModelKind.EMBEDDINGS, ModelKind.IMAGES) else "a"
        yield (
            f"{field} is {kind_article} {kind} model, which {article} {route.api} route does"
            f" not serve (it serves {served}): every request on the route would be refused"
        )


# Where the audio API serves each kind: the last segment of the path.
_AUDIO_KIND_ENDPOINTS = {
    ModelKind.TRANSCRIPTION: "/audio/transcriptions and /audio/translations",
    ModelKind.SPEECH: "/audio/speech",
}
_AUDIO_ENDPOINT_KINDS = {
    "transcriptions": ModelKind.TRANSCRIPTION,
    "translations": ModelKind.TRANSCRIPTION,
    "speech": ModelKind.SPEECH,
}


def _audio_path_kind(route: RouteConfig) -> ModelKind | None:
    """The one kind of model an ``openai_audio`` route by ``path`` serves, by its endpoint
    (the path's last segment, as each request is read: ``audio_api.endpoint_of``); None
    for a route by ``path_prefix``, which serves both, or of another API."""
    if route.api is not RouteApi.OPENAI_AUDIO or route.path is None:
        return None
    return _AUDIO_ENDPOINT_KINDS.get(_audio_endpoint(route.path))


def _audio_endpoint(path: str) -> str:
    """The audio endpoint a request at ``path`` asks for: its last segment, a trailing
    slash aside (``audio_api.endpoint_of``, which reads each request's path)."""
    return path.rstrip("/").rsplit("/", 1)[-1]


def _store_wait_problems(config: GatewayConfig) -> Iterator[str]:
    # Envoy waits envoy.message_timeout_ms for each gateway answer. A store wait as
    # long made a frozen store cost every request Envoy's 504, where its quota rules
    # said fail_open (through) or fail_closed (503 quota_store_unavailable).
    if config.store.timeout_ms >= config.envoy.message_timeout_ms:
        yield (
            f"store.timeout_ms ({config.store.timeout_ms}) must be below"
            f" envoy.message_timeout_ms ({config.envoy.message_timeout_ms}): Envoy would"
            " answer 504 before a store that stopped answering fails a request open or"
            " closed as its quota rules say"
        )


def _jwks_wait_problems(config: GatewayConfig) -> Iterator[str]:
    # A token naming a kid the gateway has not seen waits for the JWKS refetch inside
    # its request-headers answer: a fetch allowed as long as Envoy's wait turned a hung
    # identity provider into Envoy's 504 for the request, where the gateway answers 401.
    limit_s = config.envoy.message_timeout_ms / 1000
    for index, provider in enumerate(config.auth.jwt_providers):
        jwks = provider.jwks
        if jwks is not None and jwks.url is not None and jwks.timeout_s >= limit_s:
            yield (
                f"auth.jwt_providers[{index}].jwks.timeout_s ({jwks.timeout_s:g}) must be"
                f" below envoy.message_timeout_ms ({config.envoy.message_timeout_ms} ms):"
                " Envoy would answer 504 before a JWKS fetch that hangs gives up"
            )


def _host_route_problems(config: GatewayConfig) -> Iterator[str]:
    # Two routes for one host and one path: which one serves it would depend on
    # their order in the file. (Routes without hosts keep their older rule.)
    seen: dict[tuple[str, str], int] = {}
    for index, route in enumerate(config.routes):
        target = route.path or "prefix:" + (route.path_prefix or "").rstrip("/")
        for host in route.hosts:
            earlier = seen.setdefault((host, target), index)
            if earlier != index:
                yield (
                    f"routes[{index}].hosts: {host} already has this path on"
                    f" routes[{earlier}] ({config.routes[earlier].name})"
                )


def _route_policy_problems(config: GatewayConfig) -> Iterator[str]:
    policies = {policy.name for policy in config.guardrails.policies}
    for index, route in enumerate(config.routes):
        for name in route.guardrails:
            if name not in policies:
                yield f"routes[{index}].guardrails: unknown policy {name!r}"


def _auth_route_problems(config: GatewayConfig) -> Iterator[str]:
    """Route names in access rules and keys' ``allowed_routes`` must be routes.

    A rule whose ``routes`` name none covers no request, so the callers it was written
    to keep from its models got them (a typo failed open, silently); a key whose
    ``allowed_routes`` name none was refused everywhere with a 403 naming the route it
    called, not the name that was wrong."""
    known = [route.name for route in config.routes]
    for index, rule in enumerate(config.auth.access_rules):
        for name in rule.routes:
            if name not in known:
                yield (
                    f"auth.access_rules[{index}].routes: unknown route {name!r} (rule"
                    f" {rule.name!r} would cover no request there){did_you_mean(name, known)}"
                )
    for index, key in enumerate(config.auth.api_keys):
        for name in key.allowed_routes:
            if name not in known:
                yield (
                    f"auth.api_keys[{index}].allowed_routes: unknown route {name!r}"
                    f" (key {key.id!r}){did_you_mean(name, known)}"
                )


def did_you_mean(name: str, known: list[str]) -> str:
    """A hint for a misspelt name: configs list dozens of routes, too many to print."""
    close = difflib.get_close_matches(name, known, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _envoy_destinations(config: GatewayConfig) -> list[tuple[str, str]]:
    """Where Envoy connects outside the gateway: each provider's and agent server's config
    path and host (the egress proxy's checks name them)."""
    providers = [(f"providers[{i}]", p.host) for i, p in enumerate(config.providers)]
    servers = [(f"agents.servers[{i}]", s.host) for i, s in enumerate(config.agents.servers)]
    return providers + servers


def _key_header_subject_problems(config: GatewayConfig) -> Iterator[str]:
    # A route's own key header carries clients' keys as x-api-key does, which
    # check_subject refuses: counters keyed by it would hold the secrets.
    key_headers = {
        policy.api_key_header.lower()
        for policy in (config.auth.default, *(route.auth for route in config.routes))
        if policy is not None and policy.api_key_header
    }
    subjects = [
        *(("quotas.rules", i, rule.subject) for i, rule in enumerate(config.quotas.rules)),
        *(("agents.limits", i, rule.subject) for i, rule in enumerate(config.agents.limits)),
    ]
    for section, index, subject in subjects:
        kind, _, header = subject.partition(":")
        if kind == "header" and header in key_headers:
            yield (
                f"{section}[{index}].subject: header:{header} carries clients' "
                "credentials (a route's auth.api_key_header), which would become quota "
                "subjects in the store; use subject: api_key (or user, group) instead"
            )


def _duplicates(named: Iterable[tuple[str, str]]) -> Iterator[str]:
    """One problem per name given again, by the field (``named``: each field's path and
    the name it gives) that gives it again."""
    seen: set[str] = set()
    for field, name in named:
        if name in seen:
            yield f"{field}: duplicate name {name!r}"
        seen.add(name)


def _model_names(models: Iterable[ModelConfig]) -> Iterator[tuple[str, str]]:
    """Each model's name and aliases with the field that gives it: one namespace, by the
    model's own index (not a count over every name and alias, which named another model)."""
    for index, model in enumerate(models):
        yield f"models[{index}].name", model.name
        for alias_index, alias in enumerate(model.aliases):
            yield f"models[{index}].aliases[{alias_index}]", alias


CLUSTER_NAME = re.compile(r"[^a-z0-9_]")


def failover_chain_name(model: str) -> str:
    """The Envoy aggregate cluster (and route) of a model's failover chain."""
    return "failover_" + CLUSTER_NAME.sub("_", model.lower())


def cluster_name(provider: ProviderConfig) -> str:
    """The Envoy cluster serving a provider; one source of truth for render and routing."""
    return "provider_" + CLUSTER_NAME.sub("_", provider.name)
