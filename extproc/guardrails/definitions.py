"""The text of a request's tool definitions and structured-output schemas, as guard slots.

Providers render tool definitions and a structured output's schema into the prompt: the
model reads a tool's ``description``, its parameters' descriptions and the values a
schema allows as it reads the system prompt. Left unread, they were a way around every
guard: a refused topic or an address written in a parameter's description reached the
model unchecked. They are the developer's text, so they are read with the role
``system`` (webhooks get them as such entries; moderation reads them when its ``roles``
include ``system``), before the conversation, as the providers place them.

Where they are, by the API the client speaks:

- OpenAI chat: ``tools[].function`` and ``tools[].custom`` (a custom tool), the legacy
  ``functions``, and ``response_format.json_schema``;
- Anthropic Messages (and Claude's InvokeModel body): ``tools[]`` (``input_schema``,
  ``input_examples``), ``output_config.format`` and the beta ``output_format``;
- Responses API: ``tools[]`` (a function's or custom tool's definition, an MCP server's
  ``server_description``) and ``text.format``;
- Bedrock Converse: ``toolConfig.tools[].toolSpec`` (``inputSchema.json``) and
  ``outputConfig.textFormat.structure.jsonSchema``, whose ``schema`` is JSON text: it is
  read parsed, and a mask writes it again from the parse (``_JsonText``);
- Gemini: ``tools[].functionDeclarations`` (``parameters``, ``parametersJsonSchema``,
  ``response``, ``responseJsonSchema``) and ``generationConfig.responseSchema`` /
  ``responseJsonSchema``, camelCase and snake_case alike.

What is read, and how a mask writes there:

- free text, masked in place (the schema stays the schema it was): a definition's
  ``description``, a schema's ``description``, ``title`` and ``$comment``, and each string
  (and object key) in its ``enum``, ``const``, ``default``, ``examples`` and ``example``
  values, the values the model is shown or told to produce (an ``enum``'s masked values
  stay distinct, objects and arrays among them too, ``schema_enum``: strict providers
  refuse a value listed twice);
- names something refers to, ``fixed``: a tool's ``name`` (its calls name it), a schema's
  property names (``properties``, ``required``, ``$defs``...: the arguments' keys) and a
  custom tool's grammar (``format``'s ``definition``, which the provider compiles). A
  ``REJECT`` guard matching there refuses as anywhere; a ``MASK`` guard refuses too,
  naming what it found and where, rather than break the tool (a masked name would no
  longer be the one its calls use);
- not read: the schema's structure (``type``, ``format``, ``pattern``, ``$ref``,
  ``additionalProperties`` flags...), settings (``strict``), and whatever a definition
  holds that the model is not shown: an MCP server's URL, headers and authorization
  (credentials, never sent to a webhook), server tools' settings but for their domains,
  user location and search filters (a Responses file search's, Gemini's File Search and
  Vertex's retrieval filters), which the provider hands on to its search
  (``_DOMAIN_LISTS``, ``_FILE_SEARCH``): those are read ``fixed``, as an MCP server's name
  and the tools it allows are.

The walk reads the already-parsed body (no parse of its own, but for a Converse output
schema's JSON text), without recursion: a schema's depth cannot exhaust the stack.
"""

from __future__ import annotations

from typing import Any

import orjson

from extproc.gemini_api import GENERATION_CONFIG, RESPONSE_SCHEMAS
from extproc.guardrails.content import SERVER_NAME, TextSlot
from extproc.guardrails.converse_text import dicts, json_value_slots
from extproc.guardrails.gemini_text import spellings
from extproc.guardrails.schema_enum import DistinctEnum

# The developer writes tool definitions and schemas, as the system prompt.
ROLE = "system"

TOOL_NAME = "a tool's name"
FORMAT_NAME = "a structured output's name"
PROPERTY_NAME = "a schema's property name"
GRAMMAR = "a custom tool's grammar"
SETTING = "a server tool's setting"

