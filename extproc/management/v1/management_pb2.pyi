from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetQuotaRequest(_message.Message):
    __slots__ = ("subject_kind", "subject")
    SUBJECT_KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    subject_kind: str
    subject: str
    def __init__(self, subject_kind: _Optional[str] = ..., subject: _Optional[str] = ...) -> None: ...

class ListQuotasRequest(_message.Message):
    __slots__ = ("subject_kind", "page_size", "page_token")
    SUBJECT_KIND_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    subject_kind: str
    page_size: int
    page_token: str
    def __init__(self, subject_kind: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListQuotasResponse(_message.Message):
    __slots__ = ("states", "unreadable_keys", "next_page_token")
    STATES_FIELD_NUMBER: _ClassVar[int]
    UNREADABLE_KEYS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedCompositeFieldContainer[QuotaState]
    unreadable_keys: _containers.RepeatedCompositeFieldContainer[UnreadableKey]
    next_page_token: str
    def __init__(self, states: _Optional[_Iterable[_Union[QuotaState, _Mapping]]] = ..., unreadable_keys: _Optional[_Iterable[_Union[UnreadableKey, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SetLimitRequest(_message.Message):
    __slots__ = ("subject_kind", "subject", "rule", "counter", "limit")
    SUBJECT_KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    COUNTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    subject_kind: str
    subject: str
    rule: str
    counter: str
    limit: int
    def __init__(self, subject_kind: _Optional[str] = ..., subject: _Optional[str] = ..., rule: _Optional[str] = ..., counter: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class AdjustUsageRequest(_message.Message):
    __slots__ = ("subject_kind", "subject", "rule", "counter", "delta")
    SUBJECT_KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    COUNTER_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    subject_kind: str
    subject: str
    rule: str
    counter: str
    delta: int
    def __init__(self, subject_kind: _Optional[str] = ..., subject: _Optional[str] = ..., rule: _Optional[str] = ..., counter: _Optional[str] = ..., delta: _Optional[int] = ...) -> None: ...

class ResetUsageRequest(_message.Message):
    __slots__ = ("subject_kind", "subject", "rule", "counter")
    SUBJECT_KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    COUNTER_FIELD_NUMBER: _ClassVar[int]
    subject_kind: str
    subject: str
    rule: str
    counter: str
    def __init__(self, subject_kind: _Optional[str] = ..., subject: _Optional[str] = ..., rule: _Optional[str] = ..., counter: _Optional[str] = ...) -> None: ...

class QuotaState(_message.Message):
    __slots__ = ("subject_kind", "subject", "limits")
    SUBJECT_KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    subject_kind: str
    subject: str
    limits: _containers.RepeatedCompositeFieldContainer[LimitState]
    def __init__(self, subject_kind: _Optional[str] = ..., subject: _Optional[str] = ..., limits: _Optional[_Iterable[_Union[LimitState, _Mapping]]] = ...) -> None: ...

class LimitState(_message.Message):
    __slots__ = ("rule", "counter", "kind", "limit", "configured_limit", "overridden", "used", "remaining", "window_start", "reset_at", "time_zone", "reserved")
    RULE_FIELD_NUMBER: _ClassVar[int]
    COUNTER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CONFIGURED_LIMIT_FIELD_NUMBER: _ClassVar[int]
    OVERRIDDEN_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    RESET_AT_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    rule: str
    counter: str
    kind: str
    limit: int
    configured_limit: int
    overridden: bool
    used: int
    remaining: int
    window_start: float
    reset_at: float
    time_zone: str
    reserved: int
    def __init__(self, rule: _Optional[str] = ..., counter: _Optional[str] = ..., kind: _Optional[str] = ..., limit: _Optional[int] = ..., configured_limit: _Optional[int] = ..., overridden: _Optional[bool] = ..., used: _Optional[int] = ..., remaining: _Optional[int] = ..., window_start: _Optional[float] = ..., reset_at: _Optional[float] = ..., time_zone: _Optional[str] = ..., reserved: _Optional[int] = ...) -> None: ...

class UnreadableKey(_message.Message):
    __slots__ = ("key", "reason", "subject_kind", "subject")
    KEY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    key: str
    reason: str
    subject_kind: str
    subject: str
    def __init__(self, key: _Optional[str] = ..., reason: _Optional[str] = ..., subject_kind: _Optional[str] = ..., subject: _Optional[str] = ...) -> None: ...

class CreateKeyRequest(_message.Message):
    __slots__ = ("id", "user_id", "group_id", "labels", "expires_at", "allowed_models", "allowed_routes", "allow_unknown_models", "continue_usage")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_MODELS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_ROUTES_FIELD_NUMBER: _ClassVar[int]
    ALLOW_UNKNOWN_MODELS_FIELD_NUMBER: _ClassVar[int]
    CONTINUE_USAGE_FIELD_NUMBER: _ClassVar[int]
    id: str
    user_id: str
    group_id: str
    labels: _containers.ScalarMap[str, str]
    expires_at: float
    allowed_models: _containers.RepeatedScalarFieldContainer[str]
    allowed_routes: _containers.RepeatedScalarFieldContainer[str]
    allow_unknown_models: bool
    continue_usage: bool
    def __init__(self, id: _Optional[str] = ..., user_id: _Optional[str] = ..., group_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., expires_at: _Optional[float] = ..., allowed_models: _Optional[_Iterable[str]] = ..., allowed_routes: _Optional[_Iterable[str]] = ..., allow_unknown_models: _Optional[bool] = ..., continue_usage: _Optional[bool] = ...) -> None: ...

class CreatedKey(_message.Message):
    __slots__ = ("key", "info")
    KEY_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    key: str
    info: KeyInfo
    def __init__(self, key: _Optional[str] = ..., info: _Optional[_Union[KeyInfo, _Mapping]] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ("user_id", "group_id", "status", "expiring_within_seconds", "source", "labels", "page_size", "page_token")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EXPIRING_WITHIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    group_id: str
    status: _containers.RepeatedScalarFieldContainer[str]
    expiring_within_seconds: float
    source: str
    labels: _containers.ScalarMap[str, str]
    page_size: int
    page_token: str
    def __init__(self, user_id: _Optional[str] = ..., group_id: _Optional[str] = ..., status: _Optional[_Iterable[str]] = ..., expiring_within_seconds: _Optional[float] = ..., source: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys", "unreadable_keys", "next_page_token")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    UNREADABLE_KEYS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[KeyInfo]
    unreadable_keys: _containers.RepeatedCompositeFieldContainer[UnreadableKey]
    next_page_token: str
    def __init__(self, keys: _Optional[_Iterable[_Union[KeyInfo, _Mapping]]] = ..., unreadable_keys: _Optional[_Iterable[_Union[UnreadableKey, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RevokeKeyRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class SetKeyEnabledRequest(_message.Message):
    __slots__ = ("id", "enabled")
    ID_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    id: str
    enabled: bool
    def __init__(self, id: _Optional[str] = ..., enabled: _Optional[bool] = ...) -> None: ...

class RotateKeyRequest(_message.Message):
    __slots__ = ("id", "grace_seconds")
    ID_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    grace_seconds: float
    def __init__(self, id: _Optional[str] = ..., grace_seconds: _Optional[float] = ...) -> None: ...

class RotatedKey(_message.Message):
    __slots__ = ("key", "info", "previous_expires_at")
    KEY_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    key: str
    info: KeyInfo
    previous_expires_at: float
    def __init__(self, key: _Optional[str] = ..., info: _Optional[_Union[KeyInfo, _Mapping]] = ..., previous_expires_at: _Optional[float] = ...) -> None: ...

class RenewKeyRequest(_message.Message):
    __slots__ = ("id", "expires_at", "rotate", "grace_seconds", "no_expiry")
    ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ROTATE_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NO_EXPIRY_FIELD_NUMBER: _ClassVar[int]
    id: str
    expires_at: float
    rotate: bool
    grace_seconds: float
    no_expiry: bool
    def __init__(self, id: _Optional[str] = ..., expires_at: _Optional[float] = ..., rotate: _Optional[bool] = ..., grace_seconds: _Optional[float] = ..., no_expiry: _Optional[bool] = ...) -> None: ...

class RenewedKey(_message.Message):
    __slots__ = ("key", "info", "previous_expires_at", "renewed_from")
    KEY_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    RENEWED_FROM_FIELD_NUMBER: _ClassVar[int]
    key: str
    info: KeyInfo
    previous_expires_at: float
    renewed_from: float
    def __init__(self, key: _Optional[str] = ..., info: _Optional[_Union[KeyInfo, _Mapping]] = ..., previous_expires_at: _Optional[float] = ..., renewed_from: _Optional[float] = ...) -> None: ...

class KeyInfo(_message.Message):
    __slots__ = ("id", "user_id", "group_id", "labels", "enabled", "expires_at", "created_at", "source", "allowed_models", "allowed_routes", "previous_expires_at")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_MODELS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_ROUTES_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    user_id: str
    group_id: str
    labels: _containers.ScalarMap[str, str]
    enabled: bool
    expires_at: float
    created_at: float
    source: str
    allowed_models: _containers.RepeatedScalarFieldContainer[str]
    allowed_routes: _containers.RepeatedScalarFieldContainer[str]
    previous_expires_at: float
    def __init__(self, id: _Optional[str] = ..., user_id: _Optional[str] = ..., group_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., enabled: _Optional[bool] = ..., expires_at: _Optional[float] = ..., created_at: _Optional[float] = ..., source: _Optional[str] = ..., allowed_models: _Optional[_Iterable[str]] = ..., allowed_routes: _Optional[_Iterable[str]] = ..., previous_expires_at: _Optional[float] = ...) -> None: ...

class UsageReportRequest(_message.Message):
    __slots__ = ("start", "end", "day", "month", "last_month", "time_zone", "group_by")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    DAY_FIELD_NUMBER: _ClassVar[int]
    MONTH_FIELD_NUMBER: _ClassVar[int]
    LAST_MONTH_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    start: str
    end: str
    day: str
    month: str
    last_month: bool
    time_zone: str
    group_by: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, start: _Optional[str] = ..., end: _Optional[str] = ..., day: _Optional[str] = ..., month: _Optional[str] = ..., last_month: _Optional[bool] = ..., time_zone: _Optional[str] = ..., group_by: _Optional[_Iterable[str]] = ...) -> None: ...

class UsageReport(_message.Message):
    __slots__ = ("start", "end", "group_by", "rows", "totals", "latency_bucket_bounds_ms", "expired_before", "usage_retention_days", "unreadable_hours")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BUCKET_BOUNDS_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    USAGE_RETENTION_DAYS_FIELD_NUMBER: _ClassVar[int]
    UNREADABLE_HOURS_FIELD_NUMBER: _ClassVar[int]
    start: str
    end: str
    group_by: _containers.RepeatedScalarFieldContainer[str]
    rows: _containers.RepeatedCompositeFieldContainer[UsageRow]
    totals: UsageRow
    latency_bucket_bounds_ms: _containers.RepeatedScalarFieldContainer[float]
    expired_before: str
    usage_retention_days: int
    unreadable_hours: _containers.RepeatedCompositeFieldContainer[UnreadableHour]
    def __init__(self, start: _Optional[str] = ..., end: _Optional[str] = ..., group_by: _Optional[_Iterable[str]] = ..., rows: _Optional[_Iterable[_Union[UsageRow, _Mapping]]] = ..., totals: _Optional[_Union[UsageRow, _Mapping]] = ..., latency_bucket_bounds_ms: _Optional[_Iterable[float]] = ..., expired_before: _Optional[str] = ..., usage_retention_days: _Optional[int] = ..., unreadable_hours: _Optional[_Iterable[_Union[UnreadableHour, _Mapping]]] = ...) -> None: ...

class UnreadableHour(_message.Message):
    __slots__ = ("hour", "key", "reason")
    HOUR_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    hour: str
    key: str
    reason: str
    def __init__(self, hour: _Optional[str] = ..., key: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class UsageRow(_message.Message):
    __slots__ = ("dimensions", "requests", "prompt_tokens", "completion_tokens", "cached_tokens", "total_tokens", "unpriced_requests", "cost_usd", "cost_picousd", "latency_p50_ms", "latency_p95_ms", "latency_buckets", "cache_write_tokens", "cache_write_1h_tokens", "server_tool_requests", "prompt_audio_tokens", "cached_audio_tokens", "completion_audio_tokens", "completion_image_tokens", "prompt_image_tokens", "image_generation_input_tokens", "image_generation_input_image_tokens", "image_generation_output_tokens", "image_generation_output_image_tokens", "search_units")
    class DimensionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ServerToolRequestsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    UNPRICED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    COST_PICOUSD_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BUCKETS_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_1H_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SERVER_TOOL_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_AUDIO_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_AUDIO_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_AUDIO_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_IMAGE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_IMAGE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_GENERATION_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_GENERATION_INPUT_IMAGE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_GENERATION_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_GENERATION_OUTPUT_IMAGE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_UNITS_FIELD_NUMBER: _ClassVar[int]
    dimensions: _containers.ScalarMap[str, str]
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    total_tokens: int
    unpriced_requests: int
    cost_usd: str
    cost_picousd: int
    latency_p50_ms: float
    latency_p95_ms: float
    latency_buckets: _containers.RepeatedScalarFieldContainer[int]
    cache_write_tokens: int
    cache_write_1h_tokens: int
    server_tool_requests: _containers.ScalarMap[str, int]
    prompt_audio_tokens: int
    cached_audio_tokens: int
    completion_audio_tokens: int
    completion_image_tokens: int
    prompt_image_tokens: int
    image_generation_input_tokens: int
    image_generation_input_image_tokens: int
    image_generation_output_tokens: int
    image_generation_output_image_tokens: int
    search_units: int
    def __init__(self, dimensions: _Optional[_Mapping[str, str]] = ..., requests: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., cached_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ..., unpriced_requests: _Optional[int] = ..., cost_usd: _Optional[str] = ..., cost_picousd: _Optional[int] = ..., latency_p50_ms: _Optional[float] = ..., latency_p95_ms: _Optional[float] = ..., latency_buckets: _Optional[_Iterable[int]] = ..., cache_write_tokens: _Optional[int] = ..., cache_write_1h_tokens: _Optional[int] = ..., server_tool_requests: _Optional[_Mapping[str, int]] = ..., prompt_audio_tokens: _Optional[int] = ..., cached_audio_tokens: _Optional[int] = ..., completion_audio_tokens: _Optional[int] = ..., completion_image_tokens: _Optional[int] = ..., prompt_image_tokens: _Optional[int] = ..., image_generation_input_tokens: _Optional[int] = ..., image_generation_input_image_tokens: _Optional[int] = ..., image_generation_output_tokens: _Optional[int] = ..., image_generation_output_image_tokens: _Optional[int] = ..., search_units: _Optional[int] = ...) -> None: ...
