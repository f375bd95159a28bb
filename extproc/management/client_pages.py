"""The client's side of paged listings: follow ``next_page_token`` to the last page and
answer one listing, as the gateway gave it before paging.

Each page is a call of its own, well under the 4 MiB gRPC clients accept and the
client's deadline. The pages together are what one call answered: the config's keys
then the stored ones, each by id (quota states by subject), each once: SCAN may give a
store key on two pages (and a subject's counters that change while paging may name it
on two), so a repeat is dropped. A gateway from before paging ignores the page fields
and answers everything at once, with no token: the same listing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from extproc.management.v1 import management_pb2 as pb

# Entries per page the CLI asks for, and the gateway's most (page_tokens.MAX_PAGE_SIZE):
# here, in a module that imports no protobuf, for the CLI's options.
PAGE_SIZE = 1000


def every_key(
    call: Callable[[pb.ListKeysRequest], pb.ListKeysResponse],
    request: pb.ListKeysRequest,
) -> pb.ListKeysResponse:
    """Every page of a ``ListKeys`` listing, as one answer."""
    from extproc.management.v1 import management_pb2 as pb

    keys: dict[tuple[str, str], pb.KeyInfo] = {}
    unreadable: dict[str, pb.UnreadableKey] = {}
    for page in _pages(call, request):
        for key in page.keys:
            keys.setdefault((key.source, key.id), key)
        for record in page.unreadable_keys:
            unreadable.setdefault(record.key, record)
    ordered = sorted(keys.items(), key=lambda item: (item[0][0] != "config", item[0][1]))
    return pb.ListKeysResponse(
        keys=[key for _, key in ordered],
        unreadable_keys=[unreadable[name] for name in sorted(unreadable)],
    )


def every_quota(
    call: Callable[[pb.ListQuotasRequest], pb.ListQuotasResponse],
    request: pb.ListQuotasRequest,
) -> pb.ListQuotasResponse:
    """Every page of a ``ListQuotas`` listing, as one answer."""
    from extproc.management.v1 import management_pb2 as pb

    states: dict[str, pb.QuotaState] = {}
    unreadable: dict[tuple[str, str, str], pb.UnreadableKey] = {}
    for page in _pages(call, request):
        for state in page.states:
            states.setdefault(state.subject, state)
        for found in page.unreadable_keys:
            unreadable.setdefault((found.subject, found.key, found.reason), found)
    # By subject; a subject's keys in the order the gateway named them.
    named: list[pb.UnreadableKey] = sorted(unreadable.values(), key=lambda found: found.subject)
    return pb.ListQuotasResponse(
        states=[states[subject] for subject in sorted(states)], unreadable_keys=named
    )


def _pages(call: Callable[[Any], Any], request: Any) -> Iterator[Any]:
    """The answers to ``request`` and to each next page's request (the same fields)."""
    page = call(request)
    yield page
    while page.next_page_token:
        following = type(request)()
        following.CopyFrom(request)
        following.page_token = page.next_page_token
        page = call(following)
        yield page
