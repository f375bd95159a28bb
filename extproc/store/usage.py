"""Hourly usage rollups: requests, tokens, cost and latency buckets per dimension set.

One hash per UTC hour, ``<prefix>usage:<YYYYMMDDHH>``; each field is the
dimension values joined by tabs, then the measure name (a tab in a value is
written as the control character US and ``t``, see ``_escape``). A request
counts in the hour it started, the same timestamp its log line carries, so the rollup and the
logs reconcile exactly. Every hash expires after ``usage_retention_days``.

Measures: ``requests``, ``prompt_tokens``, ``completion_tokens``,
``cached_tokens`` (the part of the prompt read from the provider's cache),
``cost_picousd`` (exact cost in 10**-12 USD, see ``extproc.chargeback.pricing``),
``unpriced_requests`` (requests of models without a price, costed 0), one
count per latency bucket (``latency_le_<ms>``, see ``extproc.chargeback.latency``),
``cache_write_tokens`` (the part of the prompt written to the provider's cache),
``cache_write_1h_tokens`` (the part of those written to Claude's 1-hour cache), one
``server_tool_requests:<tool>`` per server tool (``server_tool_requests:web_search``),
so a tool a provider adds needs no code, and the audio parts of the token counts
(``prompt_audio_tokens``, ``cached_audio_tokens``, ``completion_audio_tokens``) and the
image parts (``completion_image_tokens``, ``prompt_image_tokens``), and the image generation
tool's (``image_generation_input_tokens`` ...), which are billed at their own prices, and
``search_units`` (the searches a rerank's provider billed instead of tokens: Cohere's). Each
is the log line's field of that name, summed (the line's null ``search_units`` as 0).
Only non-zero measures are written; an hour written before a measure existed reads it
as 0.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.exceptions import ResponseError

from extproc.chargeback.latency import BUCKET_NAMES, BUCKETS, bucket_index, percentile
from extproc.context import IMAGE_GENERATION_COUNTS
from extproc.store import key_id_usage, scripts
from extproc.store.connection import of_another_type
from extproc.store.spool import refused_by_store

log = logging.getLogger(__name__)

DIMENSIONS = ("route", "model", "provider", "api_key_id", "user_id", "group_id")
SUMS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost_picousd",
    "unpriced_requests",
)
# After the latency buckets: a spooled batch holds its counts by position, so a record
# an earlier version spooled (the sums, then the buckets) still reads as it was.
CACHE_WRITES = ("cache_write_tokens", "cache_write_1h_tokens")
# After the cache writes, for the same reason. Parts of prompt_tokens, cached_tokens and
# completion_tokens, billed at the audio prices: without them a report's tokens times
# the text prices is not its cost_usd, and nobody can tell why.
AUDIO = ("prompt_audio_tokens", "cached_audio_tokens", "completion_audio_tokens")
# After the audio, for the same reason: the part of completion_tokens billed at the image
# price (Gemini's image models, about 12x text).
IMAGE = ("completion_image_tokens",)
# After it, for the same reason: the image part of prompt_tokens (OpenAI's GPT Image
# models), then the pictures of the Responses API's image generation tool, parts of
# prompt_tokens and completion_tokens billed at the image model's prices.
IMAGE_INPUT = ("prompt_image_tokens",)
IMAGE_GENERATION = IMAGE_GENERATION_COUNTS
# After them, for the same reason: the searches a rerank's provider billed instead of its
# tokens (Cohere's meta.billed_units.search_units), priced per search; not tokens, and
# no part of any token count.
SEARCH = ("search_units",)
MEASURES = (
    *SUMS,
    *BUCKET_NAMES,
    *CACHE_WRITES,
    *AUDIO,
    *IMAGE,
    *IMAGE_INPUT,
    *IMAGE_GENERATION,
    *SEARCH,
)
_INDEX = {name: index for index, name in enumerate(MEASURES)}
_LATENCY_OFFSET = len(SUMS)
_LATENCY_END = _LATENCY_OFFSET + BUCKETS
_CACHE_WRITE = _INDEX["cache_write_tokens"]
_CACHE_WRITE_1H = _INDEX["cache_write_1h_tokens"]
_PROMPT_AUDIO = _INDEX["prompt_audio_tokens"]
_CACHED_AUDIO = _INDEX["cached_audio_tokens"]
_COMPLETION_AUDIO = _INDEX["completion_audio_tokens"]
_COMPLETION_IMAGE = _INDEX["completion_image_tokens"]
_PROMPT_IMAGE = _INDEX["prompt_image_tokens"]
_IMAGE_GENERATION = _INDEX[IMAGE_GENERATION[0]]
_SEARCH_UNITS = _INDEX["search_units"]
# The measure of one server tool's requests is this and the tool's name: a fixed list
# would need a release for every tool a provider adds.
TOOL_MEASURE = "server_tool_requests:"
_SEPARATOR = "\t"
_KEY_ID = DIMENSIONS.index("api_key_id")
# A report reads the store in round trips of whole hours (HGETALL), about this many
# fields each. The store runs a round trip's commands and buffers their answers before
# it sends them: 500 busy hours a trip (as reports once read) was tens of MB for a large
# organisation's month, which ran past the client's timeout (store.timeout_ms) or the
# store's client-output-buffer-limit, and the report failed; and the management API,
# which sums on the gateway's own event loop, held it for seconds at a time. 20,000
# fields are about 2 MB, a few ms of the store's time and ~20 ms of summing.
_FIELDS_PER_READ = 20_000
# Hours whose sizes (HLEN) one round trip asks for: a long period without usage is
# read at 500 hours a round trip.
_HOURS_PER_SIZING = 500
# Hours whose last landed batch id is remembered (writes go to the current hour, and
# to the one before just after it turns).
_LANDED_HOURS = 4


# Not frozen: built once per request in its done hook, where a frozen dataclass's
# __init__ (object.__setattr__ per field) cost twice as much; nothing keeps or changes one.
@dataclass(slots=True)
class UsageEntry:
    started_at: float
    dimensions: dict[str, str]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    cost_picousd: int = 0
    priced: bool = True
    # None: not measured (the request is counted in no latency bucket).
    latency_ms: float | None = None
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    # By tool name (``web_search``); the request's own mapping, read once when added.
    server_tool_requests: Mapping[str, int] = field(default_factory=dict)
    # The audio parts of prompt_tokens, cached_tokens and completion_tokens.
    prompt_audio_tokens: int = 0
    cached_audio_tokens: int = 0
    completion_audio_tokens: int = 0
    # The image part of completion_tokens.
    completion_image_tokens: int = 0
    # The image part of prompt_tokens.
    prompt_image_tokens: int = 0
    # The image generation tool's counts (``IMAGE_GENERATION``' order), None: it drew none.
    image_generation: tuple[int, ...] | None = None
    # The searches a rerank's provider billed (Cohere's search units); 0: billed by tokens.
    search_units: int = 0


@dataclass(slots=True)
class UsageRow:
    dimensions: dict[str, str]
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_picousd: int = 0
    unpriced_requests: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    server_tool_requests: dict[str, int] = field(default_factory=dict)
    prompt_audio_tokens: int = 0
    cached_audio_tokens: int = 0
    completion_audio_tokens: int = 0
    completion_image_tokens: int = 0
    prompt_image_tokens: int = 0
    image_generation_input_tokens: int = 0
    image_generation_input_image_tokens: int = 0
    image_generation_output_tokens: int = 0
    image_generation_output_image_tokens: int = 0
    search_units: int = 0
    latency_buckets: list[int] = field(default_factory=lambda: [0] * BUCKETS)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def latency_ms(self, quantile: float) -> float | None:
        return percentile(self.latency_buckets, quantile)


@dataclass(slots=True)
class Tally:
    """One dimension set's sums in one hour: one count per name of ``MEASURES``, and the
    requests of each server tool (None until a request used one, as most never do)."""

    counts: list[int]
    tools: dict[str, int] | None = None

    def add_tools(self, requests: Mapping[str, int]) -> None:
        tools = self.tools
        if tools is None:
            tools = self.tools = {}
        for name, count in requests.items():
            tools[name] = tools.get(name, 0) + count


# (hour bucket, field prefix) -> its tally
UsageTotals = dict[tuple[str, str], Tally]


@functools.lru_cache(maxsize=64)
def _bucket_of_hour(hour: int) -> str:
    return hour_bucket(datetime.fromtimestamp(hour * 3600, UTC))


def hour_of(timestamp: float) -> int:
    """The hour a timestamp falls in, as its log line names it: ``datetime`` rounds a
    timestamp to the microsecond (half to even) first, so 0.3 us before the hour is
    already the next hour's first microsecond."""
    fraction, whole = math.modf(timestamp)
    if round(fraction * 1e6) >= 1_000_000:
        whole += 1
    return int(whole) // 3600


