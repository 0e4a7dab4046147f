/**
 * cancelproxy.js: chat through cancelproxy with a Stop that really stops.
 *
 * A small ES module with no dependencies, for browsers and Node 20+. It speaks
 * OpenAI's chat stream (`data: {chunk}` events, then `data: [DONE]`) with
 * `fetch` and a `ReadableStream`, and cancelproxy's routes around it.
 *
 *   import { CancelProxy, historyOf } from "/ui/cancelproxy.js";
 *
 *   const proxy = new CancelProxy({ baseUrl: "", sessionId: "chat-1" });
 *   const answer = proxy.chat(
 *     { model: "mock-1", messages: [{ role: "user", content: "hi" }] },
 *     { onUpdate: (a) => render(a.text, a.status) },
 *   );
 *   stopButton.onclick = () => proxy.stop();
 *   await answer.done; // never rejects: answer.status says how it ended
 *
 * new CancelProxy({ baseUrl, sessionId, headers, fetch, cancelTimeoutMs, cancelFinishReason })
 *   baseUrl            the proxy's root ("" = the page's own origin; no /v1)
 *   sessionId          sent as X-Session-Id; one is made when absent
 *   headers            extra request headers (e.g. Authorization), or a function returning them;
 *                      sent on every call, so cancels and reads carry the credential that owns the records
 *   fetch              the fetch to use (default: the global one)
 *   cancelTimeoutMs    how long Stop waits for the proxy before it drops the connection (5000)
 *   cancelFinishReason the finish_reason of a cancelled stream (the proxy's cancel_finish_reason)
 *
 * proxy.chat(body, { onUpdate })     start a stream: POST /v1/chat/completions, stream forced on → Answer
 * proxy.resume(requestId, { after, text, reasoning, onUpdate })
 *                                    follow an answer again: GET /requests/{id}/stream?after=N, where
 *                                    N = the events already had (and text/reasoning what they held) → Answer
 * proxy.stop()                       Stop every answer of the session: POST /api/chat/cancel/{session}.
 *                                    The streams then end by themselves, cleanly, with their partial text.
 *                                    Only if the proxy cannot be reached (or does not answer in time) are
 *                                    the fetches aborted, which stops the provider too (a dropped
 *                                    connection is a Stop), at once, or where the proxy has a disconnect
 *                                    grace once it ends: cancel() then, when the proxy can be reached
 *                                    again, stops it sooner. Resolves to the proxy's answer, or null.
 * proxy.cancel(requestId)            Stop one answer by its id: POST /requests/{id}/cancel. Resolves to the
 *                                    proxy's answer, or null if it cannot be reached (or does not answer in
 *                                    time); unlike stop(), no fetch is aborted.
 * proxy.session()                    GET /sessions/{id} → { session_id, requests: [records, oldest first] }
 *                                    (no requests when the proxy knows no such session)
 * proxy.request(requestId, { wait }) GET /requests/{id} → the record, or null; wait: until it is final
 * proxy.models()                     GET /v1/models → the model ids
 * historyOf(turns, { keepStopped })  the messages of a conversation for its next question
 *
 * An Answer has: requestId (from X-Request-Id, null until the proxy answered), status, text,
 * reasoning, finishReason, error (an OpenAI-shaped error object, or null), events (the SSE
 * events received, the N of a resume), and done (a promise of the answer once it has ended).
 * status is one of STATUSES:
 *   streaming    still arriving
 *   completed    the whole answer
 *   stopped      ended by a Stop (this page's, or any cancel of its request); text is the partial
 *   failed       a real failure: an HTTP error, or an error event mid-stream (text is what came before)
 *   interrupted  cut off without an ending (the connection broke, the proxy stopped or restarted)
 */

export const STATUSES = Object.freeze(["streaming", "completed", "stopped", "failed", "interrupted"]);

/** A fresh session id: 128 random bits, in the characters X-Session-Id allows. */
export function newSessionId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return "chat-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * The messages for the next question of a conversation. `turns` are
 * `{ question, answer: { status, text } }`, oldest first. Completed answers are
 * sent; partial ones (stopped, interrupted) only with `keepStopped`, since most
 * frontends leave a stopped answer out of the history; failed ones never. The
 * questions are always sent.
 */
export function historyOf(turns, { keepStopped = false } = {}) {
  const messages = [];
  for (const { question, answer } of turns) {
    messages.push({ role: "user", content: question });
    const partial = answer?.status === "stopped" || answer?.status === "interrupted";
    if (answer?.text && (answer.status === "completed" || (keepStopped && partial))) {
      messages.push({ role: "assistant", content: answer.text });
    }
  }
  return messages;
}

