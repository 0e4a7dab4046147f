// What the browser scenarios share: the browser, the proxy and the mock provider.
import { chromium } from "playwright-core";

export const PROXY = process.env.PROXY_URL;
export const MOCK = process.env.MOCK_URL;

/** A new page in a context of its own (fresh storage), with page errors surfaced. */
export async function openPage(url = `${PROXY}/ui/`) {
  const browser = await chromium.connect(process.env.BROWSER_WS);
  const context = await browser.newContext({ viewport: { width: 900, height: 460 } });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (error) => errors.push(error.message));
  await page.goto(url);
  // The page is ready once it has listed the models and taken the first.
  await page.waitForFunction(() => document.querySelector("#model").value !== "");
  return { browser, context, page, errors };
}

/** Every value the turn's data-status took, in order (the page never shows "failed" in between). */
export async function watchStatuses(page) {
  await page.evaluate(() => {
    window.seenStatuses = [];
    new MutationObserver((changes) => {
      for (const change of changes) {
        const turn = change.target;
        const index = [...turn.parentElement.children].indexOf(turn);
        (window.seenStatuses[index] ??= []).push(turn.dataset.status);
      }
    }).observe(document.querySelector("#conversation"), {
      subtree: true,
      attributeFilter: ["data-status"],
    });
  });
}

/** Type the extra request body into the settings (the mock provider's knobs), and close them again. */
export async function setExtraBody(page, extra) {
  await page.click("#settings summary");
  await page.fill("#extra", JSON.stringify(extra));
  await page.click("#settings summary");
}

export async function ask(page, question) {
  await page.fill("#question", question);
  await page.press("#question", "Enter");
}

export function turn(page, n) {
  return page.locator(`#conversation > .turn:nth-child(${n})`);
}

/** Wait until turn n's answer has at least `count` words on screen. */
export async function waitForWords(page, n, count) {
  await page.waitForFunction(
    ([n, count]) => {
      const text = document.querySelector(`#conversation > .turn:nth-child(${n}) .answer-text`)?.textContent ?? "";
      return text.split(" ").filter(Boolean).length >= count;
    },
    [n, count],
    { timeout: 30_000 },
  );
}

/** Wait until turn n is no longer streaming (nor reconnecting); what it then shows. */
export async function settled(page, n, timeout = 30_000) {
  const busy = ["loading", "streaming", "reconnecting"].map((status) => `:not([data-status="${status}"])`).join("");
  await page.waitForSelector(`#conversation > .turn:nth-child(${n})[data-request-id]${busy}`, { timeout });
  return shown(page, n);
}

export async function shown(page, n) {
  const element = turn(page, n);
  return {
    status: await element.getAttribute("data-status"),
    requestId: (await element.getAttribute("data-request-id")) || null,
    text: await element.locator(".answer-text").textContent(),
    error: (await element.locator(".error").isVisible()) ? await element.locator(".error").textContent() : null,
  };
}

/** The mock provider's record of a tagged request; `wait` long-polls until started or ended. */
export async function providerRequest(tag, wait, timeout = 15) {
  const query = wait ? `?wait=${wait}&timeout=${timeout}` : "";
  const response = await fetch(`${MOCK}/_mock/requests/${tag}${query}`);
  if (!response.ok) throw new Error(`provider has no request ${tag} (${wait}): ${await response.text()}`);
  return response.json();
}

/** Print the scenario's observations for the Python side, as the last line. */
export function report(result) {
  console.log(JSON.stringify(result));
}