def add_entry(totals: UsageTotals, entry: UsageEntry) -> None:
    # Formatting a date per request showed in profiles; the hour number is enough to key it.
    bucket = _bucket_of_hour(hour_of(entry.started_at))
    values = [entry.dimensions.get(d, "") for d in DIMENSIONS]
    prefix = _SEPARATOR.join(values) + _SEPARATOR
    if prefix.count(_SEPARATOR) != len(DIMENSIONS) or _ESCAPE_CHAR in prefix:
        # A value holds the separator (a client's model name, a JWT claim): escaped,
        # so that the field still splits into its six values.
        prefix = _SEPARATOR.join(map(_escape, values)) + _SEPARATOR
    tally = totals.get((bucket, prefix))
    if tally is None:
        tally = totals[(bucket, prefix)] = Tally([0] * len(MEASURES))
    counts = tally.counts
    counts[0] += 1
    counts[1] += entry.prompt_tokens
    counts[2] += entry.completion_tokens
    counts[3] += entry.cached_tokens
    counts[4] += entry.cost_picousd
    if not entry.priced:
        counts[5] += 1
    if entry.latency_ms is not None:
        counts[_LATENCY_OFFSET + bucket_index(entry.latency_ms)] += 1
    # Most requests write no cache and use no server tool: two tests, no dict walk.
    if entry.cache_write_tokens or entry.cache_write_1h_tokens:
        counts[_CACHE_WRITE] += entry.cache_write_tokens
        counts[_CACHE_WRITE_1H] += entry.cache_write_1h_tokens
    if entry.server_tool_requests:
        tally.add_tools(entry.server_tool_requests)
    if entry.prompt_audio_tokens or entry.cached_audio_tokens or entry.completion_audio_tokens:
        counts[_PROMPT_AUDIO] += entry.prompt_audio_tokens
        counts[_CACHED_AUDIO] += entry.cached_audio_tokens
        counts[_COMPLETION_AUDIO] += entry.completion_audio_tokens
    if entry.completion_image_tokens:
        counts[_COMPLETION_IMAGE] += entry.completion_image_tokens
    if entry.prompt_image_tokens:
        counts[_PROMPT_IMAGE] += entry.prompt_image_tokens
    if entry.image_generation is not None:
        for offset, count in enumerate(entry.image_generation):
            counts[_IMAGE_GENERATION + offset] += count
    if entry.search_units:
        counts[_SEARCH_UNITS] += entry.search_units


# A tab in a value is written as US (\x1f) + "t", and US itself doubled: characters
# no earlier rollup holds in practice, where backslashes (a Windows user id) are
# common and must read back as written.
_ESCAPE_CHAR = "\x1f"
_ESCAPES = {_ESCAPE_CHAR: _ESCAPE_CHAR * 2, _SEPARATOR: _ESCAPE_CHAR + "t"}
_ESCAPED = re.compile("\x1f([\x1ft])")


def _escape(value: str) -> str:
    return "".join(_ESCAPES.get(char, char) for char in value)


def tool_measure(tool: str) -> str:
    """The measure of a server tool's requests. The translators pass only names such as
    ``web_search``; one holding the separator is escaped all the same, so that it can
    never split its field into more than its dimensions and one measure."""
    if _SEPARATOR in tool or _ESCAPE_CHAR in tool:
        tool = _escape(tool)
    return TOOL_MEASURE + tool


def _unescape(value: str) -> str:
    if _ESCAPE_CHAR not in value:
        return value
    return _ESCAPED.sub(lambda found: _SEPARATOR if found.group(1) == "t" else _ESCAPE_CHAR, value)


def totals_of(entries: list[UsageEntry]) -> UsageTotals:
    totals: UsageTotals = {}
    for entry in entries:
        add_entry(totals, entry)
    return totals


def spool_rows(totals: UsageTotals) -> list[list[Any]]:
    """Totals as spool rows: hour bucket, field prefix, the counts of ``MEASURES`` by
    position, then (only when the batch used server tools) an object of their requests."""
    rows: list[list[Any]] = []
    for (bucket, prefix), tally in totals.items():
        row: list[Any] = [bucket, prefix, *tally.counts]
        if tally.tools:
            row.append(tally.tools)
        rows.append(row)
    return rows


def totals_from_spool(rows: list[list[Any]]) -> UsageTotals:
    """``spool_rows`` read back. A row spooled by an earlier version carries fewer counts
    (the rest are 0); one spooled by a later version more (left out here)."""
    totals: UsageTotals = {}
    for row in rows:
        values = row[2:]
        tools = values.pop() if values and isinstance(values[-1], dict) else None
        counts = [int(value) for value in values[: len(MEASURES)]]
        tally = Tally(counts + [0] * (len(MEASURES) - len(counts)))
        if tools:
            tally.tools = {str(name): int(count) for name, count in tools.items()}
        totals[(str(row[0]), str(row[1]))] = tally
    return totals


def hour_bucket(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d%H")


@functools.lru_cache(maxsize=64)
def _hour_start(bucket: str) -> float:
    """When an hour bucket (``2026030110``) starts, in epoch seconds. Kept: a batch holds
    one or two hours, and at an hour's start each of its api_key_ids is noted anew,
    where parsing the bucket per id (strptime, about 12 us) doubled the flush's CPU."""
    return datetime.strptime(bucket, "%Y%m%d%H").replace(tzinfo=UTC).timestamp()


class UsageStore:
    def __init__(self, client: Any, key_prefix: str, retention_days: int) -> None:
        self._client = client
        self._prefix = key_prefix
        self.retention_days = retention_days
        self._ttl = retention_days * 86400
        self._record = scripts.register(client, "usage_record")
        # Per hour: the id of this writer's last batch that landed whole on its first
        # try. It can never be replayed, so the next write to that hour removes its id
        # from the hash (see usage_record.lua); without that, every flush (two a
        # second) left an id in the hour for as long as the hour is kept.
        self._landed: dict[str, str] = {}
        # The api_key_ids this process has noted in key_id_usage, by hour bucket: an id
        # is noted once an hour, not with every flush.
        self._noted: dict[str, set[str]] = {}

    def _key(self, bucket: str) -> str:
        return f"{self._prefix}usage:{bucket}"

    async def record(self, entry: UsageEntry) -> None:
        await self.record_totals(totals_of([entry]), uuid.uuid4().hex)

    async def record_totals(
        self, totals: UsageTotals, batch_id: str, *, replayed: bool = False
    ) -> None:
        """Add summed usage to the rollups: one EVALSHA per hour touched (almost always one).

        ``replayed``: the batch was tried before (it comes from the spool, or waited in
        memory after a failed write): it may come back (a crash before the spool drops
        it, a spool line the disk kept despite its error), and its id must stay to count
        it once.

        Not pipelined: redis-py checks a pipeline's scripts with an extra SCRIPT
        EXISTS round trip, while a lone EVALSHA reloads only on NOSCRIPT.
        """
        by_hour: dict[str, list[str | int]] = {}
        for (bucket, prefix), tally in totals.items():
            pairs: list[str | int] = []
            for name, value in zip(MEASURES, tally.counts, strict=False):
                if value:
                    pairs.extend((name, value))
            for tool, value in (tally.tools or {}).items():
                if value:
                    pairs.extend((tool_measure(tool), value))
            args = by_hour.get(bucket)
            if args is None:
                args = by_hour[bucket] = [self._ttl, batch_id, self._landed.get(bucket, "")]
            args.extend((prefix, len(pairs) // 2, *pairs))
        refusal: ResponseError | None = None
        for bucket, args in by_hour.items():
            try:
                skipped = await self._record(keys=[self._key(bucket)], args=args)
            except ResponseError as error:
                if not refused_by_store(error):
                    raise  # the store cannot write now: the other hours would fail alike
                # An answer about this hour alone (its key is of another type): the other
                # hours still land. Raised at once, it left them unwritten, and the spool
                # set the whole batch aside: an hour turning over in a flush lost both.
                refusal = refusal or error
                continue
            if isinstance(skipped, list):
                # The rest of the batch landed; these counts are in the log lines only.
                log.error(
                    "usage rollup of hour %s: %d count(s) past what the store holds (64-bit"
                    " integers) left out: %s",
                    bucket,
                    len(skipped),
                    ", ".join(sorted({_decoded(name) for name in skipped})),
                )
        await self._note_key_ids(totals)
        if refusal is not None:
            raise refusal
        if not replayed:
            # Only now: a batch that failed in one hour is spooled whole, and its
            # replay must find its id in the hours where it did land.
            for bucket in by_hour:
                self._landed.pop(bucket, None)
                self._landed[bucket] = batch_id
            while len(self._landed) > _LANDED_HOURS:
                del self._landed[next(iter(self._landed))]

    async def _note_key_ids(self, totals: UsageTotals) -> None:
        """Note the batch's api_key_ids in key_id_usage, each once an hour per process."""
        fresh: dict[str, float] = {}
        for bucket, prefix in totals:
            noted = self._noted.setdefault(bucket, set())
            key_id = _unescape(prefix.split(_SEPARATOR)[_KEY_ID])
            if key_id and key_id not in noted:
                fresh[key_id] = max(fresh.get(key_id, 0.0), _hour_start(bucket))
        if not fresh:
            return
        try:
            await key_id_usage.note(self._client, self._prefix, fresh, self._ttl)
        except Exception as exc:
            # The rollups landed: the next hour notes the ids again. Only a create of one of
            # these ids meanwhile misses that they have usage.
            log.warning("usage rollups: the index of API key ids was not written (%r)", exc)
            return
        for bucket, prefix in totals:
            self._noted[bucket].add(_unescape(prefix.split(_SEPARATOR)[_KEY_ID]))
        while len(self._noted) > _LANDED_HOURS:
            del self._noted[min(self._noted)]

    async def ping(self) -> bool:
        return bool(await self._client.ping())

    async def query(
        self, start: datetime, end: datetime, by: tuple[str, ...] = ("route", "model")
    ) -> list[UsageRow]:
        """The rows of ``read``; ``UnreadableHoursError`` when an hour could not be read
        whole, for a caller with no way to say that its sums are short."""
        found = await self.read(start, end, by)
        if found.unreadable:
            raise UnreadableHoursError(found.unreadable)
        return found.rows

    async def read(
        self, start: datetime, end: datetime, by: tuple[str, ...] = ("route", "model")
    ) -> UsageRead:
        """Sum the hours in ``[start, end)`` grouped by the dimensions in ``by``.

        The hours' sizes are read first (HLEN, ``_HOURS_PER_SIZING`` a round trip), then
        their fields in round trips of about ``_FIELDS_PER_READ`` (see there): a month of
        a large organisation is read in answers the store can send, and the management
        API, which sums on the gateway's own event loop, gives it back between them.

        An hour whose key is of another type (written under the gateway's prefix by a
        person or another program), or whose fields hold something other than counts, is
        summed without what it cannot count and named in ``unreadable``: raised, it
        failed the whole period's report (finance got nothing for the month), and read
        as no usage it would have shortened a bill without a word."""
        unknown = [name for name in by if name not in DIMENSIONS]
        if unknown:
            raise ValueError(
                f"unknown dimension {unknown[0]!r}; choose from {', '.join(DIMENSIONS)}"
            )
        summing = _Summing(by)
        unreadable: list[UnreadableHour] = []
        hours = list(_hours(start, end))
        for offset in range(0, len(hours), _HOURS_PER_SIZING):
            sized, foreign = await self._sizes(hours[offset : offset + _HOURS_PER_SIZING])
            unreadable.extend(foreign)
            for batch in _reads(sized):
                for bucket, fields in zip(batch, await self._read(batch), strict=True):
                    if fields is None:
                        # Its type changed between the two reads.
                        unreadable.append(self._foreign(bucket))
                        continue
                    left_out = summing.add_hour(fields)
                    if left_out:
                        key = self._key(bucket)
                        unreadable.append(
                            UnreadableHour(
                                bucket,
                                key,
                                f"{left_out} count(s) in {key} are not integers the store"
                                " holds (64-bit, as the gateway writes them; written by a"
                                " person or another program) and are left out",
                            )
                        )
        rows = sorted(summing.rows.values(), key=lambda row: tuple(row.dimensions.values()))
        return UsageRead(rows, sorted(unreadable, key=lambda hour: hour.bucket))

    def _foreign(self, bucket: str) -> UnreadableHour:
        key = self._key(bucket)
        return UnreadableHour(
            bucket,
            key,
            f"{key} is a key of another type, not the gateway's rollup (written by a person"
            " or another program): nothing of the hour is counted; move the key away (what"
            " the gateway could not write to it is in usage.rejected.jsonl beside its spool)",
        )

    async def _sizes(
        self, buckets: list[str]
    ) -> tuple[list[tuple[str, int]], list[UnreadableHour]]:
        """Each hour with its number of fields, in one round trip; and the hours whose
        key is of another type."""
        async with self._client.pipeline(transaction=False) as pipe:
            for bucket in buckets:
                pipe.hlen(self._key(bucket))
            counts = await pipe.execute(raise_on_error=False)
        sized: list[tuple[str, int]] = []
        foreign: list[UnreadableHour] = []
        for bucket, count in zip(buckets, counts, strict=True):
            if of_another_type(count):
                foreign.append(self._foreign(bucket))
            else:
                sized.append((bucket, int(count)))
        return sized, foreign

    async def _read(self, buckets: list[str]) -> list[dict[bytes, bytes] | None]:
        """The fields of whole hours, in one round trip (None: the key is of another type)."""
        async with self._client.pipeline(transaction=False) as pipe:
            for bucket in buckets:
                pipe.hgetall(self._key(bucket))
            found = await pipe.execute(raise_on_error=False)
        return [None if of_another_type(fields) else fields for fields in found]


@dataclass(frozen=True, slots=True)
class UnreadableHour:
    """An hour of a report whose rollup could not be read whole: its usage (or part of
    it) is missing from the report's rows."""

    bucket: str  # YYYYMMDDHH, UTC
    key: str
    reason: str

    @property
    def start(self) -> datetime:
        return datetime.strptime(self.bucket, "%Y%m%d%H").replace(tzinfo=UTC)


@dataclass(slots=True)
class UsageRead:
    rows: list[UsageRow]
    # Empty when every hour of the period was read whole.
    unreadable: list[UnreadableHour]
    # The first hour the store still keeps whole (ISO 8601, UTC), when the period starts
    # before it: the hours before it expired and read as no usage. Set by the report
    # (``extproc.usage_report``), which knows the retention and the clock it is read by.
    expired_before: str | None = None
    usage_retention_days: int | None = None

    @property
    def short(self) -> bool:
        """Whether usage of the period is missing from the rows: an hour not read whole,
        or hours whose rollups expired."""
        return bool(self.unreadable) or self.expired_before is not None


class UnreadableHoursError(Exception):
    def __init__(self, hours: list[UnreadableHour]) -> None:
        self.hours = hours
        named = ", ".join(f"{hour.key} ({hour.reason})" for hour in hours)
        super().__init__(f"{len(hours)} hour(s) of usage could not be read: {named}")


def _decoded(name: bytes | str) -> str:
    return name.decode(errors="replace") if isinstance(name, bytes) else name


def _reads(sized: list[tuple[str, int]]) -> Iterator[list[str]]:
    """The hours that hold something, in runs of at most ``_FIELDS_PER_READ`` fields (an
    hour holding more is read alone: a hash is read whole)."""
    batch: list[str] = []
    fields = 0
    for bucket, count in sized:
        if not count:
            continue  # nothing that hour (or it expired): no read at all
        if batch and fields + count > _FIELDS_PER_READ:
            yield batch
            batch, fields = [], 0
        batch.append(bucket)
        fields += count
    if batch:
        yield batch


# What the store itself takes as an integer (HINCRBY's own test): ASCII digits, an optional
# minus, no leading zero, no sign or space, within 64 bits. Python's ``int`` takes more
# (" 7 ", "+7", "1_000", Arabic-Indic digits, a hundred digits), none of which the gateway
# writes: a field so written was counted, and one past 64 bits stopped the JSON export
# with a traceback and the management API with UNKNOWN.
_STORE_INTEGER = re.compile(rb"0|-?[1-9][0-9]{0,18}")
_INT64 = range(-(2**63), 2**63)


def _count(raw: bytes) -> int:
    """A rollup count as the store holds it; ValueError for anything HINCRBY could not
    have written, which the report leaves out and names (see ``read``)."""
    if _STORE_INTEGER.fullmatch(raw) is None:
        raise ValueError(f"not a count of the store: {raw[:40]!r}")
    found = int(raw)
    if found not in _INT64:
        raise ValueError(f"past the store's 64-bit integers: {raw!r}")
    return found


_UNSEEN: Any = object()
_SEPARATOR_BYTES = _SEPARATOR.encode()
_MEASURE_INDEX = {name.encode(): index for name, index in _INDEX.items()}
_TOOL_MEASURE_BYTES = TOOL_MEASURE.encode()


class _Summing:
    """Report rows being summed from rollup fields, by the values of the ``by`` dimensions.

    A field is its dimension set (the prefix) and a measure; each dimension set has
    several measures in every hour, so what a prefix groups into is worked out once per
    query, not once per field: reading a month's fields is most of a report's time."""

    def __init__(self, by: tuple[str, ...]) -> None:
        self.by = by
        self.rows: dict[tuple[str, ...], UsageRow] = {}
        # Field prefix -> its group (the --by values), or None for a field that is no
        # measure (a batch id).
        self._groups: dict[bytes, tuple[str, ...] | None] = {}

    def add_hour(self, fields: dict[bytes, bytes]) -> int:
        """Add an hour's fields; the number of counts left out, not being integers (a
        field another program wrote into the hour: the gateway writes only HINCRBY)."""
        left_out = 0
        for name, value in fields.items():
            try:
                self._add(name, value)
            except ValueError:  # UnicodeDecodeError too: a prefix the gateway never wrote
                left_out += 1
        return left_out

    def _add(self, name: bytes, raw: bytes) -> None:
        prefix, _, measure = name.rpartition(_SEPARATOR_BYTES)
        group = self._groups.get(prefix, _UNSEEN)
        if group is _UNSEEN:
            group = self._groups[prefix] = self._group_of(prefix)
        if group is None:
            return  # a batch id, or another program's field: no count of a dimension set
        index = _MEASURE_INDEX.get(measure)
        if index is None:
            if not measure.startswith(_TOOL_MEASURE_BYTES):
                return  # a measure of a newer version
            tool = _unescape(measure[len(_TOOL_MEASURE_BYTES) :].decode())
            value = _count(raw)
            tools = self._row(group).server_tool_requests
            tools[tool] = tools.get(tool, 0) + value
            return
        value = _count(raw)
        row = self._row(group)
        if _LATENCY_OFFSET <= index < _LATENCY_END:
            row.latency_buckets[index - _LATENCY_OFFSET] += value
        else:
            measure_name = MEASURES[index]
            setattr(row, measure_name, getattr(row, measure_name) + value)

    def _group_of(self, prefix: bytes) -> tuple[str, ...] | None:
        values = prefix.decode().split(_SEPARATOR)
        if len(values) != len(DIMENSIONS):
            return None
        dimensions = dict(zip(DIMENSIONS, map(_unescape, values), strict=True))
        return tuple(dimensions[d] for d in self.by)

    def _row(self, group: tuple[str, ...]) -> UsageRow:
        """The report row of ``group``. It keeps no note of the hours it was summed from:
        a set of them per row held the hours times the rows (264 MB for a quarter of
        2,000 keys, in the gateway serving the management API), for no reader."""
        row = self.rows.get(group)
        if row is None:
            row = self.rows[group] = UsageRow(dict(zip(self.by, group, strict=True)))
        return row


def _hours(start: datetime, end: datetime) -> Iterator[str]:
    moment = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    end = end.astimezone(UTC)
    while moment < end:
        yield hour_bucket(moment)
        moment += timedelta(hours=1)
