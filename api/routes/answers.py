"""Grounded answers: POST /v1/answer (the question, its history, and the answer with sources and timings)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from api import schemas as s
from api.middleware import request_id_of
from api.state import (
    COMMON_ERRORS,
    DOCUMENTED_AUTH,
    ApiError,
    ApiState,
    check_limits,
    error_responses,
    record_stages,
    sources,
    version_of,
)


def router(state: ApiState) -> APIRouter:
    routes = APIRouter()

    @routes.post(
        "/v1/answer",
        response_model=s.AnswerResponse,
        tags=["answers"],
        dependencies=DOCUMENTED_AUTH,
        summary="Answer a question about a product, with its sources and timings",
        responses=error_responses(*COMMON_ERRORS, 429, 503, 504),
    )
    async def answer(body: s.AnswerRequest, request: Request) -> s.AnswerResponse:
        check_limits(state.config, body.question, body.k, body.max_tokens, len(body.history) + 1)
        history = [m.model_dump() for m in body.history]
        result, version = await _answer(state, body, history)
        data = result.to_dict()
        return s.AnswerResponse(
            question=data["question"],
            answer=data["answer"],
            sources=sources(result),
            timings=data["timings"],
            found=data["found"],
            grounded=data["grounded"],
            unsupported_sentences=data["unsupported_sentences"],
            generator=data["generator"],
            index_version=version,
            request_id=request_id_of(request.scope),
        )

    return routes


def _answer_blocking(
    state: ApiState, body: s.AnswerRequest, history: list[dict[str, str]]
) -> tuple[Any, str | None]:
    rag = state.require_rag()
    snapshot = rag.retriever.snapshot  # one version for the answer and the label it reports
    version = version_of(snapshot)
    answer = rag.answer(
        body.question,
        k=body.k,
        history=history,
        max_new_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        snapshot=snapshot,
    )
    return answer, version


async def _answer(
    state: ApiState, body: s.AnswerRequest, history: list[dict[str, str]]
) -> tuple[Any, str | None]:
    state.require_rag()
    slot = await state.acquire_slot()
    try:
        answer, version = await state.run(
            slot, lambda: _answer_blocking(state, body, history), state.config.api.request_timeout_s
        )
    except ValueError as exc:  # the pipeline's own checks on the question
        raise ApiError(422, str(exc)) from None
    finally:
        slot.release()
    record_stages(state, answer)
    return answer, version
