"""``extproc usage report|export``: the hourly rollups summed over a period.

``report`` prints a table (or JSON, CSV) for a person; ``export`` writes CSV or
JSON to a file (or stdout) for a billing system. Both read the store the
gateway writes: ``store.url`` when set, else the embedded Valkey of a running
gateway on the same data dir, else (nobody serving) the embedded Valkey started
for the time of the report.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import stat
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from extproc.chargeback.open_period import open_note
from extproc.chargeback.period import Period, PeriodError, resolve_period
from extproc.chargeback.report import dimensions, missing_note, render
from extproc.chargeback.retention import expired_before, expired_note
from extproc.config.model import GatewayConfig
from extproc.store.connection import STORE_ERRORS, connect
from extproc.store.embedded import EmbeddedStartError, EmbeddedValkey, running_endpoint
from extproc.store.spool import make_directory, sync_directory
from extproc.store.usage import UsageRead, UsageStore

if TYPE_CHECKING:
    from extproc.management.v1 import management_pb2 as pb


class ReportError(Exception):
    """The report cannot be made (management API refused or unreachable)."""


def period_of(args: argparse.Namespace) -> Period:
    return resolve_period(
        start=args.start,
        end=args.end,
        day=args.day,
        month=args.month,
        last_month=args.last_month,
        zone_name=args.time_zone,
    )


async def query_store(config: GatewayConfig, period: Period, by: tuple[str, ...]) -> UsageRead:
    embedded: EmbeddedValkey | None = None
    url = config.store.url or running_endpoint(config.store.data_dir)
    if url is None:
        embedded = EmbeddedValkey(config.store.data_dir)
        try:
            url = embedded.start()
        except (OSError, EmbeddedStartError) as exc:
            # A data dir this user cannot write (the gateway's, run as another user), or a
            # server that would not start: a traceback told the operator neither.
            embedded.stop()
            raise ReportError(_cannot_start(embedded, exc)) from None
    client = connect(url, config.store.timeout_ms / 1000.0)
    try:
        store = UsageStore(client, config.store.key_prefix, config.store.usage_retention_days)
        return await store.read(period.start, period.end, by)
    finally:
        await client.aclose()
        if embedded is not None:
            embedded.stop()


def _cannot_start(embedded: EmbeddedValkey, error: Exception) -> str:
    if isinstance(error, OSError):
        reason = error.strerror or type(error).__name__
        reason += f": {error.filename}" if error.filename else ""
    else:
        reason = str(error)
    return (
        f"cannot start the embedded Valkey on {embedded.data_dir} to read the rollups"
        f" ({reason}): run the report as the gateway's user, point store.url at the"
        " gateway's store, or ask the gateway with --api"
    )


def _rows(
    config: GatewayConfig | None, args: argparse.Namespace
) -> tuple[UsageRead, tuple[str, ...], Period] | None:
    """``config`` is None only for a report asked of the management API at ``--address``."""
    try:
        by = dimensions(args.by)
        period = period_of(args)
        if args.api:
            found, by, period = _ask_api(config, args, by, period)
        else:
            assert config is not None, "a report read from the store has the store's config"
            found = asyncio.run(query_store(config, period, by))
            _note_expired_hours(found, period, config.store.usage_retention_days)
    except (PeriodError, ReportError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    except STORE_ERRORS as exc:
        # The kind of error only: a client's message may quote the URL it was given.
        print(
            f"error: the store did not answer ({type(exc).__name__}): check store.url"
            " (or that the gateway's embedded Valkey is up), or ask a gateway with --api",
            file=sys.stderr,
        )
        return None
    _note_open_period(args, period)
    return found, by, period


def _note_open_period(args: argparse.Namespace, period: Period) -> None:
    """Say on stderr when a period with an end the operator named (a day, a month, --to)
    is not over, or only just: its report may still grow. Not for the last 24 hours or
    --from alone, which ask for the usage until now."""
    if not (args.day or args.month or args.last_month or args.end):
        return
    note = open_note(period)
    if note is not None:
        print(note, file=sys.stderr)


def _note_expired_hours(
    found: UsageRead, period: Period, retention_days: int, now: datetime | None = None
) -> None:
    """Say on stderr when the period starts before the oldest hour the store still keeps
    (those hours read as no usage), and mark ``found`` short: its JSON names that hour,
    and the command exits 1 without replacing an export's file, as for an hour it could
    not read. Before, the report of a month whose rollups had expired was all zeros with
    exit 0, and exporting it again replaced the bill kept from before with that."""
    kept_from = expired_before(period, retention_days, now)
    if kept_from is not None:
        print(expired_note(kept_from, retention_days), file=sys.stderr)
        found.expired_before = kept_from.isoformat()
        found.usage_retention_days = retention_days


def _note_answered_expiry(answer: pb.UsageReport, found: UsageRead) -> None:
    """The same note, and mark, for a report a gateway answered, from what its answer
    says of its store's retention (a gateway older than ``expired_before`` says nothing)."""
    if not answer.expired_before:
        return
    found.expired_before = answer.expired_before
    found.usage_retention_days = answer.usage_retention_days or None
    try:
        kept_from = datetime.fromisoformat(answer.expired_before)
    except ValueError:
        # Still a note: the report is short either way, and the rows are the gateway's.
        print(
            f"note: the gateway says the rollups of hours before {answer.expired_before!r}"
            " have expired: this report does not count them",
            file=sys.stderr,
        )
        return
    print(expired_note(kept_from, answer.usage_retention_days), file=sys.stderr)


