"""InvokeModel calls to an embeddings model the config does not list (a catch-all Bedrock
Runtime route takes any model id): recognised by the model id, they reserve no completion
and are named the ``embeddings`` operation, as configured embeddings models are."""

from __future__ import annotations

import orjson
import pytest

from extproc.bedrock_invoke_bodies import names_embeddings_model
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.stages.pipeline import default_stages
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.quota_helpers import capped_runtime
from tests.unit.test_embeddings_review import sample, span_fields

AUTH = {"authorization": "Bearer team1-key"}
COHERE = "cohere.embed-multilingual-v3"
BODY = orjson.dumps({"texts": ["embed this text, please"], "input_type": "search_document"})
# Cohere's answer on Bedrock: its count is in the answer's headers.
ANSWER = orjson.dumps({"id": "e1", "embeddings": [[0.1, 0.2]], "texts": ["embed this text"]})
ANSWER_HEADERS = {
    "content-type": "application/json",
    "x-amzn-bedrock-input-token-count": "6",
    "x-envoy-upstream-service-time": "3",
}


@pytest.mark.parametrize(
    ("model_id", "embeds"),
    [
        ("cohere.embed-multilingual-v3", True),
        ("us.cohere.embed-v4:0", True),
        ("amazon.titan-embed-image-v1", True),
        ("arn:aws:bedrock:us-east-1::foundation-model/amazon.titan-embed-text-v2:0", True),
        ("amazon.titan-text-express-v1", False),
        ("meta.llama3-8b-instruct-v1:0", False),
        # Nova's multimodal embeddings: InvokeModel only (no /v1/embeddings translation).
        ("amazon.nova-2-multimodal-embeddings-v1:0", True),
        ("us.amazon.nova-2-multimodal-embeddings-v1:0", True),
        ("amazon.nova-2-lite-v1:0", False),
    ],
)
def test_the_model_id_says_whether_it_embeds(model_id: str, embeds: bool) -> None:
    assert names_embeddings_model(model_id) is embeds


async def test_an_unlisted_embeddings_model_needs_no_room_for_a_completion_under_a_hard_cap(
    quota_store: QuotaStore,
) -> None:
    # Room for the input, far from the 1,000 tokens a chat would reserve by default.
    runtime, services = capped_runtime(quota_store, budget=60)
    await runtime.start()
    processor = Processor(lambda: runtime, default_stages())
    answers = await run_stream(
        processor,
        [
            request_headers(f"/model/{COHERE}/invoke", headers=AUTH),
            request_body(BODY),
            response_headers(200, ANSWER_HEADERS),
            response_body(ANSWER),
        ],
    )
    await runtime.close()

    assert not any(answer.HasField("immediate_response") for answer in answers), "refused"
    assert span_fields(answers[-1])["operation"] == "embeddings"
    histogram = "gen_ai_client_token_usage_sum"
    assert sample(services, histogram, gen_ai_operation_name="embeddings") == 6
    assert sample(services, histogram, gen_ai_operation_name="chat") == 0


NOVA_EMBEDDINGS = "amazon.nova-2-multimodal-embeddings-v1%3A0"
NOVA_BODY = orjson.dumps(
    {
        "taskType": "SINGLE_EMBEDDING",
        "singleEmbeddingParams": {
            "embeddingPurpose": "GENERIC_INDEX",
            "embeddingDimension": 1024,
            "text": {"truncationMode": "END", "value": "embed this text, please"},
        },
    }
)


async def test_novas_embeddings_need_no_room_for_a_completion_under_a_hard_cap(
    quota_store: QuotaStore,
) -> None:
    """Before, Nova's embeddings model was read as a chat model: it reserved
    quotas.default_max_tokens (1,000) for an answer it never generates, and a hard-capped
    budget of 60 refused it as a prompt too large."""
    runtime, services = capped_runtime(quota_store, budget=60)
    await runtime.start()
    processor = Processor(lambda: runtime, default_stages())
    answers = await run_stream(
        processor,
        [
            request_headers(f"/model/{NOVA_EMBEDDINGS}/invoke", headers=AUTH),
            request_body(NOVA_BODY),
            response_headers(200, ANSWER_HEADERS),
            response_body(
                orjson.dumps({"embeddings": [{"embeddingType": "TEXT", "embedding": [0.1, 0.2]}]})
            ),
        ],
    )
    await runtime.close()

    assert not any(answer.HasField("immediate_response") for answer in answers), "refused"
    assert answers[1].request_body.response.body_mutation.body == b""  # its bytes, unchanged
    assert span_fields(answers[-1])["operation"] == "embeddings"
    histogram = "gen_ai_client_token_usage_sum"
    assert sample(services, histogram, gen_ai_operation_name="embeddings") == 6
