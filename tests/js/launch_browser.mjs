// One headless Chromium for a test module: Debian's own build (Playwright's
// browser download cannot work here), driven over Playwright's protocol.
// Prints the endpoint the scenarios connect to; closes the browser on SIGTERM.
//
// Playwright gives the browser a fresh temporary --user-data-dir of its own
// (and refuses one in args), and every scenario opens a new context: no
// storage is ever shared between two tests.
import { chromium } from "playwright-core";

const server = await chromium.launchServer({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  chromiumSandbox: false,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
console.log(`browser listening on ${server.wsEndpoint()}`);