# Server tools' settings the provider reads and hands its search or fetch on (web search
# and fetch on Anthropic's and the Responses API, chat's ``web_search_options``): domains
# and a user's location; a file search's filters and Gemini's retrieval settings alike
# (``_file_filter_slots``, ``_TOOL_CONFIG``). Not the model's text, but text leaving for
# the provider, so a refused term or a key there must meet the guards; a domain, a country
# code or a filter's value masked would no longer be one, so they are read ``fixed``.
_DOMAIN_LISTS = ("allowed_domains", "blocked_domains")
_LOCATION = "user_location"
# Gemini's Google Search tool (and Vertex's Web Grounding for Enterprise) and the domains
# it leaves out, both spellings.
_GOOGLE_SEARCH = (
    "googleSearch",
    "google_search",
    "enterpriseWebSearch",
    "enterprise_web_search",
)
# Gemini's File Search and Vertex's retrieval tools: their filters are handed on to the
# store's search (AIP-160 expressions, Vertex AI Search filters), as a Responses file
# search's are: a term or a key written there left the gateway unread. A filter masked
# would select other documents, or none.
_FILE_SEARCH = ("fileSearch", "file_search")
_RETRIEVAL = ("retrieval",)
_VERTEX_AI_SEARCH = ("vertexAiSearch", "vertex_ai_search")
_DATA_STORE_SPECS = ("dataStoreSpecs", "data_store_specs")
_RAG_STORE = ("vertexRagStore", "vertex_rag_store")
_RAG_RETRIEVAL_CONFIG = ("ragRetrievalConfig", "rag_retrieval_config")
_METADATA_FILTER = ("metadataFilter", "metadata_filter")
_EXCLUDED_DOMAINS = ("excludeDomains", "exclude_domains")
# Gemini's retrieval settings (Google Maps grounding): the user's language, handed on to
# the search with the user's position (numbers, which no matcher reads as text).
_TOOL_CONFIG = ("toolConfig", "tool_config")
_RETRIEVAL_CONFIG = ("retrievalConfig", "retrieval_config")
_LANGUAGE_CODE = ("languageCode", "language_code")
# How deep a file search's compound filters are walked (``and`` / ``or`` of filters).
_MAX_FILTER_DEPTH = 64

# A schema's keywords that hold text the model reads as language.
_TEXT_KEYWORDS = frozenset(("description", "title", "$comment"))
# Keywords holding values the model is shown or told to produce: each string is text.
_VALUE_KEYWORDS = frozenset(("enum", "const", "default", "examples", "example"))
# Keywords whose object maps names (of properties, of definitions a ``$ref`` names) to
# schemas: each name is fixed, each schema walked.
_NAMED_SCHEMAS = frozenset(("properties", "$defs", "definitions", "dependentSchemas"))
# Keywords listing property names (Gemini's ``propertyOrdering`` too).
_NAME_LISTS = frozenset(("required", "propertyOrdering", "property_ordering"))
# Keywords whose object maps what is no language (regular expressions, property names
# already read) to schemas: the keys are not read, the schemas are.
_KEYED_SCHEMAS = frozenset(("patternProperties", "dependentRequired"))

# Gemini's spellings (``gemini_api``: camelCase, then snake_case).
_DECLARATIONS = ("functionDeclarations", "function_declarations")
_GEMINI_SCHEMAS = (
    ("parameters",),
    ("parametersJsonSchema", "parameters_json_schema"),
    ("response",),
    ("responseJsonSchema", "response_json_schema"),
)


def chat_slots(body: dict[str, Any]) -> list[TextSlot]:
    """The definitions of an OpenAI chat or an Anthropic Messages request."""
    slots: list[TextSlot] = []
    for field in ("tools", "functions"):
        for tool in dicts(body.get(field)):
            _tool_slots(tool, slots)
    options = body.get("web_search_options")
    if isinstance(options, dict):
        _location_slots(options.get(_LOCATION), slots)
    # Anthropic's MCP connector: each server's name and the tools it allows, which name
    # the tools the model is given (its URL and token are no text: credentials).
    for server in dicts(body.get("mcp_servers")):
        _string(server, "name", slots, SERVER_NAME)
        configuration = server.get("tool_configuration")
        if isinstance(configuration, dict):
            _name_list(configuration.get("allowed_tools"), slots)
    _format_slots(body.get("response_format"), slots)
    config = body.get("output_config")
    if isinstance(config, dict):
        _format_slots(config.get("format"), slots)
    _format_slots(body.get("output_format"), slots)
    return slots


def responses_slots(body: dict[str, Any]) -> list[TextSlot]:
    """The definitions of a Responses API request: its tools and ``text.format``."""
    slots: list[TextSlot] = []
    for tool in dicts(body.get("tools")):
        _tool_slots(tool, slots)
    text = body.get("text")
    if isinstance(text, dict):
        _format_slots(text.get("format"), slots)
    return slots


