"""The ``extproc`` command line: serve, check and render config, mock provider, usage
reports, and quotas and API keys at run time (a client of the management API)."""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from extproc import __version__, event_loop
from extproc.management.client_pages import PAGE_SIZE

if TYPE_CHECKING:
    from extproc.config.model import GatewayConfig
    from extproc.management.admin_token import AdminToken
    from extproc.management.client_tls import TlsFlags

DEFAULT_CONFIG = "config/gateway.yaml"
# How long `usage report|export --api` waits for the management API (a report of a long
# period is summed there from many hourly rollups).
USAGE_API_TIMEOUT_S = 30.0


def _load(path: str) -> GatewayConfig:
    # Imported here, not at the top: the config's schema is a third of the start-up of a
    # command that reads no config (`extproc mock-llm`, started for every test stack).
    from extproc.config.loader import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None


def _in_file(exc: Exception, path: str) -> Exception:
    """A config mistake found past validation (a key file, a JWKS file), named by the
    file it is in, not by the part that found it ("invalid config auth:")."""
    from extproc.config.loader import ConfigError

    return ConfigError(path, exc.problems) if isinstance(exc, ConfigError) else exc


def _serve(args: argparse.Namespace) -> int:
    # The config first, then the server's modules: imported before the parse of a
    # config of 10,000 keys, they left the process 15 MB larger once ready (measured
    # with the memory benchmark: 143 MB against 128 MB).
    config = _load(args.config)
    from extproc.config.loader import ConfigError
    from extproc.http_endpoint import HttpListenError
    from extproc.management.service import ManagementListenError
    from extproc.server import ListenError
    from extproc.store.embedded import DataDirInUseError, EmbeddedStartError
    from extproc.telemetry.diagnostic_log import DiagnosticLog

    workers = args.workers or config.server.workers
    # From here on, log lines are written to stderr by a thread: a stderr nobody reads
    # must not hold the event loop. Closed before a line printed here, to keep order.
    diagnostics = DiagnosticLog()
    try:
        if workers > 1:
            from extproc.workers import supervise

            return event_loop.run(supervise(config, args.config, workers), config.server.event_loop)
        from extproc.server import serve

        event_loop.run(serve(config, args.config), config.server.event_loop)
    except (
        ConfigError,
        DataDirInUseError,
        HttpListenError,
        ListenError,
        ManagementListenError,
    ) as exc:
        # Found while starting (a file the config names, a data dir in use): a user
        # error like those of the config's own check, not a traceback.
        diagnostics.close()
        print(_in_file(exc, args.config), file=sys.stderr)
        return 2
    except EmbeddedStartError as exc:
        # No store.url: the store is the embedded Valkey, and it could not start (its
        # data dir not writable, say). One line naming what to change, no traceback.
        diagnostics.close()
        print(
            f"{args.config}: store.url is not set and the embedded Valkey cannot start"
            f" ({exc}): set store.data_dir to a directory this user can write, or"
            " store.url to a Redis or Valkey server",
            file=sys.stderr,
        )
        return 2
    finally:
        diagnostics.close()
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from extproc.config.loader import ConfigError
    from extproc.startup_check import check_startup_files

    config = _load(args.config)
    try:
        check_startup_files(config)
    except ConfigError as exc:
        print(_in_file(exc, args.config), file=sys.stderr)
        return 2
    from extproc.config.load_warnings import config_warnings

    # Not errors (extproc.config.load_warnings): the config is valid and serves, so the
    # status stays 0; each is printed where a person running the check reads it.
    warnings = config_warnings(config)
    if warnings:
        lines = "\n".join(f"  - {warning}" for warning in warnings)
        print(f"warnings in config {args.config}:\n{lines}", file=sys.stderr)
    counted = f", {len(warnings)} warning{'s' if len(warnings) != 1 else ''}" if warnings else ""
    print(
        f"{args.config}: ok ({len(config.providers)} providers, {len(config.models)} models, "
        f"{len(config.routes)} routes{counted})"
    )
    if args.envoy is not None:
        return _check_envoy(config, args.envoy)
    return 0


