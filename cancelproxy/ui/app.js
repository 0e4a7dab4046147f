// The reference chat page: the DOM and the browser's storage around cancelproxy.js.
//
// What survives a reload lives in localStorage: the session id, and for each
// turn its question and request id (the proxy's records hold the answers, so
// the page reads them back from GET /sessions/{id}). An answer that was still
// streaming is resumed from the proxy instead of being lost. The API key
// stays in sessionStorage: this tab only, gone when it closes.
import { CancelProxy, historyOf, newSessionId } from "./cancelproxy.js";

const STORAGE_KEY = "cancelproxy.chat";
const KEY_STORAGE_KEY = "cancelproxy.apiKey";
const $ = (selector) => document.querySelector(selector);

const saved = load();
const state = {
  sessionId: saved.sessionId ?? newSessionId(),
  // { question, requestId, answer: { status, text, reasoning, error } }, oldest first
  turns: (saved.turns ?? []).map(({ question, requestId }) => ({ question, requestId, answer: null })),
  model: saved.model ?? "",
  keepStopped: saved.keepStopped === true,
  extra: saved.extra ?? "",
};
const streaming = new Set();

const proxy = new CancelProxy({
  baseUrl: $('meta[name="cancelproxy-proxy"]').content,
  sessionId: state.sessionId,
  headers: () => {
    const key = sessionStorage.getItem(KEY_STORAGE_KEY);
    return key ? { Authorization: `Bearer ${key}` } : {};
  },
});

function load() {
  try {
    return JSON.parse(localStorage.getItem(STORAGE_KEY)) ?? {};
  } catch {
    return {};
  }
}

function save() {
  const turns = state.turns.map(({ question, requestId }) => ({ question, requestId }));
  const { sessionId, model, keepStopped, extra } = state;
  localStorage.setItem(STORAGE_KEY, JSON.stringify({ sessionId, turns, model, keepStopped, extra }));
}

function notice(message) {
  $("#notice").textContent = message ?? "";
  $("#notice").hidden = !message;
}

// --- rendering -------------------------------------------------------------

const STATUS_LABELS = {
  loading: "loading…",
  streaming: "streaming…",
  reconnecting: "reconnecting…",
  completed: "completed",
  stopped: "stopped",
  failed: "failed",
  interrupted: "interrupted",
};

function render(turn) {
  if (!turn.element) {
    turn.element = $("#turn").content.firstElementChild.cloneNode(true);
    turn.element.querySelector(".question").textContent = turn.question;
    $("#conversation").append(turn.element);
  }
  const answer = turn.answer ?? { status: "loading", text: "", reasoning: "", error: null };
  const element = turn.element;
  element.dataset.status = answer.status;
  element.dataset.requestId = turn.requestId ?? "";
  element.querySelector(".answer-text").textContent = answer.text;
  element.querySelector(".reasoning").hidden = !answer.reasoning;
  element.querySelector(".reasoning-text").textContent = answer.reasoning;
  element.querySelector(".status").textContent = STATUS_LABELS[answer.status] ?? answer.status;
  element.querySelector(".request-id").textContent = turn.requestId ?? "";
  const error = element.querySelector(".error");
  error.hidden = !answer.error;
  error.textContent = answer.error ? describe(answer.error) : "";
}

function describe(error) {
  const code = error.code ? ` (${error.code})` : "";
  return `${error.message ?? JSON.stringify(error)}${code}`;
}

function renderControls() {
  const busy = streaming.size > 0;
  $("#stop").disabled = !busy;
  $("#send").disabled = busy;
  $("#new-chat").disabled = busy;
  $("#session-id").textContent = state.sessionId;
}

// --- answers ---------------------------------------------------------------

// A stream whose connection breaks (the network, not an answer of the proxy) is
// followed again from the events already shown, after these pauses (they start
// over once an attempt brought more of the answer): the proxy replays what it
// sent meanwhile. The generation went on if the proxy has a disconnect grace
// (on_disconnect.grace_s, or X-Disconnect-Grace); without one the break
// stopped it, and following it again shows where it ended.
const RECONNECT_PAUSES_MS = [250, 1000, 2000, 4000, 8000];

/** `follow`, then again from where it broke off while its connection breaks (RECONNECT_PAUSES_MS). */
async function followThrough(turn, start) {
  let answer = await follow(turn, start);
  let attempt = 0;
  while (brokeOff(answer)) {
    if (attempt === RECONNECT_PAUSES_MS.length) {
      show(turn, { ...turn.answer, status: "interrupted", error: answer.error });
      return answer;
    }
    // Still this turn's: Stop stays pressable (it cancels on the proxy, and
    // `stop` asks again until it gets through; the next attempt shows the
    // stopped answer), no new question meanwhile.
    streaming.add(turn);
    renderControls();
    show(turn, { ...turn.answer, status: "reconnecting" });
    await sleep(RECONNECT_PAUSES_MS[attempt]);
    const { requestId, events: after, text, reasoning } = answer;
    answer = await follow(turn, (onUpdate) => proxy.resume(requestId, { after, text, reasoning, onUpdate }), {
      quietUntilPast: after,
    });
    if (answer.events > after) {
      attempt = 0;
    } else if (brokeOff(answer)) {
      attempt += 1;
    } else if (answer.status === "failed") {
      // The proxy answered, with nothing more: an error (the stream is gone,
      // past resume.keep_s or with a proxy that restarted), or below, its end.
      const error = { message: `the stream broke off and cannot be resumed: ${describe(answer.error)}` };
      show(turn, { ...turn.answer, status: "interrupted", error });
    } else {
      show(turn, { ...turn.answer, status: answer.status, error: answer.error });
    }
  }
  return answer;
}

/** The connection broke (or could not be made again) with an answer the proxy knows by its id. */
function brokeOff(answer) {
  const cut = answer.status === "interrupted" || answer.status === "failed";
  return cut && answer.error?.type === "network" && answer.requestId !== null;
}

function show(turn, answer) {
  turn.answer = answer;
  render(turn);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Show an Answer of cancelproxy.js as it arrives, and keep its request id; `start(onUpdate)` makes it.
 * A broken connection's end is left to `followThrough`, which reconnects; with `quietUntilPast: N`
 * (a reconnect), nothing is shown until an event past the N-th arrives.
 */
async function follow(turn, start, { quietUntilPast = null } = {}) {
  streaming.add(turn);
  renderControls();
  const onUpdate = (a) => {
    if (brokeOff(a) || a.events === quietUntilPast) return;
    if (a.requestId && turn.requestId !== a.requestId) {
      turn.requestId = a.requestId;
      save(); // from now on a reload finds this answer again
    }
    show(turn, { status: a.status, text: a.text, reasoning: a.reasoning, error: a.error });
  };
  const answer = start(onUpdate);
  onUpdate(answer);
  await answer.done;
  streaming.delete(turn);
  renderControls();
  return answer;
}

async function ask(question) {
  state.model = $("#model").value.trim();
  state.extra = $("#extra").value;
  let extra = {};
  if (state.extra.trim()) {
    try {
      extra = JSON.parse(state.extra);
    } catch (error) {
      notice(`Extra request body is not JSON: ${error.message}`);
      return;
    }
  }
  notice(null);
  const messages = [...historyOf(state.turns, { keepStopped: state.keepStopped }), { role: "user", content: question }];
  const turn = { question, requestId: null, answer: null };
  state.turns.push(turn);
  save();
  await followThrough(turn, (onUpdate) => proxy.chat({ ...extra, model: state.model, messages }, { onUpdate }));
}

/** After a reload: each turn's answer from its record, and a resume for one still streaming. */
async function restore() {
  for (const turn of state.turns) render(turn);
  renderControls();
  if (state.turns.length === 0) return;
  let records;
  try {
    ({ requests: records } = await proxy.session());
  } catch (error) {
    notice(`Cannot read this conversation from the proxy: ${error.message}`);
    for (const turn of state.turns) {
      turn.answer = { status: "interrupted", text: "", reasoning: "", error: null };
      render(turn);
    }
    return;
  }
  const byId = new Map(records.map((record) => [record.request_id, record]));
  const claimed = new Set(state.turns.map((turn) => turn.requestId).filter(Boolean));
  // A turn reloaded before the proxy answered has no id yet: its record is the
  // session's next one no turn claims (one question at a time, in order).
  const unclaimed = records.filter((record) => !claimed.has(record.request_id));
  for (const turn of state.turns) {
    if (!turn.requestId && unclaimed.length > 0) turn.requestId = unclaimed.shift().request_id;
  }
  save();
  for (const turn of state.turns) {
    const record = byId.get(turn.requestId);
    if (!record) {
      const error = { message: "the proxy has no record of this answer" };
      turn.answer = { status: "interrupted", text: "", reasoning: "", error };
    } else if (record.status === "in_progress") {
      resume(turn, record);
      continue;
    } else {
      turn.answer = fromRecord(record);
    }
    render(turn);
  }
}

function fromRecord(record) {
  return {
    status: record.status,
    text: record.content ?? "",
    reasoning: record.reasoning_content ?? "",
    error: record.error ?? null,
  };
}

async function resume(turn, record) {
  // The page kept no events across the reload: the whole stream is replayed.
  const answer = await followThrough(turn, (onUpdate) => proxy.resume(record.request_id, { after: 0, onUpdate }));
  if (answer.status === "failed" && answer.events === 0) {
    // No stream to follow (a proxy without resume, or the record is gone): what the store holds.
    const error = { message: `cannot resume: ${describe(answer.error)}` };
    turn.answer = { ...fromRecord(record), status: "interrupted", error };
    render(turn);
  }
}

// --- controls --------------------------------------------------------------

/**
 * Stop every answer of the session (those reconnecting too). When the proxy
 * cannot be reached, the module drops the streams; that stops a generation only
 * where the proxy has no disconnect grace (with one, it goes on until the grace
 * ends), so those answers' cancels are asked again after the reconnect pauses
 * until the proxy answers them; by id, so that a question asked meanwhile is
 * not stopped.
 */
async function stop() {
  // Taken first: the streams the module drops leave `streaming` as they end.
  let unanswered = [...streaming].map((turn) => turn.requestId).filter(Boolean);
  if ((await proxy.stop()) !== null) return;
  for (const pause of RECONNECT_PAUSES_MS) {
    if (unanswered.length === 0) return;
    await sleep(pause);
    const answers = await Promise.all(unanswered.map((requestId) => proxy.cancel(requestId)));
    unanswered = unanswered.filter((_, i) => answers[i] === null);
  }
}

async function listModels() {
  const input = $("#model");
  input.value = state.model;
  try {
    const models = await proxy.models();
    $("#models").replaceChildren(...models.map((id) => Object.assign(document.createElement("option"), { value: id })));
    if (!state.model && models.length > 0) {
      state.model = input.value = models[0];
      save();
    }
  } catch (error) {
    input.placeholder = "type a model name";
    notice(`Cannot list the models: ${error.message}`);
  }
}

function wire() {
  const question = $("#question");
  $("#ask").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = question.value.trim();
    if (!text || streaming.size > 0) return;
    question.value = "";
    ask(text);
  });
  question.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("#ask").requestSubmit();
    }
  });
  $("#stop").addEventListener("click", stop);
  $("#model").addEventListener("change", (event) => {
    state.model = event.target.value.trim();
    save();
  });
  const keep = $("#keep-stopped");
  keep.checked = state.keepStopped;
  keep.addEventListener("change", () => {
    state.keepStopped = keep.checked;
    save();
  });
  const extra = $("#extra");
  extra.value = state.extra;
  extra.addEventListener("change", () => {
    state.extra = extra.value;
    save();
  });
  $("#settings-form").addEventListener("submit", (event) => event.preventDefault());
  const key = $("#api-key");
  key.value = sessionStorage.getItem(KEY_STORAGE_KEY) ?? "";
  key.addEventListener("change", () => {
    if (key.value) sessionStorage.setItem(KEY_STORAGE_KEY, key.value);
    else sessionStorage.removeItem(KEY_STORAGE_KEY);
  });
  $("#new-chat").addEventListener("click", () => {
    state.sessionId = proxy.sessionId = newSessionId();
    state.turns = [];
    $("#conversation").replaceChildren();
    notice(null);
    save();
    renderControls();
  });
}

wire();
save();
listModels();
restore();
