// cancelproxy.js under Node's test runner, against the real proxy and mock provider
// (PROXY_URL and MOCK_URL; tests/test_ui_module.py starts them).
import assert from "node:assert/strict";
import { test } from "node:test";

import { CancelProxy, STATUSES, historyOf, newSessionId } from "../../cancelproxy/ui/cancelproxy.js";

const PROXY = process.env.PROXY_URL;
const MOCK = process.env.MOCK_URL;

const words = (n) => Array.from({ length: n }, (_, i) => `w${i} `).join("");
const chatBody = (mock, content = "hi") => ({ model: "mock-1", messages: [{ role: "user", content }], mock });

async function provider(tag, wait = "ended") {
  const response = await fetch(`${MOCK}/_mock/requests/${tag}?wait=${wait}&timeout=10`);
  assert.equal(response.status, 200, `the provider saw no request ${tag} ${wait}`);
  return response.json();
}

/** Resolves once the answer holds at least `count` words. */
function whenWords(count) {
  let resolve;
  const reached = new Promise((r) => (resolve = r));
  const onUpdate = (answer) => {
    if (answer.text.split(" ").filter(Boolean).length >= count) resolve(answer);
  };
  return { reached, onUpdate };
}

test("a chat streams to completion, and its record says the same", async () => {
  const proxy = new CancelProxy({ baseUrl: PROXY });
  const updates = [];
  const answer = proxy.chat(chatBody({ tokens: 8, rate: 0 }), { onUpdate: (a) => updates.push(a.status) });
  assert.equal(answer.status, "streaming");
  assert.equal(await answer.done, answer);
  assert.equal(answer.status, "completed");
  assert.equal(answer.text, words(8));
  assert.equal(answer.finishReason, "stop");
  assert.equal(answer.error, null);
  // role, 8 deltas, the finish chunk, [DONE]: the proxy hides the usage chunk it asked for
  assert.equal(answer.events, 11);
  assert.match(answer.requestId, /^req_/);
  assert.equal(updates.at(-1), "completed");
  const record = await proxy.request(answer.requestId);
  assert.equal(record.session_id, proxy.sessionId);
  assert.equal(record.content, answer.text);
});

test("stop() cancels through the proxy: a clean end, the partial kept, the provider closed", async () => {
  const proxy = new CancelProxy({ baseUrl: PROXY });
  const { reached, onUpdate } = whenWords(4);
  const answer = proxy.chat(chatBody({ tokens: 400, rate: 20, tag: "mod-stop" }), { onUpdate });
  await reached;
  const ack = await proxy.stop();
  assert.equal(ack.cancelled, true);
  assert.deepEqual(ack.request_ids, [answer.requestId]);
  await answer.done;
  assert.equal(answer.status, "stopped");
  assert.equal(answer.finishReason, "cancelled"); // the stream's own ending: it was not aborted
  assert.equal(answer.error, null);
  const record = await proxy.request(answer.requestId, { wait: true });
  assert.equal(record.status, "stopped");
  assert.equal(record.stop_reason, "cancel");
  assert.equal(record.content, answer.text);
  const seen = await provider("mod-stop");
  assert.equal(seen.state, "closed_by_client");
});

test("cancel() stops one answer by its id and leaves the session's others alone", async () => {
  const proxy = new CancelProxy({ baseUrl: PROXY });
  const first = whenWords(3);
  const second = whenWords(3);
  const one = proxy.chat(chatBody({ tokens: 400, rate: 20, tag: "mod-cancel-one" }), { onUpdate: first.onUpdate });
  const other = proxy.chat(chatBody({ tokens: 40, rate: 20 }), { onUpdate: second.onUpdate });
  await Promise.all([first.reached, second.reached]);
  const ack = await proxy.cancel(one.requestId);
  assert.equal(ack.cancelled, true);
  assert.deepEqual(ack.request_ids, [one.requestId]);
  await Promise.all([one.done, other.done]);
  assert.equal(one.status, "stopped");
  assert.equal(one.finishReason, "cancelled");
  assert.equal(other.status, "completed");
  assert.equal((await provider("mod-cancel-one")).state, "closed_by_client");
  assert.equal(await new CancelProxy({ baseUrl: "http://127.0.0.1:9" }).cancel(one.requestId), null);
});

test("stop() drops the connection when the proxy cannot be reached, and that is a stop", async () => {
  // The cancel cannot get through; the stream itself is real.
  const unreachable = (url, init) =>
    url.includes("/api/chat/cancel/") ? Promise.reject(new TypeError("fetch failed")) : fetch(url, init);
  const proxy = new CancelProxy({ baseUrl: PROXY, fetch: unreachable });
  const { reached, onUpdate } = whenWords(4);
  const answer = proxy.chat(chatBody({ tokens: 400, rate: 20, tag: "mod-unreachable" }), { onUpdate });
  await reached;
  assert.equal(await proxy.stop(), null);
  await answer.done;
  assert.equal(answer.status, "stopped");
  assert.equal(answer.error, null);
  assert.equal((await provider("mod-unreachable")).state, "closed_by_client");
  const record = await proxy.request(answer.requestId, { wait: true });
  assert.deepEqual([record.status, record.stop_reason], ["stopped", "disconnect"]);
  assert.ok(record.content.startsWith(answer.text) && answer.text.length > 0);
});