def _check_envoy(config: GatewayConfig, bootstrap_file: str) -> int:
    """Compare Envoy's bootstrap file with the config's rendering: a reload applies the
    config to the gateway alone, and what only Envoy applies (a provider's cluster, a
    listener, a body limit) waits for a new render and an Envoy restart."""
    import yaml

    from extproc.envoy_drift import rendered_file_changes

    try:
        changes = rendered_file_changes(config, bootstrap_file)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"{bootstrap_file}: cannot read the Envoy bootstrap: {exc}", file=sys.stderr)
        return 2
    if changes:
        print(
            f"{bootstrap_file}: not this config's rendering ({', '.join(changes)}): Envoy"
            " needs it rendered again (extproc render-envoy) and a restart; a reload of the"
            " gateway alone leaves these unapplied",
            file=sys.stderr,
        )
        return 1
    print(f"{bootstrap_file}: the config's rendering")
    return 0


def _render_envoy(args: argparse.Namespace) -> int:
    from extproc.envoy_bootstrap import render_bootstrap_yaml

    return _write_output(render_bootstrap_yaml(_load(args.config)), args.output)


def _render_gateway_api(args: argparse.Namespace) -> int:
    from extproc.gateway_api import render_attachments_yaml

    config = _load(args.config)
    try:
        rendered = render_attachments_yaml(config, args.controller)
    except ValueError as exc:
        # What the attachments cannot express (names that collide, an egress proxy):
        # the config's mistake for this mode, said as the config check says its own.
        print(f"{args.config}: cannot render the Gateway API attachments: {exc}", file=sys.stderr)
        return 2
    return _write_output(rendered, args.output)