def converse_slots(body: dict[str, Any]) -> list[TextSlot]:
    """The definitions of a Bedrock Converse request: ``toolConfig`` and ``outputConfig``."""
    slots: list[TextSlot] = []
    config = body.get("toolConfig")
    if isinstance(config, dict):
        for tool in dicts(config.get("tools")):
            spec = tool.get("toolSpec")
            if isinstance(spec, dict):
                _definition_slots(spec, slots)
                schema = spec.get("inputSchema")
                if isinstance(schema, dict):
                    schema_slots(schema, "json", slots)
    output = body.get("outputConfig")
    text_format = output.get("textFormat") if isinstance(output, dict) else None
    structure = text_format.get("structure") if isinstance(text_format, dict) else None
    definition = structure.get("jsonSchema") if isinstance(structure, dict) else None
    if isinstance(definition, dict):
        _definition_slots(definition, slots, FORMAT_NAME)
        _json_text_schema_slots(definition, "schema", slots)
    return slots


def gemini_slots(request: dict[str, Any]) -> list[TextSlot]:
    """The definitions of a Gemini request (``gemini_text.guarded_request``'s): function
    declarations and the structured output's schema."""
    slots: list[TextSlot] = []
    for tool in dicts(request.get("tools")):
        for declarations in spellings(tool, _DECLARATIONS):
            for declaration in dicts(declarations):
                _definition_slots(declaration, slots)
                for names in _GEMINI_SCHEMAS:
                    for name in names:
                        schema_slots(declaration, name, slots)
        for search in spellings(tool, _GOOGLE_SEARCH):
            if isinstance(search, dict):
                for excluded in spellings(search, _EXCLUDED_DOMAINS):
                    _setting_list(excluded, slots)
        _retrieval_filter_slots(tool, slots)
    for config in spellings(request, _TOOL_CONFIG):
        for retrieval in spellings(config, _RETRIEVAL_CONFIG) if isinstance(config, dict) else ():
            if isinstance(retrieval, dict):
                _spelled_settings(retrieval, _LANGUAGE_CODE, slots)
    for config in spellings(request, GENERATION_CONFIG):
        if isinstance(config, dict):
            for names in RESPONSE_SCHEMAS:
                for name in names:
                    schema_slots(config, name, slots)
    return slots


def _retrieval_filter_slots(tool: dict[str, Any], slots: list[TextSlot]) -> None:
    """A Gemini tool's search filters (``_FILE_SEARCH``): File Search's ``metadataFilter``,
    Vertex AI Search's ``filter`` and each data store's, a RAG store's
    ``ragRetrievalConfig.filter.metadataFilter``."""
    for search in spellings(tool, _FILE_SEARCH):
        if isinstance(search, dict):
            _spelled_settings(search, _METADATA_FILTER, slots)
    for retrieval in spellings(tool, _RETRIEVAL):
        if not isinstance(retrieval, dict):
            continue
        for engine in spellings(retrieval, _VERTEX_AI_SEARCH):
            if isinstance(engine, dict):
                _string(engine, "filter", slots, SETTING)
                for specs in spellings(engine, _DATA_STORE_SPECS):
                    for spec in dicts(specs):
                        _string(spec, "filter", slots, SETTING)
        for store in spellings(retrieval, _RAG_STORE):
            for config in (
                spellings(store, _RAG_RETRIEVAL_CONFIG) if isinstance(store, dict) else ()
            ):
                found = config.get("filter") if isinstance(config, dict) else None
                if isinstance(found, dict):
                    _spelled_settings(found, _METADATA_FILTER, slots)


def _spelled_settings(
    holder: dict[str, Any], names: tuple[str, ...], slots: list[TextSlot]
) -> None:
    for name in names:
        _string(holder, name, slots, SETTING)


def _tool_slots(tool: dict[str, Any], slots: list[TextSlot]) -> None:
    """One entry of ``tools``: OpenAI chat nests a definition in ``function`` or ``custom``;
    Anthropic, the Responses API and the legacy ``functions`` write it flat."""
    for nested in ("function", "custom"):
        definition = tool.get(nested)
        if isinstance(definition, dict):
            _definition_slots(definition, slots)
            return
    _definition_slots(tool, slots)
    _server_setting_slots(tool, slots)
    if tool.get("type") == "mcp":
        # A Responses MCP tool's server label and allowed tools name what the model calls.
        _string(tool, "server_label", slots, SERVER_NAME)
        allowed = tool.get("allowed_tools")
        _name_list(allowed.get("tool_names") if isinstance(allowed, dict) else allowed, slots)


def _server_setting_slots(tool: dict[str, Any], slots: list[TextSlot]) -> None:
    """A server tool's domains and user location (``_DOMAIN_LISTS``): Anthropic's web
    search and fetch write the domains flat, the Responses API's web search in
    ``filters``."""
    filters = tool.get("filters")
    if tool.get("type") == "file_search":
        _file_filter_slots(filters, slots)
        return
    for holder in (tool, filters if isinstance(filters, dict) else {}):
        for field in _DOMAIN_LISTS:
            _setting_list(holder.get(field), slots)
    _location_slots(tool.get(_LOCATION), slots)


def _file_filter_slots(filters: Any, slots: list[TextSlot]) -> None:
    """A Responses file search's ``filters``: each comparison's attribute ``key`` and its
    ``value`` (a string, or strings in a list), under compound ``and`` / ``or`` filters.
    The provider sends them on to the vector store's search, so a term or a key put there
    left the gateway unread; masked, a filter would select other files (or none), so they
    are read ``fixed`` as the other settings are. Walked with a list, not recursion."""
    pending: list[tuple[Any, int]] = [(filters, 0)]
    while pending:
        current, depth = pending.pop()
        if not isinstance(current, dict) or depth > _MAX_FILTER_DEPTH:
            continue
        _string(current, "key", slots, SETTING)
        value = current.get("value")
        if isinstance(value, str):
            slots.append(TextSlot(ROLE, current, "value", fixed=SETTING))
        else:
            _setting_list(value, slots)
        nested = current.get("filters")
        if isinstance(nested, list):
            pending.extend((item, depth + 1) for item in reversed(nested))


def _location_slots(location: Any, slots: list[TextSlot]) -> None:
    """A user's location (``city``, ``region``, ``country``, ``timezone``), flat or in
    chat's ``approximate``; its ``type`` is structure."""
    if not isinstance(location, dict):
        return
    approximate = location.get("approximate")
    for holder in (location, approximate if isinstance(approximate, dict) else {}):
        for key, value in holder.items():
            if key != "type" and isinstance(value, str):
                slots.append(TextSlot(ROLE, holder, key, fixed=SETTING))


def _name_list(values: Any, slots: list[TextSlot]) -> None:
    if isinstance(values, list):
        for index, value in enumerate(values):
            if isinstance(value, str):
                slots.append(TextSlot(ROLE, values, index, fixed=TOOL_NAME))


def _setting_list(values: Any, slots: list[TextSlot]) -> None:
    if isinstance(values, list):
        for index, value in enumerate(values):
            if isinstance(value, str):
                slots.append(TextSlot(ROLE, values, index, fixed=SETTING))


def _definition_slots(
    definition: dict[str, Any], slots: list[TextSlot], name: str = TOOL_NAME
) -> None:
    """A tool's (or a structured output's) name, description and schemas."""
    _string(definition, "name", slots, name)
    _string(definition, "description", slots)
    # A Responses API MCP tool's description of its server, which the model is given.
    _string(definition, "server_description", slots)
    for key in ("parameters", "input_schema", "schema"):
        schema_slots(definition, key, slots)
    # Anthropic's examples of a tool's input (``input_examples``): values the model reads.
    json_value_slots(ROLE, definition, "input_examples", slots)
    _grammar_slots(definition.get("format"), slots)


def _grammar_slots(value: Any, slots: list[TextSlot]) -> None:
    """A custom tool's grammar (chat nests it in ``grammar``): the provider compiles it, so
    a mask cannot rewrite it."""
    if not isinstance(value, dict) or value.get("type") != "grammar":
        return
    grammar = value.get("grammar")
    _string(grammar if isinstance(grammar, dict) else value, "definition", slots, GRAMMAR)


def _format_slots(value: Any, slots: list[TextSlot]) -> None:
    """A structured output's definition: chat nests it in ``json_schema``; the Responses
    API and Anthropic write it beside ``type``."""
    if not isinstance(value, dict) or value.get("type") != "json_schema":
        return
    nested = value.get("json_schema")
    _definition_slots(nested if isinstance(nested, dict) else value, slots, FORMAT_NAME)


