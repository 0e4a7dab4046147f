"""The official SDKs read the mock (a real subprocess, no proxy) exactly as they read the real services."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import openai
import pytest

from .conftest import MockProvider
from .mock_client import words

WEATHER_TOOL: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
ANTHROPIC_TOOL: Any = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
HELLO: Any = [{"role": "user", "content": "hello there"}]


@pytest.fixture
async def oai(mock_provider: MockProvider) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=mock_provider.base_url, api_key="x", max_retries=0) as client:
        yield client


@pytest.fixture
async def claude(mock_provider: MockProvider) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=mock_provider.root, api_key="x", max_retries=0) as client:
        yield client


def mock(**knobs: Any) -> dict[str, Any]:
    return {"mock": {"rate": 0, **knobs}}


# -- OpenAI Responses -------------------------------------------------------


async def test_responses_create_stream_events(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.responses.create(model="mock-1", input="hi", stream=True, extra_body=mock(tokens=6, tag="rs1"))
    seen: list[Any] = [event async for event in stream]
    assert seen[0].type == "response.created" and seen[-1].type == "response.completed"
    assert [e.sequence_number for e in seen] == list(range(len(seen)))
    text = "".join(e.delta for e in seen if e.type == "response.output_text.delta")
    assert text == words(6)
    final = seen[-1].response
    assert final.id == "resp_mock_rs1" and final.status == "completed" and final.output_text == words(6)
    assert final.usage is not None and final.usage.output_tokens == 6 and final.usage.input_tokens == 1


async def test_responses_stream_helper_text_and_reasoning(oai: openai.AsyncOpenAI) -> None:
    async with oai.responses.stream(model="mock-1", input=HELLO, extra_body=mock(tokens=5, reasoning=3)) as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == words(5) and final.output_text == words(5)
    reasoning, message = final.output
    assert reasoning.type == "reasoning" and reasoning.summary[0].text == "r0 r1 r2 "
    assert message.type == "message" and message.status == "completed"
    assert final.usage is not None and final.usage.output_tokens_details.reasoning_tokens == 3
    assert final.usage.input_tokens == 2


async def test_responses_stream_helper_function_call(oai: openai.AsyncOpenAI) -> None:
    async with oai.responses.stream(
        model="mock-1", input="weather?", tools=[WEATHER_TOOL], extra_body=mock(tool_call=True, tokens=4)
    ) as stream:
        argument_deltas = [e.delta async for e in stream if e.type == "response.function_call_arguments.delta"]
        final = await stream.get_final_response()
    [call] = final.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id == "call_mock_1"
    assert json.loads("".join(argument_deltas)) == json.loads(call.arguments) == {"city": "w0 w1 w2 w3"}
    assert call.parsed_arguments == {"city": "w0 w1 w2 w3"}  # a strict tool: the SDK parsed it


async def test_responses_stream_helper_refusal(oai: openai.AsyncOpenAI) -> None:
    async with oai.responses.stream(model="mock-1", input="hi", extra_body=mock(refusal=True, tokens=3)) as stream:
        refusal = "".join([e.delta async for e in stream if e.type == "response.refusal.delta"])
        final = await stream.get_final_response()
    assert refusal == words(3)
    [message] = final.output
    assert message.type == "message" and message.content[0].type == "refusal"
    assert message.content[0].refusal == words(3)


async def test_responses_failure_mid_stream(oai: openai.AsyncOpenAI) -> None:
    async with oai.responses.stream(model="mock-1", input="hi", extra_body=mock(error_after=2)) as stream:
        last = [event async for event in stream][-1]
        with pytest.raises(RuntimeError, match="response.completed"):
            await stream.get_final_response()
    assert last.type == "response.failed" and last.response.error is not None
    assert last.response.output[0].content[0].text == words(2)


async def test_responses_non_streaming(oai: openai.AsyncOpenAI) -> None:
    response = await oai.responses.create(model="mock-1", input="hi", extra_body=mock(tokens=4, tag="rs-ns"))
    assert response.id == "resp_mock_rs-ns" and response.output_text == words(4)
    tool = await oai.responses.create(model="mock-1", input="w?", tools=[WEATHER_TOOL], extra_body=mock(tool_call=True))
    assert tool.output[0].type == "function_call" and json.loads(tool.output[0].arguments)["city"].startswith("w0")


async def test_responses_status_error(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        await oai.responses.create(model="mock-1", input="hi", extra_body=mock(status=429))
    assert caught.value.code == "mock_429"


# -- OpenAI legacy completions ----------------------------------------------


async def test_completions_stream_and_usage(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.completions.create(
        model="mock-1",
        prompt="once upon",
        stream=True,
        stream_options={"include_usage": True},
        extra_body=mock(tokens=7),
    )
    text, finish, usage = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].text
            finish = chunk.choices[0].finish_reason or finish
        usage = chunk.usage or usage
    assert text == words(7) and finish == "stop"
    assert usage is not None and usage.prompt_tokens == 2 and usage.completion_tokens == 7


async def test_completions_non_streaming(oai: openai.AsyncOpenAI) -> None:
    completion = await oai.completions.create(model="mock-1", prompt="hi", extra_body=mock(tokens=3, tag="cm"))
    assert completion.id == "cmpl-mock-cm" and completion.choices[0].text == words(3)
    assert completion.usage is not None and completion.usage.total_tokens == 4


async def test_chat_stream_helper_refusal(oai: openai.AsyncOpenAI) -> None:
    async with oai.chat.completions.stream(
        model="mock-1", messages=HELLO, extra_body=mock(refusal=True, tokens=3)
    ) as s:
        final = await s.get_final_completion()
    message = final.choices[0].message
    assert message.refusal == words(3) and message.content is None


# -- Anthropic Messages -----------------------------------------------------


async def test_messages_stream_helper_text(claude: anthropic.AsyncAnthropic) -> None:
    async with claude.messages.stream(
        model="mock-1", max_tokens=100, messages=HELLO, extra_body=mock(tokens=6, tag="an1")
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == words(6) and final.id == "msg_mock_an1" and final.stop_reason == "end_turn"
    assert [block.type for block in final.content] == ["text"] and final.content[0].text == words(6)
    assert final.usage.input_tokens == 2 and final.usage.output_tokens == 6


async def test_messages_stream_helper_thinking(claude: anthropic.AsyncAnthropic) -> None:
    async with claude.messages.stream(
        model="mock-1", max_tokens=100, messages=HELLO, extra_body=mock(tokens=3, reasoning=2)
    ) as stream:
        thinking = "".join([e.thinking async for e in stream if e.type == "thinking"])
        final = await stream.get_final_message()
    assert thinking == "r0 r1 "
    block, text = final.content
    assert block.type == "thinking" and block.thinking == "r0 r1 " and block.signature
    assert text.type == "text" and text.text == words(3)


async def test_messages_stream_helper_tool_use(claude: anthropic.AsyncAnthropic) -> None:
    async with claude.messages.stream(
        model="mock-1",
        max_tokens=100,
        messages=HELLO,
        tools=[ANTHROPIC_TOOL],
        extra_body=mock(tool_call=True, tokens=5),
    ) as stream:
        final = await stream.get_final_message()
    [tool] = final.content
    assert tool.type == "tool_use" and tool.name == "get_weather" and tool.input == {"city": "w0 w1 w2 w3 w4"}
    assert final.stop_reason == "tool_use"


async def test_messages_create_stream_raw_events(claude: anthropic.AsyncAnthropic) -> None:
    stream = await claude.messages.create(
        model="mock-1", max_tokens=100, messages=HELLO, stream=True, extra_body=mock(tokens=4, reasoning=1)
    )
    events = [event async for event in stream]  # pings are the SDK's to skip
    assert events[0].type == "message_start" and events[0].message.usage.input_tokens == 2
    assert events[-2].type == "message_delta" and events[-2].usage.output_tokens == 5
    assert events[-1].type == "message_stop"
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta")
    assert text == words(4)


async def test_messages_non_streaming(claude: anthropic.AsyncAnthropic) -> None:
    message = await claude.messages.create(
        model="mock-1", max_tokens=100, messages=HELLO, extra_body=mock(tokens=3, reasoning=1, tag="an-ns")
    )
    assert message.id == "msg_mock_an-ns" and [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[1].text == words(3)  # type: ignore[union-attr]
    tool = await claude.messages.create(
        model="mock-1", max_tokens=100, messages=HELLO, tools=[ANTHROPIC_TOOL], extra_body=mock(tool_call=True)
    )
    assert tool.content[0].type == "tool_use" and tool.stop_reason == "tool_use"


async def test_messages_errors(claude: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.RateLimitError) as caught:
        await claude.messages.create(model="mock-1", max_tokens=100, messages=HELLO, extra_body=mock(status=429))
    assert caught.value.body == {"type": "error", "error": {"type": "rate_limit_error", "message": "mock error"}}
    with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
        async with claude.messages.stream(
            model="mock-1", max_tokens=100, messages=HELLO, extra_body=mock(error_after=2)
        ) as stream:
            await stream.get_final_message()
