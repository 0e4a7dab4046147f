// openai-node's chat stream helper (ChatCompletionStream) through the proxy, stopped by a cancel.
//
// node chat_stream_helper.mjs BASE_URL SESSION_ID REQUEST_JSON CANCEL_AFTER_CHUNKS
// With CANCEL_AFTER_CHUNKS > 0 the script cancels the session itself once it
// has had that many chunks; with 0 the caller cancels. It prints the final
// completion's choices; the helper throws on a choice it cannot finalise.
import OpenAI from "openai";

const [base, sessionId, request, cancelAfter] = process.argv.slice(2);
const key = process.env.API_KEY;
const client = new OpenAI({ baseURL: base, apiKey: key, maxRetries: 0 });
const stream = client.chat.completions.stream(JSON.parse(request), { headers: { "X-Session-Id": sessionId } });

let chunks = 0;
let cancelling = null;
stream.on("chunk", () => {
  chunks += 1;
  if (chunks === Number(cancelAfter)) {
    const url = base.replace(/\/v1$/, "") + `/sessions/${sessionId}/cancel`;
    cancelling = fetch(url, { method: "POST", headers: { Authorization: `Bearer ${key}` } }).then((r) => r.json());
  }
});
const final = await stream.finalChatCompletion();
const ack = cancelling ? await cancelling : null;
const choices = final.choices.map((c) => ({
  index: c.index,
  role: c.message.role,
  content: c.message.content,
  finish_reason: c.finish_reason,
}));
console.log(JSON.stringify({ choices, chunks, cancelled: ack?.cancelled ?? null }));
