// The chat page as a person uses it, one scenario per run:
//   node ui_scenarios.mjs NAME   (PROXY_URL, MOCK_URL, BROWSER_WS, SCENARIO_ARGS in the environment)
// Each prints what the page showed as one JSON line; the Python tests check
// it against the proxy's records and what the mock provider saw.
import net from "node:net";
import {
  PROXY,
  ask,
  openPage,
  providerRequest,
  report,
  setExtraBody,
  settled,
  shown,
  turn,
  waitForWords,
  watchStatuses,
} from "./browser.mjs";

const args = JSON.parse(process.env.SCENARIO_ARGS ?? "{}");

const scenarios = {
  // Start an answer, press Stop, then ask again.
  async stop_then_ask_again({ tag, nextTag, keepStopped, screenshots }) {
    const { page, errors } = await openPage();
    await watchStatuses(page);
    if (keepStopped) await page.check("#keep-stopped");
    await setExtraBody(page, { mock: { tokens: 400, rate: 20, tag } });
    await ask(page, "Tell me a long story");
    await waitForWords(page, 1, 6);
    if (screenshots) await page.screenshot({ path: `${screenshots}/ui-streaming.png` });
    await page.click("#stop");
    const stopped = await settled(page, 1);
    // The provider's own account: when did it see its connection close?
    const provider = await providerRequest(tag, "ended", 10);
    if (screenshots) await page.screenshot({ path: `${screenshots}/ui-stopped.png` });
    await setExtraBody(page, { mock: { tokens: 12, rate: 50, tag: nextTag } });
    await ask(page, "And a short one");
    const next = await settled(page, 2);
    // By now a token of the stopped answer would have had every chance to show.
    const stoppedAfter = await shown(page, 1);
    const seen = await page.evaluate(() => window.seenStatuses);
    report({ stopped, next, stoppedAfter, seen, provider, errors });
  },

  // Close the tab while an answer streams.
  async close_tab({ tag }) {
    const { page, context } = await openPage();
    await setExtraBody(page, { mock: { tokens: 400, rate: 20, tag } });
    await ask(page, "Tell me a long story");
    await waitForWords(page, 1, 4);
    const before = await shown(page, 1);
    await page.close();
    await context.close();
    report({ before });
  },

  // Two answers, one completed, one stopped; then a reload.
  async reload_keeps_the_conversation() {
    const { page, errors } = await openPage();
    await setExtraBody(page, { mock: { tokens: 5, rate: 0 } });
    await ask(page, "A short one");
    const completed = await settled(page, 1);
    await setExtraBody(page, { mock: { tokens: 400, rate: 20 } });
    await ask(page, "A long one");
    await waitForWords(page, 2, 3);
    await page.click("#stop");
    const stopped = await settled(page, 2);
    await page.check("#keep-stopped");
    const sessionId = await page.textContent("#session-id");
    await page.reload();
    const afterReload = [await settled(page, 1), await settled(page, 2)];
    const questions = await page.locator(".turn .question").allTextContents();
    report({
      before: [completed, stopped],
      afterReload,
      questions,
      sessionId,
      sessionIdAfter: await page.textContent("#session-id"),
      keepStoppedAfter: await page.isChecked("#keep-stopped"),
      errors,
    });
  },

  // Reload the page while an answer streams; it comes back and finishes.
  async reload_mid_answer({ tag, tokens }) {
    const { page, errors } = await openPage();
    await setExtraBody(page, { mock: { tokens, rate: 20, tag } });
    await ask(page, "Tell me a story");
    await waitForWords(page, 1, 5);
    const before = await shown(page, 1);
    await page.reload();
    await watchStatuses(page);
    const after = await settled(page, 1);
    const seen = await page.evaluate(() => window.seenStatuses);
    report({ before, after, seen, errors });
  },

  // The network drops mid-answer (every connection between the page and the
  // proxy cut, new ones refused), and comes back once the page has seen it go.
  async network_drop_mid_answer({ tag, tokens }) {
    const network = await cuttableNetwork(new URL(PROXY));
    const { page, errors } = await answerStreamingThrough(network, { tag, tokens });
    const before = await shown(page, 1);
    network.cut();
    const noticed = `#conversation > .turn:nth-child(1):not([data-status="streaming"])`;
    await page.waitForSelector(noticed, { timeout: 30_000 });
    const during = await shown(page, 1);
    network.restore();
    const after = await settled(page, 1);
    const seen = await page.evaluate(() => window.seenStatuses);
    report({ before, during, after, seen, errors });
  },

  // The network drops mid-answer and does not come back.
  async network_gone_mid_answer({ tag, tokens }) {
    const network = await cuttableNetwork(new URL(PROXY));
    const { page, errors } = await answerStreamingThrough(network, { tag, tokens });
    const before = await shown(page, 1);
    network.cut();
    const after = await settled(page, 1);
    const seen = await page.evaluate(() => window.seenStatuses);
    report({ before, after, seen, errors });
  },

  // Stop pressed while the network is away (the cancel cannot get through), then the network comes back.
  async stop_while_reconnecting({ tag, tokens }) {
    const network = await cuttableNetwork(new URL(PROXY));
    const { page, errors } = await answerStreamingThrough(network, { tag, tokens });
    network.cut();
    await page.waitForSelector(`#conversation > .turn:nth-child(1)[data-status="reconnecting"]`, { timeout: 30_000 });
    const cancelRefused = network.refused("POST /api/chat/cancel/");
    await page.click("#stop");
    await cancelRefused;
    network.restore();
    const stopped = await settled(page, 1);
    const provider = await providerRequest(tag, "ended", 10);
    const seen = await page.evaluate(() => window.seenStatuses);
    report({ stopped, provider, seen, errors });
  },

  // Stop pressed while the page cannot reach the proxy (its stream still flows, new connections
  // are refused), then the network comes back.
  async stop_while_unreachable({ tag, tokens }) {
    const network = await cuttableNetwork(new URL(PROXY));
    const { page, errors } = await answerStreamingThrough(network, { tag, tokens });
    network.refuseNew("POST /v1/chat/completions ");
    const cancelRefused = network.refused("POST /api/chat/cancel/");
    await page.click("#stop");
    await cancelRefused;
    const stopped = await settled(page, 1);
    network.restore();
    const provider = await providerRequest(tag, "ended", 20);
    const seen = await page.evaluate(() => window.seenStatuses);
    report({ stopped, provider, seen, errors });
  },

  // Stop finds the cancel routes unreachable (everything else goes through); the next question is
  // asked and streams while the page asks again to stop the first answer. Once that gets through,
  // the next answer must go on: the Stop is asked again by request id, not for the whole session.
  async ask_again_while_a_stop_is_retried({ tag, nextTag, tokens }) {
    const network = await cuttableNetwork(new URL(PROXY));
    const { page, errors } = await answerStreamingThrough(network, { tag, tokens });
    network.block(["POST /api/chat/cancel/", "POST /requests/"]);
    const cancelRefused = network.refused("POST /api/chat/cancel/");
    await page.click("#stop");
    await cancelRefused;
    const stopped = await settled(page, 1);
    await setExtraBody(page, { mock: { tokens, rate: 20, tag: nextTag } });
    await ask(page, "Tell me another one");
    await waitForWords(page, 2, 5);
    network.restore();
    const provider = await providerRequest(tag, "ended", 20);
    const words = (await shown(page, 2)).text.split(" ").filter(Boolean).length;
    const next = await Promise.race([
      waitForWords(page, 2, words + 10).then(() => "went on"),
      settled(page, 2).then((answer) => `ended ${answer.status}`),
    ]);
    if (next === "went on") await page.click("#stop"); // its own Stop
    const nextStopped = await settled(page, 2);
    const nextProvider = await providerRequest(nextTag, "ended", 20);
    const seen = await page.evaluate(() => window.seenStatuses);
    report({ stopped, provider, next, nextStopped, nextProvider, seen, errors });
  },

  // The proxy stops accepting (SIGTERM, draining its streams) before Stop is pressed.
  async stop_with_proxy_unreachable({ tag, proxyPid, proxyPort }) {
    const { page, errors } = await openPage();
    await watchStatuses(page);
    await setExtraBody(page, { mock: { tokens: 400, rate: 20, tag } });
    await ask(page, "Tell me a long story");
    await waitForWords(page, 1, 5);
    process.kill(proxyPid, "SIGTERM");
    while (await accepts(proxyPort)) {
      await new Promise((resolve) => setTimeout(resolve, 20)); // polling a socket state: no event exists for it
    }
    // The cancel is refused, or, sent on a connection the page kept alive,
    // never answered while the proxy drains: then the module's cancel timeout
    // (5 s) is what makes it drop the stream.
    await page.click("#stop");
    const stopped = await settled(page, 1);
    const provider = await providerRequest(tag, "ended", 10);
    const seen = await page.evaluate(() => window.seenStatuses);
    report({ stopped, provider, seen, errors });
  },

  // The provider breaks off mid-answer.
  async provider_fails({ tag, failAfter }) {
    const { page, errors } = await openPage();
    await watchStatuses(page);
    await setExtraBody(page, { mock: { tokens: 40, rate: 20, fail_after: failAfter, tag } });
    await ask(page, "Tell me a story");
    const failed = await settled(page, 1);
    const seen = await page.evaluate(() => window.seenStatuses);
    report({ failed, seen, errors });
  },

  // The page served from another origin, the proxy allowing it (CORS).
  async from_another_origin({ pageUrl, tag }) {
    const { page, errors } = await openPage(pageUrl);
    await setExtraBody(page, { mock: { tokens: 400, rate: 20, tag } });
    await ask(page, "Tell me a long story");
    await waitForWords(page, 1, 4);
    await page.click("#stop");
    const stopped = await settled(page, 1);
    report({ stopped, origin: await page.evaluate(() => location.origin), errors });
  },
};

