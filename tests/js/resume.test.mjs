// cancelproxy.js's resume() against the proxy's GET /requests/{id}/stream?after=N
// (PROXY_URL and MOCK_URL; tests/test_ui_resume.py starts them).
import assert from "node:assert/strict";
import { test } from "node:test";

import { CancelProxy } from "../../cancelproxy/ui/cancelproxy.js";

const PROXY = process.env.PROXY_URL;
const words = (n) => Array.from({ length: n }, (_, i) => `w${i} `).join("");
const chatBody = (mock) => ({ model: "mock-1", messages: [{ role: "user", content: "hi" }], mock });

function whenWords(count) {
  let resolve;
  const reached = new Promise((r) => (resolve = r));
  return { reached, onUpdate: (a) => a.text.split(" ").filter(Boolean).length >= count && resolve(a) };
}

test("resume() goes on from event N+1 beside the original, and both end alike", async () => {
  const proxy = new CancelProxy({ baseUrl: PROXY });
  const { reached, onUpdate } = whenWords(5);
  const original = proxy.chat(chatBody({ tokens: 30, rate: 20 }), { onUpdate });
  await reached;
  const resumed = proxy.resume(original.requestId, { after: original.events, text: original.text });
  await Promise.all([original.done, resumed.done]);
  assert.deepEqual([original.status, original.text], ["completed", words(30)]);
  assert.deepEqual([resumed.status, resumed.text, resumed.events], ["completed", words(30), original.events]);
  // Once it has ended, a resume from the start replays it all and ends at once.
  const replay = await proxy.resume(original.requestId).done;
  assert.deepEqual([replay.status, replay.text, replay.events], ["completed", words(30), original.events]);
});

test("a resumed answer that is stopped ends with the cancelled ending, as stopped", async () => {
  const proxy = new CancelProxy({ baseUrl: PROXY });
  const { reached, onUpdate } = whenWords(3);
  const original = proxy.chat(chatBody({ tokens: 400, rate: 20 }), { onUpdate });
  await reached;
  const resumed = proxy.resume(original.requestId, { after: 0 });
  assert.equal((await proxy.stop()).cancelled, true);
  await Promise.all([original.done, resumed.done]);
  const record = await proxy.request(original.requestId, { wait: true });
  assert.equal(resumed.status, "stopped");
  assert.equal(resumed.finishReason, "cancelled");
  assert.equal(resumed.text, record.content);
});

test("a resumed stream with keep-alive comments in it reads as the original did", async () => {
  // The provider is silent first, sending `: keep-alive` comments: they are
  // replayed, not counted as events, and nothing trips on them.
  const proxy = new CancelProxy({ baseUrl: PROXY });
  const original = proxy.chat(chatBody({ tokens: 12, rate: 40, silence_s: 0.5, keepalive_s: 0.1 }));
  await original.done;
  const replay = await proxy.resume(original.requestId, { after: 0 }).done;
  assert.deepEqual([replay.status, replay.text, replay.error], ["completed", words(12), null]);
  assert.equal(replay.events, original.events);
  const rest = await proxy.resume(original.requestId, { after: 3, text: "w0 w1 " }).done;
  assert.equal(rest.text, words(12));
});