export class Answer {
  requestId = null;
  status = "streaming";
  text = "";
  reasoning = "";
  finishReason = null;
  error = null;
  events = 0;
  /** @type {Promise<Answer>} */
  done;
}

export class CancelProxy {
  #baseUrl;
  #headers;
  #fetch;
  #cancelTimeoutMs;
  #cancelFinishReason;
  // Each answer still streaming, with what only this module may touch.
  #live = new Map();

  constructor({
    baseUrl = "",
    sessionId = newSessionId(),
    headers = {},
    fetch = globalThis.fetch.bind(globalThis),
    cancelTimeoutMs = 5000,
    cancelFinishReason = "cancelled",
  } = {}) {
    this.#baseUrl = baseUrl.replace(/\/+$/, "");
    this.sessionId = sessionId;
    this.#headers = headers;
    this.#fetch = fetch;
    this.#cancelTimeoutMs = cancelTimeoutMs;
    this.#cancelFinishReason = cancelFinishReason;
  }

  /** Start a streamed chat completion; `body` is OpenAI's (model, messages, ...). */
  chat(body, { onUpdate } = {}) {
    const init = {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ...body, stream: true }),
    };
    return this.#start(new Answer(), "/v1/chat/completions", init, onUpdate);
  }

  /** Follow an answer again from its event `after` + 1 (SPEC: resume). */
  resume(requestId, { after = 0, text = "", reasoning = "", onUpdate } = {}) {
    const answer = Object.assign(new Answer(), { requestId, events: after, text, reasoning });
    const path = `/requests/${encodeURIComponent(requestId)}/stream?after=${after}`;
    return this.#start(answer, path, { method: "GET" }, onUpdate);
  }

  async stop() {
    const live = [...this.#live.values()];
    for (const run of live) run.stopping = true;
    // Null: unreachable, or no answer in time; dropping the connection is the Stop left.
    const ack = await this.#cancelAt(`/api/chat/cancel/${encodeURIComponent(this.sessionId)}`);
    for (const run of live) {
      // Reached, the proxy ends each stream cleanly (its last bytes are still
      // to be read, so no abort then); one it had not answered yet may not
      // have been registered, and has nothing to lose by being dropped.
      if (ack === null || run.answer.requestId === null) {
        run.controller.abort();
      } else if (this.#live.has(run.answer)) {
        // A clean end that never comes must not leave the answer streaming for ever.
        run.deadline = setTimeout(() => run.controller.abort(), this.#cancelTimeoutMs);
      }
    }
    return ack;
  }

  cancel(requestId) {
    return this.#cancelAt(`/requests/${encodeURIComponent(requestId)}/cancel`);
  }

  /** POST a cancel route within cancelTimeoutMs: the proxy's answer, or null (unreachable, too slow, an error). */
  async #cancelAt(path) {
    try {
      const response = await this.#call(path, { method: "POST", signal: AbortSignal.timeout(this.#cancelTimeoutMs) });
      return response.ok ? await response.json() : null;
    } catch {
      return null;
    }
  }

  async session() {
    const response = await this.#call(`/sessions/${encodeURIComponent(this.sessionId)}`);
    if (response.status === 404) return { session_id: this.sessionId, requests: [] };
    if (!response.ok) throw new Error(`GET /sessions: ${await errorMessage(response)}`);
    return response.json();
  }

  async request(requestId, { wait = false } = {}) {
    const response = await this.#call(`/requests/${encodeURIComponent(requestId)}${wait ? "?wait=1" : ""}`);
    if (response.status === 404) return null;
    if (!response.ok) throw new Error(`GET /requests/${requestId}: ${await errorMessage(response)}`);
    return response.json();
  }

  async models() {
    const response = await this.#call("/v1/models");
    if (!response.ok) throw new Error(`GET /v1/models: ${await errorMessage(response)}`);
    const { data } = await response.json();
    return (data ?? []).map((model) => model.id);
  }

  #call(path, init = {}) {
    const own = typeof this.#headers === "function" ? this.#headers() : this.#headers;
    const headers = { ...own, ...init.headers, "X-Session-Id": this.sessionId };
    return this.#fetch(this.#baseUrl + path, { ...init, headers });
  }

  #start(answer, path, init, onUpdate) {
    // One AbortController per request: aborting one answer never touches another.
    const run = { answer, controller: new AbortController(), stopping: false, deadline: null };
    this.#live.set(answer, run);
    const update = () => {
      try {
        onUpdate?.(answer);
      } catch (error) {
        // The caller's bug, reported (as uncaught, in a browser): it must not end the stream.
        (globalThis.reportError ?? console.error)(error);
      }
    };
    answer.done = this.#stream(run, path, init, update)
      .catch((error) => end(answer, "failed", { message: String(error?.message ?? error), type: "client" }))
      .then(() => {
        clearTimeout(run.deadline);
        this.#live.delete(answer);
        update();
        return answer;
      });
    return answer;
  }

  async #stream(run, path, init, update) {
    const { answer, controller } = run;
    let response;
    try {
      response = await this.#call(path, { ...init, signal: controller.signal });
    } catch (error) {
      if (run.stopping) return end(answer, "stopped");
      return end(answer, "failed", { message: `the proxy cannot be reached: ${error.message}`, type: "network" });
    }
    answer.requestId ??= response.headers.get("X-Request-Id");
    update();
    if (!response.ok) return end(answer, "failed", await errorOf(response));
    if (!/^text\/event-stream/i.test(response.headers.get("Content-Type") ?? "")) {
      // A provider that answered in one piece although asked to stream.
      const message = (await response.json()).choices?.[0]?.message ?? {};
      answer.text = message.content ?? "";
      return end(answer, "completed");
    }
    let sawDone = false;
    const parser = new EventParser((data) => {
      answer.events += 1;
      if (data === "[DONE]") {
        sawDone = true;
      } else {
        take(answer, data);
      }
      update();
    });
    try {
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        parser.push(value);
      }
      parser.end();
    } catch (error) {
      // An AbortError of our own Stop is a stop, never a failure.
      if (run.stopping && controller.signal.aborted) return end(answer, "stopped");
      return end(answer, "interrupted", { message: `the stream broke off: ${error.message}`, type: "network" });
    }
    if (answer.error !== null) return end(answer, "failed", answer.error);
    if (answer.finishReason === this.#cancelFinishReason) {
      // Someone else's cancel, or the proxy shutting down (its record says interrupted).
      if (!run.stopping && (await this.#recordStatus(answer.requestId)) === "interrupted") {
        return end(answer, "interrupted");
      }
      return end(answer, "stopped");
    }
    return end(answer, sawDone || answer.finishReason !== null ? "completed" : "interrupted");
  }

  async #recordStatus(requestId) {
    try {
      return (await this.request(requestId, { wait: true }))?.status ?? null;
    } catch {
      return null;
    }
  }
}

function end(answer, status, error = null) {
  answer.status = status;
  if (error !== null) answer.error = error;
}

/** One chunk's data: its text deltas, its finish_reason, or an error event. */
function take(answer, data) {
  let chunk;
  try {
    chunk = JSON.parse(data);
  } catch {
    return; // not JSON: not a chunk of an answer
  }
  if (chunk?.error) {
    answer.error = chunk.error;
    return;
  }
  const choice = chunk?.choices?.find((c) => (c.index ?? 0) === 0);
  if (!choice) return;
  const delta = choice.delta ?? {};
  if (typeof delta.content === "string") answer.text += delta.content;
  // "reasoning" is how vLLM and OpenRouter spell DeepSeek's reasoning_content.
  const reasoning = delta.reasoning_content ?? delta.reasoning;
  if (typeof reasoning === "string") answer.reasoning += reasoning;
  if (choice.finish_reason) answer.finishReason = choice.finish_reason;
}

/**
 * Server-sent events, incrementally (the WHATWG event-stream rules this module
 * needs): lines end in CRLF, LF or CR; a blank line ends an event; `:` lines
 * are comments (keep-alives); only `data` fields matter here. An event is a
 * block with data, so comments alone are not counted.
 */
class EventParser {
  #buffer = "";
  #data = [];

  constructor(onEvent) {
    this.onEvent = onEvent;
  }

  push(text) {
    this.#buffer += text;
    // A CR at the very end may be the first half of a CRLF: it waits for the next chunk.
    const lines = this.#buffer.split(/\r\n|\n|\r(?!$)/);
    this.#buffer = lines.pop();
    for (const line of lines) this.#line(line);
  }

  end() {
    // An event cut before its blank line is dropped, as EventSource does: it may be half a chunk.
    this.#buffer = "";
    this.#data = [];
  }

  #line(line) {
    if (line === "") {
      if (this.#data.length > 0) this.onEvent(this.#data.join("\n"));
      this.#data = [];
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    if (field === "data") this.#data.push(colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, ""));
  }
}

async function errorOf(response) {
  const text = await response.text().catch(() => "");
  try {
    const { error } = JSON.parse(text);
    if (error) return typeof error === "string" ? { message: error, status: response.status } : error;
  } catch {
    // not OpenAI's error shape
  }
  return { message: `HTTP ${response.status} ${response.statusText} ${text.slice(0, 200)}`.trim(), status: response.status };
}

async function errorMessage(response) {
  return (await errorOf(response)).message;
}