/** The chat page through `network`, an answer streaming (5 words of it shown). */
async function answerStreamingThrough(network, { tag, tokens }) {
  const { page, errors } = await openPage(`${network.url}/ui/`);
  await watchStatuses(page);
  await setExtraBody(page, { mock: { tokens, rate: 20, tag } });
  await ask(page, "Tell me a story");
  await waitForWords(page, 1, 5);
  return { page, errors };
}

/**
 * A TCP hop in front of `target` whose connections can all be cut at once (or only new ones refused,
 * or only some requests: `block`); while down, new connections are refused once their request line
 * has arrived (`refused(prefix)` waits for one refused request).
 */
async function cuttableNetwork(target) {
  const sockets = new Set();
  const waiting = [];
  let up = true;
  let blocked = []; // request-line prefixes refused on any connection, new or kept alive
  const announceRefused = (line) => {
    for (const w of waiting.filter((w) => line.startsWith(w.prefix))) {
      waiting.splice(waiting.indexOf(w), 1);
      w.resolve(line);
    }
  };
  const refuse = (client) => {
    client.once("data", (data) => {
      announceRefused(data.toString("latin1").split("\r\n", 1)[0]);
      client.destroy();
    });
    client.on("error", () => {});
  };
  const lastRequest = new Map(); // client socket → the request line it sent last (keep-alive: one after another)
  const server = net.createServer((client) => {
    if (!up) return refuse(client);
    const upstream = net.connect(Number(target.port), target.hostname);
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on("close", () => sockets.delete(socket));
      socket.on("error", () => {});
    }
    // Forwarded by hand (not piped) so that a blocked request never reaches the proxy.
    client.on("data", (data) => {
      const line = data.toString("latin1").split("\r\n", 1)[0];
      if (/^[A-Z]+ \S+ HTTP\/1\.1$/.test(line)) {
        if (blocked.some((prefix) => line.startsWith(prefix))) {
          announceRefused(line);
          client.destroy();
          return;
        }
        lastRequest.set(client, line);
      }
      upstream.write(data);
    });
    client.on("end", () => upstream.end());
    client.on("close", () => lastRequest.delete(client));
    upstream.pipe(client);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    cut() {
      up = false;
      for (const socket of sockets) socket.destroy();
    },
    /** Refuse new connections and close the idle ones: only the streams that run (`keep`) go on. */
    refuseNew(keep) {
      up = false;
      for (const [client, line] of lastRequest) if (!line.startsWith(keep)) client.destroy();
    },
    /** Refuse only the requests whose line starts with one of `prefixes`; everything else goes through. */
    block(prefixes) {
      blocked = prefixes;
    },
    restore() {
      up = true;
      blocked = [];
    },
    refused(prefix) {
      return new Promise((resolve) => waiting.push({ prefix, resolve }));
    },
  };
}

function accepts(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

const name = process.argv[2];
if (!(name in scenarios)) throw new Error(`no scenario ${name}: one of ${Object.keys(scenarios).join(", ")}`);
await scenarios[name](args);
process.exit(0); // the browser connection would keep node alive
