"""Docs review: the configuration reference's tables against the config models, and the
metrics page a gateway serves against the metrics reference.

An operator writes a config from docs/configuration.md and builds dashboards from
docs/metrics.md: a key the page names that the loader refuses (or a default it misstates),
and a series the page shows that the reference never mentions, are both found in
production. These checks keep each pair in step and fail the moment one side moves.
"""

from __future__ import annotations

import enum
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from extproc.config import GatewayConfig
from extproc.config.model import ProviderType, RouteApi, RouteConfig
from extproc.runtime import Services
from tests.unit.test_docs_reference import completed_line, documented_metrics

CONFIGURATION = Path("docs/configuration.md")
_SECTION = re.compile(r"^### `([a-z_]+)`\n", re.MULTILINE)
_TABLE_ROW = re.compile(r"^\| (?P<keys>[^|]+?) \| (?P<second>[^|]+?) \|", re.MULTILINE)
_KEY = re.compile(r"`([a-z_0-9.<>]+)`")
# Section tables whose second column is the meaning, not a default.
_NO_DEFAULT_COLUMN = {"providers", "models", "routes"}
# A default the page describes in words (`server.grpc_address`, "the input price"):
# the key is checked, its value is not.
_DESCRIBED = object()


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The config models an annotation holds: itself, or inside Optional / tuple / dict."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]


def config_field(dotted: str) -> FieldInfo | None:
    """The model field a documented key names (`telemetry.log.file`,
    `pricing.models.<m>.input_per_million`: `<m>` is any key of a mapping), or None."""
    models: list[type[BaseModel]] = [GatewayConfig]
    found: FieldInfo | None = None
    for part in dotted.split("."):
        if part.startswith("<"):
            assert found is not None
            value_type = typing.get_args(found.annotation)[-1]
            models = _models_in(value_type)
            continue
        fields = [model.model_fields[part] for model in models if part in model.model_fields]
        if not fields:
            return None
        found = fields[0]
        models = _models_in(found.annotation)
    return found


def documented_keys() -> list[tuple[str, str]]:
    """(dotted key, the default column's text, or "" where there is none) of every row
    of every section table of the configuration reference."""
    parts = _SECTION.split(CONFIGURATION.read_text(encoding="utf-8"))
    rows: list[tuple[str, str]] = []
    for section, body in zip(parts[1::2], parts[2::2], strict=True):
        for row in _TABLE_ROW.finditer(body):
            keys = _KEY.findall(row.group("keys"))
            if not keys or row.group("keys").strip() == "key":
                continue
            second = "" if section in _NO_DEFAULT_COLUMN else row.group("second").strip()
            # Two keys in one row (`listener_address`, `listener_port`) give two defaults.
            defaults = re.findall(r"`[^`]*`", second)
            for index, key in enumerate(keys):
                text = defaults[index] if len(keys) > 1 and len(defaults) == len(keys) else second
                rows.append((f"{section}.{key}", text))
    return rows


def _documented_default(text: str, field: FieldInfo) -> Any:
    """What a default column says, read as a config value would be."""
    if text == "none":
        return None
    if text == "required":
        return "required"
    quoted = re.fullmatch(r"`([^`]*)`(?: \([^)]*\))?", text)
    # Unset in the model, taken from elsewhere: `server.grpc_address` names where from.
    if quoted is None or field.default is None:
        return _DESCRIBED
    if isinstance(field.default, str):
        return quoted.group(1)  # `aigw:` is a string, not a YAML mapping
    return yaml.safe_load(quoted.group(1))


def _same(documented: Any, default: Any) -> bool:
    if isinstance(default, BaseModel):
        dumped = default.model_dump(mode="json")
        return all(dumped.get(key) == value for key, value in documented.items())
    if isinstance(default, tuple):
        default = list(default)
    if isinstance(default, str):  # StrEnum members compare as their value
        return str(documented) == default
    return bool(documented == default)


def test_the_reference_shows_its_keys() -> None:
    keys = [key for key, _ in documented_keys()]
    assert "server.grpc_address" in keys and "pricing.models.<m>.long_context" in keys