test("stop() waits at most cancelTimeoutMs for the proxy, then drops the connection", async () => {
  // A cancel that never answers (a proxy that hangs), aborted by its own timeout.
  const hanging = (url, init) =>
    url.includes("/api/chat/cancel/")
      ? new Promise((_, reject) => init.signal.addEventListener("abort", () => reject(init.signal.reason)))
      : fetch(url, init);
  const proxy = new CancelProxy({ baseUrl: PROXY, fetch: hanging, cancelTimeoutMs: 300 });
  const { reached, onUpdate } = whenWords(2);
  const answer = proxy.chat(chatBody({ tokens: 400, rate: 20, tag: "mod-hanging" }), { onUpdate });
  await reached;
  assert.equal(await proxy.stop(), null);
  await answer.done;
  assert.equal(answer.status, "stopped");
  assert.equal((await provider("mod-hanging")).state, "closed_by_client");
});

test("stop() before the provider answered at all", async () => {
  const proxy = new CancelProxy({ baseUrl: PROXY });
  const answer = proxy.chat(chatBody({ silence_s: 30, headers_after_silence: true, tag: "mod-silent" }));
  await provider("mod-silent", "started");
  const ack = await proxy.stop();
  assert.equal(ack.cancelled, true);
  await answer.done;
  assert.equal(answer.status, "stopped");
  assert.equal(answer.text, "");
  assert.equal((await provider("mod-silent")).state, "closed_by_client");
});

test("stop() while the request is still on its way drops it: the proxy had nothing to cancel yet", async () => {
  // A slow network: the request reaches the proxy only after the Stop.
  let sent;
  const late = new Promise((resolve) => (sent = resolve));
  const slow = async (url, init) => {
    if (url.endsWith("/v1/chat/completions")) {
      await late;
      if (init.signal.aborted) throw init.signal.reason;
    }
    return fetch(url, init);
  };
  const proxy = new CancelProxy({ baseUrl: PROXY, fetch: slow });
  const answer = proxy.chat(chatBody({ tokens: 5, rate: 20, tag: "mod-late" }));
  const ack = await proxy.stop();
  assert.equal(ack.cancelled, false); // reached, but nothing was in progress
  sent();
  await answer.done;
  assert.deepEqual([answer.status, answer.text, answer.requestId], ["stopped", "", null]);
  const seen = await fetch(`${MOCK}/_mock/requests/mod-late`);
  assert.equal(seen.status, 404); // never generated
});

test("an HTTP error fails the answer with the provider's error", async () => {
  const proxy = new CancelProxy({ baseUrl: PROXY });
  const answer = await proxy.chat(chatBody({ status: 429 })).done;
  assert.equal(answer.status, "failed");
  assert.equal(answer.error.code, "mock_429");
  assert.match(answer.requestId, /^req_/);
});

test("an error event mid-stream fails the answer and keeps the partial", async () => {
  const proxy = new CancelProxy({ baseUrl: PROXY });
  const answer = await proxy.chat(chatBody({ tokens: 20, rate: 50, fail_after: 5 })).done;
  assert.equal(answer.status, "failed");
  assert.equal(answer.error.code, "upstream_broken");
  const record = await proxy.request(answer.requestId, { wait: true });
  assert.equal(record.status, "failed");
  assert.equal(answer.text, record.content);
  assert.ok(answer.text.startsWith("w0 "));
});

test("a proxy that cannot be reached at all fails the answer", async () => {
  const proxy = new CancelProxy({ baseUrl: "http://127.0.0.1:9" });
  const answer = await proxy.chat(chatBody({})).done;
  assert.equal(answer.status, "failed");
  assert.equal(answer.requestId, null);
  assert.match(answer.error.message, /cannot be reached/);
});

test("session() lists the session's answers, oldest first; an unknown one has none", async () => {
  const proxy = new CancelProxy({ baseUrl: PROXY });
  assert.deepEqual(await proxy.session(), { session_id: proxy.sessionId, requests: [] });
  const first = await proxy.chat(chatBody({ tokens: 2, rate: 0 })).done;
  const second = await proxy.chat(chatBody({ tokens: 3, rate: 0 })).done;
  const { session_id, requests } = await proxy.session();
  assert.equal(session_id, proxy.sessionId);
  assert.deepEqual(
    requests.map((r) => [r.request_id, r.status, r.content]),
    [
      [first.requestId, "completed", words(2)],
      [second.requestId, "completed", words(3)],
    ],
  );
  assert.equal(await proxy.request("req_unknown"), null);
});