def _write_output(rendered: str, output: str | None) -> int:
    """``rendered`` on stdout, or in the file ``--output`` names (its directory made)."""
    if output in (None, "-"):
        sys.stdout.write(rendered)
        return 0
    target = Path(output)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(rendered, encoding="utf-8")
    except OSError as exc:
        # A directory, a read-only mount, a parent that is a file: the path and the
        # reason, as `usage export --output` says it, not a traceback.
        print(f"error: cannot write {output}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


def _mock_llm(args: argparse.Namespace) -> int:
    from extproc.mock_llm import MockOptions, run

    options = MockOptions(
        chunk_delay_s=args.chunk_delay,
        record_limit=args.record,
        default_fault=args.fault,
        gcp_project=args.gcp_project,
        gcp_region=args.gcp_region,
        gcp_service_account=args.gcp_service_account,
        gcp_token_lifetime_s=args.gcp_token_lifetime,
    )
    run(args.host, args.port, options)
    return 0


def _usage_report(args: argparse.Namespace) -> int:
    from extproc.store.embedded import DataDirInUseError
    from extproc.usage_report import export, report

    run = export if args.usage_command == "export" else report
    named = (
        ("--address", args.address), ("--token", args.token), ("--token-file", args.token_file),
        ("--timeout", args.timeout is not None), ("--tls-ca", args.tls_ca),
        ("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key),
        ("--tls-server-name", args.tls_server_name),
    )  # fmt: skip
    flags = [flag for flag, given in named if given]
    if flags and not args.api:
        # Ignored without --api, they left the report to the store of the local config:
        # another gateway's bill (or none), printed as if it were the one asked for.
        verb = "names" if len(flags) == 1 else "name"
        print(
            f"error: {' and '.join(flags)} {verb} a gateway's management API: add --api"
            " (without it the report reads the store of --config)",
            file=sys.stderr,
        )
        return 2
    if args.timeout is None:
        args.timeout = USAGE_API_TIMEOUT_S
    # Asked of a gateway named by its address, the report needs no config: the operator's
    # laptop has none (as for `extproc quota` and `extproc keys`).
    # A --config given with --address still says how to reach it (management.tls.cli).
    by_address = args.api and args.address and args.config is None
    config = None if by_address else _load(args.config or DEFAULT_CONFIG)
    try:
        return run(config, args)
    except DataDirInUseError as exc:
        print(f"{exc}; try again once it answers", file=sys.stderr)
        return 2


def _add_usage_commands(commands: Any) -> None:
    usage = commands.add_parser("usage", help="usage and cost from the hourly rollups")
    actions = usage.add_subparsers(dest="usage_command", required=True)
    report = actions.add_parser("report", help="usage and cost over a period, for a person")
    export = actions.add_parser("export", help="usage and cost as CSV or JSON, for billing")
    for sub, formats, default in (
        (report, ("table", "json", "csv"), "table"),
        (export, ("csv", "json"), "csv"),
    ):
        sub.add_argument("--config", "-c", help=f"gateway config file (default: {DEFAULT_CONFIG})")
        sub.add_argument(
            "--by",
            default="route,model" if sub is report else "model",
            help="comma-separated: api_key, user, group, model, route, provider",
        )
        period = sub.add_argument_group("period (whole UTC hours; default: the last 24 hours)")
        period.add_argument(
            "--from", dest="start", help="start, ISO 8601 (on a whole hour; a date or YYYY-MM"
            " is its start)"
        )  # fmt: skip
        period.add_argument(
            "--to", dest="end", help="end, exclusive, ISO 8601 (on a whole hour; a date or"
            " YYYY-MM is its start)"
        )  # fmt: skip
        period.add_argument("--day", help="one calendar day, YYYY-MM-DD")
        period.add_argument("--month", help="one calendar month, YYYY-MM")
        period.add_argument("--last-month", action="store_true", help="the previous month")
        period.add_argument(
            "--time-zone", default="UTC", help="zone of --day/--month and of times without offset"
        )
        sub.add_argument("--format", choices=formats, default=default)
        remote = sub.add_argument_group("through the management API instead of the store")
        remote.add_argument("--api", action="store_true", help="ask the management API")
        remote.add_argument("--address", help="management API (default: the config's)")
        _token_options(remote)
        _tls_options(remote)
        remote.add_argument(
            "--timeout", type=_seconds, help=f"seconds (default {USAGE_API_TIMEOUT_S:g})"
        )
        sub.set_defaults(run=_usage_report)
    export.add_argument("--output", "-o", help="file to write (default: stdout)")
    export.add_argument(
        "--allow-partial",
        action="store_true",
        help="write --output even when hours cannot be read or have expired (else it goes to"
        " FILE.partial)",
    )


def _management(args: argparse.Namespace, client_type: Any) -> Any:
    """What ``args.call`` answers on a client of the management API; a refusal or an
    unreachable API is one line on stderr and exit 2 (1 for the gateway's own failures)."""
    from extproc.management.client import ManagementError
    from extproc.management.client_tls import client_tls

    token = _admin_token(args)
    # A gateway named by its address needs no config (the operator's laptop has none);
    # a --config given beside it still says how to reach it (management.tls.cli).
    config = None if args.address and args.config is None else _load(args.config or DEFAULT_CONFIG)
    address = args.address or (config.management.address if config is not None else "")
    try:
        tls = client_tls(tls_flags(args), config)
        with client_type(address, token.value, args.timeout, token.source, tls) as client:
            return args.call(client, args)
    except ManagementError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None


def _admin_token(args: argparse.Namespace) -> AdminToken:
    """The admin token the command line asks for (``extproc.management.admin_token``); a
    warning first when it is in the command line itself, exit 2 when there is none."""
    from extproc.management.admin_token import COMMAND_LINE_WARNING, AdminTokenError, admin_token

    if args.token:
        print(COMMAND_LINE_WARNING, file=sys.stderr)
    try:
        return admin_token(args.token, args.token_file)
    except AdminTokenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _quota(args: argparse.Namespace) -> int:
    from extproc.management.client import QuotaClient, render
    from extproc.management.v1 import management_pb2 as pb

    found = _management(args, QuotaClient)
    if isinstance(found, pb.ListQuotasResponse):
        sys.stdout.write(render(list(found.states), args.format, many=True))
        return _left_out(found.unreadable_keys)
    sys.stdout.write(render([found], args.format))
    return 0


def _left_out(unreadable: Any) -> int:
    """One warning per key a listing left out, on stderr; exit 1 when there is one: the
    list printed is short of what the store holds."""
    from extproc.management.client import unreadable_notes

    for note in unreadable_notes(unreadable):
        print(note, file=sys.stderr)
    return 1 if unreadable else 0


def _keys(args: argparse.Namespace) -> int:
    from extproc.management import client

    found = _management(args, client.KeyClient)
    if args.keys_command == "create":
        sys.stdout.write(client.render_created(found, args.format))
        print(client.SHOWN_ONCE, file=sys.stderr)
    elif args.keys_command == "revoke":
        sys.stdout.write(client.render_revoked(found, args.format))
    elif args.keys_command in ("disable", "enable"):
        sys.stdout.write(client.render_switched(found, args.format))
    elif args.keys_command == "rotate":
        sys.stdout.write(client.render_rotated(found, args.format))
        print(client.SHOWN_ONCE, file=sys.stderr)
    elif args.keys_command == "renew":
        sys.stdout.write(client.render_renewed(found, args.format))
        if found.key:
            print(client.SHOWN_ONCE, file=sys.stderr)
    elif not found.keys and args.format == "table" and _filtered(args):
        print("no API key passes these filters")
        return _left_out(found.unreadable_keys)
    else:
        sys.stdout.write(client.render_keys(list(found.keys), args.format))
        return _left_out(found.unreadable_keys)
    return 0


def _filtered(args: argparse.Namespace) -> bool:
    named = (args.user, args.group, args.status, args.expiring_within, args.source, args.label)
    return any(named)


def _seconds(text: str) -> float:
    """A timeout: 0, a negative number, inf or nan made every call fail at once with
    "no answer from the management API in time", blaming a gateway that was never asked."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text!r}")
    return seconds


def _management_options(sub: argparse.ArgumentParser) -> None:
    """How every management command reaches the API (the same for quota and keys)."""
    sub.add_argument("--config", "-c", help=f"gateway config file (default: {DEFAULT_CONFIG})")
    sub.add_argument("--address", help="management API (default: the config's)")
    _token_options(sub)
    _tls_options(sub.add_argument_group("TLS, to a management API served with management.tls"))
    sub.add_argument("--format", choices=("table", "json"), default="table")
    sub.add_argument(
        "--json", dest="format", action="store_const", const="json", help="--format json"
    )
    sub.add_argument("--timeout", type=_seconds, default=10.0, help="seconds")


def _tls_options(group: Any) -> None:
    """``--tls-*``: TLS to the management API (default: the config's management.tls.cli)."""
    group.add_argument(
        "--tls-ca", metavar="PATH", help="CA of the management API's certificate (turns TLS on)"
    )
    group.add_argument("--tls-cert", metavar="PATH", help="this client's certificate (mTLS)")
    group.add_argument("--tls-key", metavar="PATH", help="its private key (mTLS)")
    group.add_argument(
        "--tls-server-name", metavar="NAME", help="name in its certificate (default: the host)"
    )


def tls_flags(args: argparse.Namespace) -> TlsFlags:
    from extproc.management.client_tls import TlsFlags

    return TlsFlags(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)


def _token_options(group: Any) -> None:
    """``--token-file`` or ``--token`` (one of them; default: $AIGW_ADMIN_TOKEN)."""
    either = group.add_mutually_exclusive_group()
    either.add_argument(
        "--token-file", metavar="PATH",
        help="file holding the admin token (default: $AIGW_ADMIN_TOKEN)",
    )  # fmt: skip
    either.add_argument(
        "--token", help="admin token (visible in the process list: prefer --token-file)"
    )


def _page_size_option(sub: Any, entries: str) -> None:
    sub.add_argument(
        "--page-size", type=_page_size, default=PAGE_SIZE, metavar="N",
        help=f"{entries} per call to the gateway (default and most: {PAGE_SIZE}); every"
        " page is listed",
    )  # fmt: skip


def _page_size(text: str) -> int:
    try:
        size = int(text)
    except ValueError:
        size = 0
    if not 1 <= size <= PAGE_SIZE:
        raise argparse.ArgumentTypeError(f"expected a number from 1 to {PAGE_SIZE}, got {text!r}")
    return size


def _add_quota_commands(commands: Any) -> None:
    quota = commands.add_parser("quota", help="quota state at run time (management API)")
    actions = quota.add_subparsers(dest="quota_command", required=True)

    def action(name: str, help_text: str, call: Any, subject: bool = True) -> Any:
        sub = actions.add_parser(name, help=help_text)
        _management_options(sub)
        sub.add_argument("--kind", required=True, help="api_key, user, group or header:<name>")
        if subject:
            sub.add_argument("--subject", required=True, help="key id, user, group or value")
        sub.set_defaults(run=_quota, call=call)
        return sub

    action("get", "limits and usage of one subject", lambda c, a: c.get(a.kind, a.subject))
    quota_list = action(
        "list", "subjects with usage in the current windows",
        lambda c, a: c.listing(a.kind, page_size=a.page_size), subject=False,
    )  # fmt: skip
    _page_size_option(quota_list, "subjects")
    set_limit = action(
        "set", "override a limit (0: back to the config's)",
        lambda c, a: c.set_limit(a.kind, a.subject, a.rule, a.counter, _amount(a, "limit")),
    )  # fmt: skip
    adjust = action(
        "adjust", "add to usage in the current window (negative: grant)",
        lambda c, a: c.adjust(a.kind, a.subject, a.rule, a.counter, _amount(a, "delta")),
    )  # fmt: skip
    for sub, name in ((set_limit, "limit"), (adjust, "delta")):
        sub.add_argument("--rule", required=True)
        sub.add_argument(
            "--counter", required=True, help="e.g. requests_per_minute, token_quota, cost_quota"
        )
        amount = sub.add_mutually_exclusive_group(required=True)
        amount.add_argument(
            f"--{name}", type=int,
            help="requests or tokens; for cost_quota, millionths of a dollar (1000000 = $1)",
        )  # fmt: skip
        amount.add_argument(
            f"--{name}-usd", type=_usd_micros, metavar="DOLLARS",
            help="for cost_quota: dollars, up to six decimals (2500, 0.75)",
        )  # fmt: skip
    reset = action(
        "reset", "zero usage in the current window",
        lambda c, a: c.reset(a.kind, a.subject, a.rule or "", a.counter or ""),
    )  # fmt: skip
    reset.add_argument("--rule", help="default: every rule")
    reset.add_argument("--counter", help="default: every counter")


def _usd_micros(text: str) -> int:
    """Dollars as a cost budget counts them, in millionths: ``2500``, ``$2,500.50``, ``-5``."""
    from extproc.config.quota_model import MICRO_USD_PER_USD

    cleaned = text.strip().replace(",", "").replace("$", "", 1)
    try:
        dollars = Decimal(cleaned)
    except ArithmeticError:
        dollars = Decimal("NaN")
    if not dollars.is_finite():  # not a number, NaN, infinity
        raise argparse.ArgumentTypeError(f"expected dollars (2500, 0.75), got {text!r}")
    micros = dollars * MICRO_USD_PER_USD
    if micros != micros.to_integral_value():
        raise argparse.ArgumentTypeError(
            f"expected dollars with at most six decimals (budgets count millionths), got {text!r}"
        )
    return int(micros)


def _amount(args: argparse.Namespace, name: str) -> int:
    """``--limit`` / ``--delta``, or its ``-usd`` form, which only a budget in dollars takes:
    on a token counter its millionths would be read as tokens."""
    import grpc

    from extproc.management.client import ManagementError

    dollars: int | None = getattr(args, f"{name}_usd")
    if dollars is None:
        amount: int = getattr(args, name)
        return amount
    if args.counter != "cost_quota":
        raise ManagementError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"--{name}-usd is for --counter cost_quota (a budget in dollars); counter"
            f" {args.counter!r} counts requests or tokens: use --{name}",
        )
    return dollars


def _log_level(text: str) -> str:
    """A level's name in any case: logging refused any other with a traceback, after the
    command line had been accepted."""
    name = text.strip().upper()
    known = [level for level in logging.getLevelNamesMapping() if level != "NOTSET"]
    if name not in known:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(known)}, got {text!r}")
    return name


def _label(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"expected name=value, got {text!r}")
    return name, value


class _Labels(argparse.Action):
    """``--label name=value``, repeated, as a dict: a name given twice with two values is
    a usage error. Before, the last value was kept without a word (a key created with
    one team of the two its operator typed, a list filtered on one of two)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        name, value = values
        # A copy: the default dict is shared by every parse.
        labels: dict[str, str] = dict(getattr(namespace, self.dest) or {})
        if labels.get(name, value) != value:
            parser.error(
                f"argument --label: {name!r} is given twice, as {labels[name]!r} and as"
                f" {value!r}: a key has one value per label"
            )
        labels[name] = value
        setattr(namespace, self.dest, labels)


_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATIONS = "a duration such as 90, 15m, 1h or 7d"


def _duration(text: str, negative: str = "") -> float:
    """Seconds, or a number with a unit (s, m, h, d); ``negative`` adds to the refusal
    of a negative time what to ask instead."""
    number = text.rstrip("smhd")
    unit = text[len(number) :]
    try:
        seconds = float(number) * _UNITS[unit]
    except (ValueError, KeyError):
        seconds = math.nan
    if not math.isfinite(seconds):
        raise argparse.ArgumentTypeError(f"expected {_DURATIONS}, got {text!r}")
    if seconds < 0:
        raise argparse.ArgumentTypeError(
            f"expected {_DURATIONS}, not a negative time: {text!r}{negative}"
        )
    return seconds


def _expiring_within(text: str) -> float:
    """``--expiring-within``: a time from now on (keys already expired have a status)."""
    seconds = _duration(text, " (the keys already expired: --status expired)")
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration above 0, got {text!r}")
    return seconds


def _statuses(text: str) -> list[str]:
    """``--status expired,rotating``: one or more states, checked by the gateway."""
    return [name.strip() for name in text.split(",") if name.strip()]


def _timestamp(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time such as 2027-01-01T00:00:00Z, got {text!r}"
        ) from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a time zone, e.g. 2027-01-01T00:00:00Z")
    return moment.timestamp()


def _add_key_commands(commands: Any) -> None:
    keys = commands.add_parser("keys", help="API keys created at run time (management API)")
    actions = keys.add_subparsers(dest="keys_command", required=True)

    def action(name: str, help_text: str, call: Any) -> Any:
        sub = actions.add_parser(name, help=help_text)
        _management_options(sub)
        sub.set_defaults(run=_keys, call=call)
        return sub

    create = action(
        "create", "create a key and print its secret (shown this once only)",
        lambda c, a: c.create(
            a.id, user_id=a.user or "", group_id=a.group or "", labels=dict(a.label),
            expires_at=a.expires or 0.0, allowed_models=a.model, allowed_routes=a.route,
            allow_unknown_models=a.allow_unknown_model, continue_usage=a.continue_usage,
        ),
    )  # fmt: skip
    create.add_argument("--id", required=True, help="the api_key_id logs and quotas show")
    create.add_argument("--user", help="user_id of the key's requests")
    create.add_argument("--group", help="group_id of the key's requests")
    create.add_argument("--label", type=_label, action=_Labels, default={}, help="name=value")
    create.add_argument("--expires", type=_timestamp, help="ISO 8601 with a zone (default: never)")
    create.add_argument("--model", action="append", default=[], help="allowed model (repeatable)")
    create.add_argument("--route", action="append", default=[], help="allowed route (repeatable)")
    create.add_argument(
        "--allow-unknown-model",
        action="store_true",
        help="accept a --model the config does not know (a reload will add it)",
    )
    create.add_argument(
        "--continue-usage",
        action="store_true",
        help="take an id no key has but the usage rollups bill (the same holder's key)",
    )
    listing = action(
        "list", "keys of the config and keys created at run time (never a secret)",
        lambda c, a: c.listing(
            user_id=a.user or "", group_id=a.group or "", status=a.status,
            expiring_within_seconds=a.expiring_within or 0.0, source=a.source or "",
            labels=dict(a.label), page_size=a.page_size,
        ),
    )  # fmt: skip
    _page_size_option(listing, "keys")
    filters = listing.add_argument_group("filters (a key is listed when it passes all given)")
    filters.add_argument("--user", help="only keys of this user_id")
    filters.add_argument("--group", help="only keys of this group_id")
    filters.add_argument(
        "--status", type=_statuses, action="extend", default=[],
        help="only keys in these states: active (a key in a rotation's grace included),"
        " rotating, expired, disabled (comma-separated or repeated)",
    )  # fmt: skip
    filters.add_argument(
        "--expiring-within", type=_expiring_within, metavar="DURATION",
        help="only keys expiring within this time from now (not already expired): 90, 15m,"
        " 12h, 7d",
    )  # fmt: skip
    filters.add_argument("--source", choices=("config", "store"), help="only keys from here")
    filters.add_argument(
        "--label", type=_label, action=_Labels, default={}, help="only keys with name=value"
    )
    revoke = action("revoke", "delete a key created at run time", lambda c, a: c.revoke(a.id))
    revoke.add_argument("--id", required=True)
    disable = action(
        "disable", "refuse a key created at run time until it is enabled (id and secret kept)",
        lambda c, a: c.set_enabled(a.id, False),
    )  # fmt: skip
    disable.add_argument("--id", required=True)
    enable = action("enable", "let a disabled key in again", lambda c, a: c.set_enabled(a.id, True))
    enable.add_argument("--id", required=True)
    rotate = action(
        "rotate", "give a key created at run time a new secret, under the same id",
        lambda c, a: c.rotate(a.id, a.grace),
    )  # fmt: skip
    rotate.add_argument("--id", required=True)
    rotate.add_argument(
        "--grace", type=_duration, default=0.0,
        help="how long the old secret keeps working: 90, 90s, 15m, 1h, 7d (default: 0)",
    )  # fmt: skip
    renew = action(
        "renew", "give a key created at run time a new expiry (expired or not), same secret",
        lambda c, a: c.renew(
            a.id, None if a.no_expiry else a.expires, rotate=a.rotate,
            grace_seconds=a.grace or 0.0,
        ),
    )  # fmt: skip
    renew.add_argument("--id", required=True)
    # One or the other, said on purpose: a forgotten --expires never makes a key eternal.
    expiry = renew.add_mutually_exclusive_group(required=True)
    expiry.add_argument(
        "--expires", "--expires-at", dest="expires", type=_timestamp,
        help="the new expiry, ISO 8601 with a zone (in the future)",
    )  # fmt: skip
    expiry.add_argument(
        "--no-expiry", action="store_true", help="remove the key's expiry: it never expires again"
    )
    renew.add_argument(
        "--rotate", action="store_true", help="also give the key a new secret (shown once)"
    )
    renew.add_argument(
        "--grace", type=_duration,
        help="with --rotate: how long the old secret keeps working, within its own expiry",
    )  # fmt: skip


# argparse takes a word that starts with "-" for an option unless it looks like a
# negative number ("-1", "-1.5"): `--expiring-within -1d` and `--grace -1h` failed with
# "expected one argument", while `--expiring-within=-1d` was refused as a negative time.
# A number with a duration's unit is a value too, so both spellings get that refusal.
_NEGATIVE_VALUE = re.compile(r"^-\.?\d[\d.]*[smhd]?$")


class _Parser(argparse.ArgumentParser):
    """The CLI's parser (and its subcommands', which argparse makes of the same class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_VALUE


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="extproc", description=__doc__)
    parser.add_argument("--version", action="version", version=f"extproc {__version__}")
    parser.add_argument(
        "--log-level", type=_log_level, default="INFO", help="diagnostic log level (stderr)"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--config", "-c", default=DEFAULT_CONFIG, help="gateway config file")
        return sub

    serve = with_config("serve", "run the ext_proc server")
    serve.add_argument(
        "--workers", type=int, choices=range(1, 65), metavar="N",
        help="worker processes, each on its own ext_proc endpoint (default: server.workers)",
    )  # fmt: skip
    serve.set_defaults(run=_serve)
    check = with_config("check-config", "validate a config file and exit")
    check.add_argument(
        "--envoy",
        metavar="BOOTSTRAP",
        help="also compare Envoy's bootstrap file with the config's rendering (exit 1 if stale)",
    )
    check.set_defaults(run=_check_config)
    render = with_config("render-envoy", "render the Envoy bootstrap from the config")
    render.add_argument("--output", "-o", help="file to write (default: stdout)")
    render.set_defaults(run=_render_envoy)
    attach = with_config(
        "render-gateway-api", "render Envoy Gateway or kgateway attachments from the config"
    )
    attach.add_argument("--controller", choices=("envoy-gateway", "kgateway"), required=True)
    attach.add_argument("--output", "-o", help="file to write (default: stdout)")
    attach.set_defaults(run=_render_gateway_api)

    mock = commands.add_parser("mock-llm", help="run the mock LLM provider")
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=8089)
    mock.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between SSE events")
    mock.add_argument("--record", type=int, default=1000, help="requests to keep for inspection")
    mock.add_argument("--fault", help="x-mock-fault applied to every request, e.g. status=503")
    mock.add_argument("--gcp-project", default="mock-project", help="the Vertex AI project served")
    mock.add_argument("--gcp-region", default="us-east5", help="the Vertex AI region served")
    mock.add_argument(
        "--gcp-service-account",
        help="service account key file whose key the token endpoint trusts (default: none)",
    )
    mock.add_argument(
        "--gcp-token-lifetime", type=int, default=3600, help="seconds an access token lives"
    )
    mock.set_defaults(run=_mock_llm)

    _add_usage_commands(commands)
    _add_quota_commands(commands)
    _add_key_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