@pytest.mark.parametrize(("key", "default"), documented_keys())
def test_each_key_the_configuration_reference_names_exists_with_its_default(
    key: str, default: str
) -> None:
    """A key copied from the page loads, and leaving it out gives what the page says."""
    field = config_field(key)
    assert field is not None, f"{key}: documented, but the config has no such key"
    if not default:
        return
    expected = _documented_default(default, field)
    if expected is _DESCRIBED:
        return
    if expected is None:
        assert field.default in (None, (), {}) or field.default_factory is not None, key
    elif expected == "required":
        assert field.is_required(), f"{key}: documented as required, has a default"
    else:
        actual = field.get_default(call_default_factory=True)
        assert _same(expected, actual), f"{key}: documented default {default}, code {actual!r}"


def test_every_key_of_a_documented_section_is_in_its_table() -> None:
    """The other way round: a key the loader takes but the page's table leaves out is a
    setting no operator finds (sections described in prose only are not checked)."""
    documented = {key.split(".<")[0] for key, _ in documented_keys()}
    tabled = {key.split(".")[0] for key in documented}
    missing = []
    for section in sorted(tabled):
        for model in _models_in(GatewayConfig.model_fields[section].annotation):
            missing += [
                f"{section}.{name}"
                for name in model.model_fields
                if not any(key.split(".")[:2] == [section, name] for key in documented)
            ]
    assert missing == []


def documented_rows() -> list[tuple[str, str]]:
    """(dotted key, the whole table row) of every key of every section table."""
    parts = _SECTION.split(CONFIGURATION.read_text(encoding="utf-8"))
    return [
        (f"{section}.{key}", line)
        for section, body in zip(parts[1::2], parts[2::2], strict=True)
        for line in body.splitlines()
        if line.startswith("| `")
        for key in _KEY.findall(line.split(" | ")[0])
    ]


def _names_in(row: str) -> set[str]:
    """The key names a row writes out: each backticked name, a brace list spelled out
    (`requests_per_{second,minute}`), and `<name>_file` where the row says `*_file`."""
    names = set(re.findall(r"`([a-z_0-9]+)", row))
    for head, alternatives, tail in re.findall(r"([a-z_]+)\{([a-z_,]+)\}([a-z_]*)", row):
        names |= {head + each + tail for each in alternatives.split(",")}
    if "*_file" in row:
        names |= {name + "_file" for name in names}
    return names


def _siblings(key: str, rows: list[tuple[str, str]]) -> set[str]:
    """The last names of the rows beside ``key`` (a tier's entry "with the keys above")."""
    parent = key.rsplit(".", 1)[0]
    return {row_key.rsplit(".", 1)[1] for row_key, _ in rows if row_key.startswith(parent + ".")}


def test_every_key_of_a_documented_keys_entries_is_named() -> None:
    """One level down: a row whose key holds entries (`quotas.rules`, `auth.jwt_providers`,
    `pricing.models.<m>.long_context`) names each key an entry takes, in its text or in a
    row of its own (`pricing.models.<m>.audio_input_per_million`). A key added to a rule
    or a price entry but to no row is a setting an operator reading the table never
    learns of, and its default and validation go with it."""
    rows = documented_rows()
    tabled = {key for key, _ in rows}
    missing = []
    for key, row in rows:
        field = config_field(key)
        assert field is not None, key
        named = _names_in(row)
        if "the keys above" in row:
            named |= _siblings(key, rows)
        for model in _models_in(field.annotation):
            missing += [
                f"{key}.{name}"
                for name in model.model_fields
                if name not in named
                and f"{key}.{name}" not in tabled
                and not any(re.fullmatch(rf"{re.escape(key)}\.<\w+>\.{name}", t) for t in tabled)
            ]
    assert missing == []