def _ask_api(
    config: GatewayConfig | None, args: argparse.Namespace, by: tuple[str, ...], period: Period
) -> tuple[UsageRead, tuple[str, ...], Period]:
    """The same report from a gateway's management API (another host's store, say): its
    rows, grouped and over the period as the gateway answered them, since the gateway
    resolves the period on its own clock (the last 24 hours, the last month) and an
    empty grouping as by model."""
    from extproc.chargeback.report import totals
    from extproc.management.admin_token import COMMAND_LINE_WARNING, AdminTokenError, admin_token
    from extproc.management.client import ManagementError, UsageClient
    from extproc.management.client_tls import TlsFlags, client_tls
    from extproc.management.usage_rows import rows_from_report, unreadable_from_report
    from extproc.management.v1 import management_pb2 as pb

    address = args.address or (config.management.address if config is not None else "")
    if args.token:
        print(COMMAND_LINE_WARNING, file=sys.stderr)
    try:
        token = admin_token(args.token, args.token_file)
    except AdminTokenError as exc:
        raise ReportError(str(exc)) from None
    request = pb.UsageReportRequest(
        start=args.start or "", end=args.end or "", day=args.day or "", month=args.month or "",
        last_month=args.last_month, time_zone=args.time_zone, group_by=by,
    )  # fmt: skip
    flags = TlsFlags(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    try:
        tls = client_tls(flags, config)
        with UsageClient(address, token.value, args.timeout, token.source, tls) as client:
            answer = client.report(request)
    except ManagementError as exc:
        raise ReportError(str(exc)) from None
    rows = rows_from_report(answer)
    unreadable = unreadable_from_report(answer)
    answered = _answered_period(answer, period)
    if not by:
        # Asked by no dimension, which the API reads as by model: its rows summed, as
        # the store's rows are for the same question.
        found = UsageRead([totals(rows)] if rows else [], unreadable)
    else:
        found = UsageRead(rows, unreadable)
        by = tuple(answer.group_by) or by
    _note_answered_expiry(answer, found)
    return found, by, answered


def _answered_period(answer: pb.UsageReport, asked: Period) -> Period:
    """The period the gateway summed, as its answer names it (``asked``, resolved on this
    host's clock, when it names none)."""
    if not (answer.start and answer.end):
        return asked
    try:
        return Period(datetime.fromisoformat(answer.start), datetime.fromisoformat(answer.end))
    except ValueError:
        raise ReportError(
            f"the gateway answered an unreadable period: {answer.start!r} to {answer.end!r}"
        ) from None


def report(config: GatewayConfig | None, args: argparse.Namespace) -> int:
    found = _rows(config, args)
    if found is None:
        return 2
    read, by, period = found
    sys.stdout.write(render(read, by, period, args.format))
    return _missing(read)


def export(config: GatewayConfig | None, args: argparse.Namespace) -> int:
    found = _rows(config, args)
    if found is None:
        return 2
    read, by, period = found
    text = render(read, by, period, args.format)
    if args.output in (None, "-"):
        sys.stdout.write(text)
        return _missing(read)
    target = Path(args.output)
    stale = partial_name(target)
    # A file a billing job picks up is the whole period's, or it is not written: a job
    # that looks for the file, not at the exit code, imported a short bill as whole.
    short = read.short and not args.allow_partial
    written = stale if short else target
    try:
        write_file(written, text)
        if not short:
            # Left by an earlier run that was short: it is not this period's report now.
            stale.unlink(missing_ok=True)
    except OSError as exc:
        print(f"error: cannot write {written}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(read.rows)} rows to {written}", file=sys.stderr)
    code = _missing(read)
    if short:
        remedy = (
            "move their keys away and export again, or pass"
            if read.unreadable
            # An export of a period whose rollups expired can never be whole again: the
            # file it would replace may be the bill kept from when it was.
            else "keep the file exported while the hours were kept, or pass"
        )
        print(
            f"error: {target} was not written: the report is short of the hours above, so"
            f" it went to {written}; {remedy} --allow-partial to write it as it is",
            file=sys.stderr,
        )
    return code


def partial_name(target: Path) -> Path:
    """Where an export short of hours goes instead of ``target``."""
    return target.with_name(target.name + ".partial")


def _missing(read: UsageRead) -> int:
    """Name each hour the report could not read whole, on stderr, and exit 1 for those
    and for hours expired (noted already): the report of the other hours is still
    printed (a month's bill must not hinge on one stray key), but a job importing it
    must not take it for the whole period's."""
    for hour in read.unreadable:
        print(missing_note(hour), file=sys.stderr)
    return 1 if read.short else 0


def write_file(target: Path, text: str) -> None:
    """Replace ``target`` with ``text`` whole: written beside it, fsynced, renamed, and the
    rename fsynced, so a billing job never reads half a file, and a file that appeared
    survives a power cut. The mode is the old file's, or what a new file gets (umask)."""
    make_directory(target.parent)
    mode = _mode_for(target)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as file:
            # mkstemp makes it 0600: the billing job reading it is often another user.
            os.fchmod(file.fileno(), mode)
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        Path(temporary).replace(target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    sync_directory(target.parent)


def _mode_for(target: Path) -> int:
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        # Reading the umask means setting it; the CLI runs one thread.
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask
