"""The commands the README and docs/ show, against the CLI and the Makefile.

An operator's first hour is copying these lines: a subcommand renamed, a flag dropped
or a `make` target gone turns a page into a trap. So every `extproc ...` line of a
code block must parse with the real argument parser, every synopsis in prose
(`extproc usage report|export [--from --to --by --format]`) may name only
subcommands and flags that exist, every `make <target>` must be a Makefile target
(and every target be named on some page), and every link between pages must land on
a file and, when it names one, a heading.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from extproc.cli import build_parser

DOCS = [Path("README.md"), *sorted(Path("docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
# `extproc` as a command word: at the start, after a path (.venv/bin/) or an env prefix.
COMMAND = re.compile(r"(?:^|[\s/])extproc\s+([a-z-].*)$")
INLINE = re.compile(r"`([^`]*\bextproc [a-z][^`]*)`")
# Values the docs write as placeholders or shell syntax: such a line is a synopsis.
PLACEHOLDER = re.compile(r"\[|<|\.\.\.|\||\bFILE\b")


def _lines_of_code_blocks(text: str) -> list[str]:
    """Every line of every fenced block, continuation lines (`\\`) joined."""
    return [
        line
        for block in FENCE.findall(text)
        for line in re.sub(r"\\\n\s*", " ", block).splitlines()
    ]


def _command_words(line: str) -> list[str] | None:
    """The words after `extproc` on a shell line (comment and `$ ` prompt removed)."""
    if line.lstrip().startswith("#"):
        return None
    found = COMMAND.search(line)
    if found is None:
        return None
    return shlex.split(found.group(1), comments=True)


def code_block_commands() -> list[tuple[str, str]]:
    """(page, line) of each complete `extproc` command a code block shows."""
    found = []
    for doc in DOCS:
        for line in _lines_of_code_blocks(doc.read_text()):
            words = _command_words(line)
            if words and not PLACEHOLDER.search(" ".join(words)):
                found.append((str(doc), line.strip()))
    return found


def synopses() -> list[tuple[str, str]]:
    """(page, text) of each `extproc ...` the docs name: prose spans and block lines."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        prose = FENCE.sub("", text).replace("\n", " ")
        found += [(str(doc), span) for span in INLINE.findall(prose)]
        found += [
            (str(doc), line.strip()) for line in _lines_of_code_blocks(text) if _command_words(line)
        ]
    return found


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _unknown_names(words: list[str]) -> list[str]:
    """Subcommands and flags in ``words`` (after `extproc`) that the CLI does not have.

    Alternatives (`get|list`) are each checked; bracketed optional parts are read for
    their flags; other words (values, placeholders) are not judged.
    """
    unknown: list[str] = []
    paths = [build_parser()]
    for word in words:
        word = word.strip("[]")
        choices = [_subcommands(parser) for parser in paths]
        if all(choices) and not word.startswith("-"):
            names = word.split("|")
            unknown += [name for name in names if name not in choices[0]]
            paths = [options[name] for options in choices for name in names if name in options]
            continue
        flag = word.split("=", 1)[0]
        if flag.startswith("-") and not re.fullmatch(r"-[\d.]*", flag):  # not -1000
            unknown += [flag for parser in paths if flag not in parser._option_string_actions]
    return unknown


@pytest.mark.parametrize(("page", "line"), code_block_commands())
def test_each_command_a_code_block_shows_parses(page: str, line: str) -> None:
    words = _command_words(line)
    assert words is not None
    try:
        build_parser().parse_args(words)
    except SystemExit as refused:  # argparse's way of saying "usage error"
        pytest.fail(f"{page}: `{line}` is refused by the CLI (exit {refused.code})")


def test_the_docs_show_complete_commands() -> None:
    shown = {line.split("extproc", 1)[1].split()[0] for _, line in code_block_commands()}
    assert {"usage", "quota", "keys"} <= shown


@pytest.mark.parametrize(("page", "text"), synopses())
def test_each_subcommand_and_flag_the_docs_name_exists(page: str, text: str) -> None:
    found = COMMAND.search(text.replace("\\|", "|"))
    assert found is not None
    words = [word for word in shlex.split(found.group(1), comments=True) if word]
    assert _unknown_names(words) == [], f"{page}: `{text}`"