def test_a_providers_aws_keys_are_all_documented() -> None:
    """`providers[].aws` lists its keys inline; a Bedrock-compatible endpoint signed for
    another SigV4 service name needs `service`, which the loader takes."""
    from extproc.config.model import AwsConfig

    row = next(
        line
        for line in CONFIGURATION.read_text(encoding="utf-8").splitlines()
        if line.startswith("| `aws` |")
    )
    named = set(_KEY.findall(row)) | {
        f"{name}_file" for name in _KEY.findall(row) if "*_file" in row
    }
    assert set(AwsConfig.model_fields) <= named, set(AwsConfig.model_fields) - named


# --- the metrics page ------------------------------------------------------------------

_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def documented_series() -> set[str]:
    """Every series name docs/metrics.md and docs/agents.md#metrics list, as a scrape
    shows it (counters with `_total`, histograms with their three series)."""
    found: set[str] = set()
    for page in (Path("docs/metrics.md"), Path("docs/agents.md")):
        for name, (kind, _) in documented_metrics(page).items():
            base = name.removesuffix("_total") if kind == "counter" else name
            found.update(base + suffix for suffix in _SUFFIXES[kind])
    return found


async def test_the_metrics_page_shows_only_series_the_reference_lists(
    config: GatewayConfig, services: Services
) -> None:
    """After one completed request a single gateway's /metrics page (the same registry
    and rendering the HTTP side serves) holds no series the reference leaves out.
    prometheus_client adds a `<name>_created` gauge beside every counter and histogram
    series by default: one more series per label set, undocumented, and absent from the
    merged page of `serve --workers N`, which the reference says shows what one process
    would."""
    await completed_line(config, services)
    page = generate_latest(services.metrics.registry).decode()
    shown = {
        sample.name for family in text_string_to_metric_families(page) for sample in family.samples
    }
    assert "tokens_consumed_total" in shown
    assert shown - documented_series() == set()


def _config_enums(model: type[BaseModel], seen: set[type[BaseModel]]) -> set[type[enum.Enum]]:
    """Every enum a config key of ``model`` (or of a model inside it) takes."""
    if model in seen:
        return set()
    seen.add(model)
    found: set[type[enum.Enum]] = set()

    def inner(annotation: Any) -> list[Any]:
        return [annotation, *(part for arg in typing.get_args(annotation) for part in inner(arg))]

    for field in model.model_fields.values():
        for kind in inner(field.annotation):
            if isinstance(kind, type) and issubclass(kind, enum.Enum):
                found.add(kind)
            elif isinstance(kind, type) and issubclass(kind, BaseModel):
                found |= _config_enums(kind, seen)
    return found


def _route_api_row() -> str:
    routes = CONFIGURATION.read_text(encoding="utf-8").split("### `routes`")[1]
    return next(line for line in routes.splitlines() if line.startswith("| `api` |"))


def _takes_route_api(api: RouteApi) -> bool:
    try:
        RouteConfig.model_validate({"name": "r", "path_prefix": "/r", "api": api.value})
    except ValidationError:
        return False
    return True


def test_every_value_a_config_key_takes_is_documented() -> None:
    """A value the loader takes that no page names (a new `failure_mode`, a quota
    `period`) is one an operator cannot choose; enums only the request's path sets
    (Bedrock's InvokeModel under a `bedrock_converse` route) are refused as a route's
    `api`, and need no entry."""
    pages = "".join(page.read_text(encoding="utf-8") for page in Path("docs").glob("*.md"))
    missing = [
        f"{kind.__name__}.{member.name}"
        for kind in _config_enums(GatewayConfig, set())
        for member in kind
        if f"`{member.value}`" not in pages
        and not (isinstance(member, RouteApi) and not _takes_route_api(member))
    ]
    assert missing == []


def test_the_routes_api_row_names_every_api_a_route_takes_and_only_those() -> None:
    row = _route_api_row()
    taken = {api.value for api in RouteApi if _takes_route_api(api)}
    assert sorted(api for api in taken if f"`{api}`" not in row) == []
    # Each value the row describes ("`openai_chat` (OpenAI chat completions)") loads; the
    # provider types it names along the way (`vertex` (under the provider's ...)) are none.
    described = set(re.findall(r"`([a-z0-9_]+)` \(", row)) - {kind.value for kind in ProviderType}
    assert described and sorted(described - taken) == []