test("headers go with every call, so a keyed session's cancel and reads are its own", async () => {
  const keyed = new CancelProxy({ baseUrl: PROXY, headers: { Authorization: "Bearer sk-one" } });
  const other = new CancelProxy({ baseUrl: PROXY, sessionId: keyed.sessionId, headers: () => ({ Authorization: "Bearer sk-two" }) });
  const answer = await keyed.chat(chatBody({ tokens: 2, rate: 0 })).done;
  assert.equal((await keyed.session()).requests.length, 1);
  assert.equal((await other.session()).requests.length, 0); // another credential: as if it did not exist
  assert.equal(await other.request(answer.requestId), null);
});

test("models() lists the provider's models", async () => {
  assert.deepEqual(await new CancelProxy({ baseUrl: PROXY }).models(), ["mock-1"]);
});

test("the event stream is read by the rules: CRLF, CR, comments, events split anywhere", async () => {
  const chunk = (content, finish = null) =>
    JSON.stringify({ choices: [{ index: 0, delta: content === null ? {} : { content }, finish_reason: finish }] });
  const wire = `: keep-alive\r\n\r\ndata: ${chunk("a")}\r\n\r\ndata: ${chunk("b")}\r\rdata:${chunk(" c")}\n\n` +
    `data: ${chunk(null, "stop")}\n\ndata: [DONE]\n\n`;
  // Every split point, down to a CRLF cut in two.
  const pieces = [...wire].map((c) => new TextEncoder().encode(c));
  const fake = async () =>
    new Response(new ReadableStream({ pull(controller) { pieces.length ? controller.enqueue(pieces.shift()) : controller.close(); } }), {
      headers: { "Content-Type": "text/event-stream", "X-Request-Id": "req_fake" },
    });
  const answer = await new CancelProxy({ fetch: fake }).chat(chatBody({})).done;
  assert.deepEqual([answer.status, answer.text, answer.events, answer.requestId], ["completed", "ab c", 5, "req_fake"]);
});

test("a stream cut before its ending is interrupted, not completed", async () => {
  const fake = async () =>
    new Response(`data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: "half" } }] })}\n\ndata: {"choi`, {
      headers: { "Content-Type": "text/event-stream" },
    });
  const answer = await new CancelProxy({ fetch: fake }).chat(chatBody({})).done;
  assert.deepEqual([answer.status, answer.text, answer.events], ["interrupted", "half", 1]);
});

test("resume() asks for the events after the N it has, and goes on from its text", async () => {
  const asked = [];
  const chunk = (content) => JSON.stringify({ choices: [{ index: 0, delta: { content }, finish_reason: null }] });
  const finish = JSON.stringify({ choices: [{ index: 0, delta: {}, finish_reason: "stop" }] });
  const fake = async (url, init) => {
    asked.push([url, init.method, init.headers["X-Session-Id"]]);
    return new Response(`data: ${chunk("c ")}\n\ndata: ${finish}\n\ndata: [DONE]\n\n`, {
      headers: { "Content-Type": "text/event-stream" },
    });
  };
  const proxy = new CancelProxy({ baseUrl: "http://proxy.test/", sessionId: "s-1", fetch: fake });
  const answer = await proxy.resume("req_1", { after: 3, text: "a b " }).done;
  assert.deepEqual(asked, [["http://proxy.test/requests/req_1/stream?after=3", "GET", "s-1"]]);
  assert.deepEqual([answer.status, answer.text, answer.events, answer.requestId], ["completed", "a b c ", 6, "req_1"]);
});

test("an onUpdate that throws does not end the stream", async (t) => {
  const reported = t.mock.method(console, "error", () => {});
  const proxy = new CancelProxy({ baseUrl: PROXY });
  const onUpdate = () => {
    throw new Error("render bug");
  };
  const answer = await proxy.chat(chatBody({ tokens: 3, rate: 0 }), { onUpdate }).done;
  assert.deepEqual([answer.status, answer.text], ["completed", words(3)]);
  assert.ok(reported.mock.calls.length > 0);
  assert.ok(reported.mock.calls.every((call) => call.arguments[0].message === "render bug"));
});

test("historyOf leaves stopped answers out unless asked, and failed ones always", () => {
  const turns = [
    { question: "q1", answer: { status: "completed", text: "a1" } },
    { question: "q2", answer: { status: "stopped", text: "a2 partial" } },
    { question: "q3", answer: { status: "failed", text: "a3 partial" } },
    { question: "q4", answer: { status: "interrupted", text: "a4 partial" } },
  ];
  const user = (content) => ({ role: "user", content });
  const assistant = (content) => ({ role: "assistant", content });
  assert.deepEqual(historyOf(turns), [user("q1"), assistant("a1"), user("q2"), user("q3"), user("q4")]);
  assert.deepEqual(historyOf(turns, { keepStopped: true }), [
    user("q1"), assistant("a1"), user("q2"), assistant("a2 partial"), user("q3"), user("q4"), assistant("a4 partial"),
  ]);
});

test("session ids are fresh, 128 random bits, and valid X-Session-Id values", () => {
  const ids = new Set(Array.from({ length: 100 }, newSessionId));
  assert.equal(ids.size, 100);
  for (const id of ids) assert.match(id, /^chat-[0-9a-f]{32}$/);
  assert.deepEqual(STATUSES, ["streaming", "completed", "stopped", "failed", "interrupted"]);
});