def cli_commands(
    parser: argparse.ArgumentParser | None = None, path: tuple[str, ...] = ()
) -> dict[str, argparse.ArgumentParser]:
    """Every command a user runs ("keys renew"), by its words, with its parser."""
    parser = parser or build_parser()
    subcommands = _subcommands(parser)
    if not subcommands:
        return {" ".join(path): parser}
    found: dict[str, argparse.ArgumentParser] = {}
    for name, sub in subcommands.items():
        found |= cli_commands(sub, (*path, name))
    return found


def readme_command_table() -> set[str]:
    """The commands the README's "Commands" table names, alternatives spelt out
    (`extproc quota get\\|list` is "quota get" and "quota list")."""
    section = Path("README.md").read_text().split("\n## Commands\n")[1].split("\n## ")[0]
    top = _subcommands(build_parser())
    named = set()
    for cell in re.findall(r"^\| `extproc ([^`]*)` \|", section, re.M):
        command, *rest = cell.replace("\\|", "|").split()
        if command in top and _subcommands(top[command]) and rest:
            named |= {f"{command} {action}" for action in rest[0].split("|")}
        else:
            named.add(command)
    return named


def test_the_readmes_command_table_names_every_command() -> None:
    """The table is where a new operator finds what the CLI does: `keys renew` (an
    expired key's new life under its id) was missing from it, so the only way to
    learn of it was to read docs/authentication.md through."""
    assert readme_command_table() == set(cli_commands())


def test_every_option_of_every_command_is_documented() -> None:
    """A flag only `--help` knows of is one no page explains (what it does, its default)."""
    text = "\n".join(doc.read_text() for doc in DOCS)
    missing = [
        f"extproc {command} {option}"
        for command, parser in cli_commands().items()
        for option in parser._option_string_actions
        if option.startswith("--") and option != "--help"
        and not re.search(re.escape(option) + r"(?![\w-])", text)
    ]  # fmt: skip
    assert missing == []


def documented_make_targets() -> set[tuple[str, str]]:
    """`make <target>` in code spans and at the start of code block lines (prose such as
    "make sure" is neither)."""
    found = set()
    for doc in DOCS:
        text = doc.read_text()
        targets = re.findall(r"`make ([a-z][a-z-]*)", text)
        targets += [
            line.split()[1]
            for line in _lines_of_code_blocks(text)
            if re.match(r"\s*make [a-z]", line)
        ]
        found |= {(str(doc), target) for target in targets}
    return found


@pytest.mark.parametrize(("page", "target"), sorted(documented_make_targets()))
def test_each_make_target_the_docs_name_exists(page: str, target: str) -> None:
    makefile = Path("Makefile").read_text()
    assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"{page}: make {target}"


def test_every_make_target_is_named_in_the_docs() -> None:
    """The other way round: a target only the Makefile knows of is one nobody runs when
    it matters (`make protos` after editing the management API's .proto) or runs without
    knowing what it removes (`make clean` deletes the embedded Valkey's data)."""
    phony = re.search(r"^\.PHONY:(.*)$", Path("Makefile").read_text(), re.M)
    assert phony is not None
    named = {target for _, target in documented_make_targets()}
    assert sorted(set(phony.group(1).split()) - named) == []


def test_alternatives_of_a_synopsis_are_checked_one_by_one() -> None:
    assert _unknown_names(["quota", "get|list|sett"]) == ["sett"]
    assert _unknown_names(["usage", "report|export", "[--from", "--to", "--bye]"]) == [
        "--bye",
        "--bye",
    ]


def _heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as -."""
    text = FENCE.sub("", page.read_text())
    headings = re.findall(r"^#+\s+(.*)$", text, re.M)
    return {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings
    }


def relative_links() -> list[tuple[str, str]]:
    return [
        (str(doc), target)
        for doc in DOCS
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text())
        if not target.startswith(("http://", "https://"))
    ]


@pytest.mark.parametrize(("page", "target"), relative_links())
def test_each_link_between_pages_lands_on_a_file_and_heading(page: str, target: str) -> None:
    path, _, anchor = target.partition("#")
    linked = (Path(page).parent / path) if path else Path(page)
    assert linked.exists(), f"{page}: ({target}) names no file"
    if anchor and linked.suffix == ".md":
        assert anchor in _heading_anchors(linked), f"{page}: ({target}) names no heading"
