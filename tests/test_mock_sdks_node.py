"""The official Node SDKs (openai, @anthropic-ai/sdk) read the mock as they read the real services.

openai-node's stream helpers are the strictest readers: they throw on an event
type they do not know and on one that arrives out of order.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from .conftest import MockProvider
from .mock_client import words

SCRIPT = """
import OpenAI from "openai";
import Anthropic from "@anthropic-ai/sdk";
const [root] = process.argv.slice(2);
const oai = new OpenAI({ baseURL: `${root}/v1`, apiKey: "x", maxRetries: 0 });
const claude = new Anthropic({ baseURL: root, apiKey: "x", maxRetries: 0 });
const properties = { city: { type: "string" } };
const city = { type: "object", properties, required: ["city"], additionalProperties: false };
const tool = { type: "function", name: "get_weather", strict: true, parameters: city };
const mock = (knobs) => ({ rate: 0, tokens: 5, ...knobs });
const hi = [{ role: "user", content: "hi" }];
const out = {};
const variants = { text: {}, reasoning: { reasoning: 2 }, tool: { tool_call: true }, refusal: { refusal: true } };
for (const [name, knobs] of Object.entries(variants)) {
  const tools = knobs.tool_call ? [tool] : undefined;
  const stream = oai.responses.stream({ model: "mock-1", input: "hi", tools, mock: mock(knobs) });
  let deltas = "";
  stream.on("response.output_text.delta", (e) => { deltas += e.delta; });
  const final = await stream.finalResponse();
  const call = final.output.find((o) => o.type === "function_call");
  out[`responses_${name}`] = {
    deltas, types: final.output.map((o) => o.type), text: final.output_text,
    arguments: call?.arguments ?? null, usage: final.usage,
  };
}
const completions = await oai.completions.create({ model: "mock-1", prompt: "a b", stream: true, mock: mock({}) });
out.completions = "";
for await (const chunk of completions) out.completions += chunk.choices[0]?.text ?? "";
for (const [name, knobs] of Object.entries({ text: {}, thinking: { reasoning: 2 }, tool: { tool_call: true } })) {
  const stream = claude.messages.stream({ model: "mock-1", max_tokens: 100, messages: hi, mock: mock(knobs) });
  let text = "";
  stream.on("text", (delta) => { text += delta; });
  const message = await stream.finalMessage();
  out[`messages_${name}`] = { text, content: message.content, stop_reason: message.stop_reason };
}
try {
  const broken = mock({ error_after: 1 });
  await claude.messages.stream({ model: "mock-1", max_tokens: 100, messages: hi, mock: broken }).finalMessage();
} catch (error) { out.messages_error = error.error; }
console.log(JSON.stringify(out));
"""


def test_node_sdks_assemble_the_same_words(node_sdks: Path, mock_provider: MockProvider) -> None:
    (node_sdks / "check-mock.mjs").write_text(SCRIPT)
    result = subprocess.run(
        ["node", "check-mock.mjs", mock_provider.root], cwd=node_sdks, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    assert out["responses_text"]["deltas"] == out["responses_text"]["text"] == words(5)
    assert out["responses_reasoning"]["types"] == ["reasoning", "message"]
    assert out["responses_reasoning"]["usage"]["output_tokens_details"] == {"reasoning_tokens": 2}
    assert out["responses_tool"]["types"] == ["function_call"]
    assert json.loads(out["responses_tool"]["arguments"]) == {"city": "w0 w1 w2 w3 w4"}
    assert out["responses_refusal"]["types"] == ["message"] and out["responses_refusal"]["text"] == ""
    assert out["completions"] == words(5)
    assert out["messages_text"]["text"] == words(5) and out["messages_text"]["stop_reason"] == "end_turn"
    thinking, text = out["messages_thinking"]["content"]
    assert thinking["type"] == "thinking" and thinking["thinking"] == "r0 r1 " and text["text"] == words(5)
    assert out["messages_tool"]["content"][0]["input"] == {"city": "w0 w1 w2 w3 w4"}
    assert out["messages_error"] == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "mock error mid-stream"},
    }
