"""The default stage list, in the order the processor calls them (the package's
docstring says what a stage is). Kept out of the package's ``__init__`` so that
importing one stage module (``stages.authentication`` from the credential cleaner,
say) does not import every stage, the agents' among them, which import it back."""

from __future__ import annotations

from extproc.agents.stages import AgentCallStage, AgentRouteStage
from extproc.stages.accounting import AccountingStage
from extproc.stages.attempt import FailoverCheckStage
from extproc.stages.attempt_in_flight import AttemptInFlightStage
from extproc.stages.authentication import AuthenticationStage
from extproc.stages.chat_request import ChatRequestStage, UpstreamRequestStage
from extproc.stages.credentials import CredentialStage
from extproc.stages.cut_answer import CutAnswerStage
from extproc.stages.guardrails import GuardRequestStage, GuardResponseStage
from extproc.stages.limits_view import LimitsViewStage
from extproc.stages.model_list import ModelListStage
from extproc.stages.partial_usage import PartialUsageStage
from extproc.stages.quota import QuotaStage
from extproc.stages.response import ResponseStage
from extproc.stages.response_owner import PreviousResponseStage, ResponseRecordStage
from extproc.stages.routing import RoutingStage
from extproc.stages.stored_responses import StoredResponseStage
from extproc.stages.telemetry import TelemetryStage


def default_stages() -> list[object]:
    return [
        RoutingStage(),
        AgentRouteStage(),
        AuthenticationStage(),
        ModelListStage(),
        LimitsViewStage(),
        CredentialStage(),
        # After the client's credentials are removed: sets the provider's.
        StoredResponseStage(),
        AgentCallStage(),
        ChatRequestStage(),
        # Before the guards and the quota: a response the caller may not continue is
        # refused first, and the quota reserves the stored context it adds.
        PreviousResponseStage(),
        # Before the quota reservation (a refused prompt reserves nothing) and translation.
        GuardRequestStage(),
        # Before the quota stage: its `done` estimates what a cut stream produced.
        PartialUsageStage(),
        CutAnswerStage(),  # the same for a JSON answer cut (or whole) without usage
        # Its closing hook names the failover attempt a hung-up request is charged as,
        # before any done hook runs.
        AttemptInFlightStage(),
        # After the guards (they may change the body), before the quota counts it.
        FailoverCheckStage(),
        QuotaStage(),
        UpstreamRequestStage(),
        ResponseStage(),
        # Right after the answer's end is read, before the client gets that end.
        ResponseRecordStage(),
        # Right after the answer is translated: masks what the client will get.
        GuardResponseStage(),
        # After every stage that shapes the answer: it reads what the client gets.
        TelemetryStage(),
        AccountingStage(),
    ]