def schema_slots(holder: dict[str, Any], key: str, slots: list[TextSlot]) -> None:
    """The text and names of the JSON schema ``holder[key]`` (JSON Schema, or Gemini's
    OpenAPI subset), in document order (the module docstring)."""
    pending: list[Any] = [holder.get(key)]
    while pending:
        schema = pending.pop()
        if not isinstance(schema, dict):
            continue
        found: list[Any] = []  # this schema's subschemas, in order
        for keyword, value in schema.items():
            if keyword in _TEXT_KEYWORDS:
                _string(schema, keyword, slots)
            elif keyword in _VALUE_KEYWORDS:
                if isinstance(value, list):
                    # The common ``enum`` of strings: a slot each, without the walk of
                    # a JSON value (an object's members, keys included, take that walk).
                    # An enum's masked values stay distinct (``schema_enum``).
                    values: Any = DistinctEnum(value) if keyword == "enum" else value
                    for index, item in enumerate(value):
                        if isinstance(item, str):
                            slots.append(TextSlot(ROLE, values, index))
                        elif isinstance(item, dict | list):
                            first = len(slots)
                            json_value_slots(ROLE, {"value": item}, "value", slots)
                            if keyword == "enum":
                                # An object or array entry masked like another stays
                                # distinct too: its slots write through the enum.
                                for slot in slots[first:]:
                                    slot.holder = values.inside(index, slot.holder)
                else:
                    json_value_slots(ROLE, schema, keyword, slots)
            elif keyword in _NAMED_SCHEMAS and isinstance(value, dict):
                names = list(value)
                for index, name in enumerate(names):
                    if isinstance(name, str):
                        slots.append(TextSlot(ROLE, names, index, fixed=PROPERTY_NAME))
                found.extend(value.values())
            elif keyword in _NAME_LISTS and isinstance(value, list):
                # Most name properties read already (strict mode requires them all):
                # only a name no property has is read again here.
                defined = schema.get("properties")
                defined = defined if isinstance(defined, dict) else {}
                for index, name in enumerate(value):
                    if isinstance(name, str) and name not in defined:
                        slots.append(TextSlot(ROLE, value, index, fixed=PROPERTY_NAME))
            elif keyword in _KEYED_SCHEMAS and isinstance(value, dict):
                found.extend(value.values())
            elif isinstance(value, dict):
                found.append(value)  # items, not, if/then/else, additionalProperties...
            elif isinstance(value, list):
                found.extend(value)  # anyOf, oneOf, allOf, prefixItems
        # Pushed last to first, so they come off the list in order.
        pending.extend(reversed(found))


def _json_text_schema_slots(holder: dict[str, Any], key: str, slots: list[TextSlot]) -> None:
    """A schema given as JSON text (Converse's output schema): read parsed, each write
    landing in the parse and the text written again from it. Text that is no JSON object
    (Bedrock refuses it) is read as it is, and cannot be masked."""
    text = holder.get(key)
    if not isinstance(text, str):
        return
    try:
        schema = orjson.loads(text)
    except orjson.JSONDecodeError:
        schema = None
    if not isinstance(schema, dict):
        slots.append(TextSlot(ROLE, holder, key, fixed="a structured output's schema"))
        return
    document = _JsonText(holder, key, schema)
    found: list[TextSlot] = []
    schema_slots({"schema": schema}, "schema", found)
    for slot in found:
        slots.append(
            TextSlot(slot.role, _InJsonText(slot.holder, document), slot.key, fixed=slot.fixed)
        )


class _JsonText:
    """A schema carried as JSON text in ``holder[key]``, and its parse."""

    __slots__ = ("_holder", "_key", "parsed")

    def __init__(self, holder: dict[str, Any], key: str, parsed: dict[str, Any]) -> None:
        self._holder = holder
        self._key = key
        self.parsed = parsed

    def write(self) -> None:
        self._holder[self._key] = orjson.dumps(self.parsed).decode()


class _InJsonText:
    """A ``TextSlot`` holder inside a ``_JsonText``'s parse: a write lands there, and the
    JSON text is written again from it."""

    __slots__ = ("_document", "_holder")

    def __init__(self, holder: Any, document: _JsonText) -> None:
        self._holder = holder
        self._document = document

    def __getitem__(self, key: Any) -> Any:
        return self._holder[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._holder[key] = value
        self._document.write()


def _string(
    holder: dict[str, Any], key: str, slots: list[TextSlot], fixed: str | None = None
) -> None:
    if isinstance(holder.get(key), str):
        slots.append(TextSlot(ROLE, holder, key, fixed=fixed))
