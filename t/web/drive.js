#!/usr/bin/env node
// Drives Converse.js (t/web/index.html) in Debian's headless Chromium for
// t/test_browser.py.  One JSON command a line on stdin, one JSON answer a
// line on stdout ({"ok": true, ...} or {"ok": false, "error": ...}); every
// wait is a DOM condition with a deadline, never a sleep.
//
//   {"cmd": "open", "url": U, "peer": JID}
//        load U (the page logs in by itself) and wait until the roster
//        shows PEER: the client is connected, authenticated, bound and has
//        its roster
//   {"cmd": "send", "to": JID, "body": B}
//        open the chat with JID from the roster, type B, press Enter and
//        wait until B is shown as sent in that chat
//   {"cmd": "expect", "from": JID, "body": B}
//        wait until the chat with JID shows a message from JID with text
//        B; answers the text the DOM shows
//   {"cmd": "screenshot", "path": P}
//   {"cmd": "report"}
//        requests that left the page's origin (aborted), failed requests,
//        HTTP errors, page errors, the console's warnings and errors
//   {"cmd": "close"}
//
// Environment: CHROMIUM (default /usr/bin/chromium), DRIVE_TIMEOUT_MS (per
// wait, default 20000).
'use strict';

const path = require('path');
const readline = require('readline');
const { chromium } = require(path.join(__dirname, 'node_modules',
                                       'playwright-core'));

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const TIMEOUT = parseInt(process.env.DRIVE_TIMEOUT_MS || '20000', 10);

let browser = null;
let page = null;
let origin = null;
const offsite = [];     // {url, type} of requests off the page's origin
const failed = [];      // requests that failed (network level)
const httpErrors = [];  // responses >= 400
const pageErrors = [];
const consoleLines = [];

function answer(obj) {
    process.stdout.write(JSON.stringify(obj) + '\n');
}

function cssString(s) {
    return '"' + String(s).replace(/["\\]/g, '\\$&') + '"';
}

function bare(jid) {
    return String(jid).split('/')[0];
}

// the chat with a contact, and the message texts in it from FROM
function chatSel(jid) {
    return 'converse-chat[jid=' + cssString(bare(jid)) + ']';
}

async function open(cmd) {
    const t0 = Date.now();
    origin = new URL(cmd.url).origin;
    browser = await chromium.launch({
        executablePath: CHROMIUM,
        // root in CI: Chromium's sandbox needs an unprivileged user
        args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
    });
    const context = await browser.newContext({
        viewport: { width: 1100, height: 700 },
    });
    page = await context.newPage();
    page.setDefaultTimeout(TIMEOUT);
    // everything must come from the nginx under test: no CDN
    await page.route('**/*', (route) => {
        const u = route.request().url();
        if (u.startsWith('data:') || u.startsWith('blob:') ||
                new URL(u).origin === origin) {
            return route.continue();
        }
        offsite.push({ url: u, type: route.request().resourceType() });
        return route.abort('blockedbyclient');
    });
    page.on('requestfailed', (r) => {
        failed.push(r.url() + ' ' + (r.failure() || {}).errorText);
    });
    page.on('response', (r) => {
        if (r.status() >= 400) {
            httpErrors.push(r.status() + ' ' + r.url());
        }
    });
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    page.on('console', (m) => {
        // all of it to stderr (the test keeps it in drive.stderr): with
        // loglevel=debug that is every XML element in and out
        // (Converse colours what it sends cyan, what it gets golden)
        const text = m.text()
            .replace(/^%c%s color: darkcyan /, 'SENT ')
            .replace(/^%c%s color: darkgoldenrod /, 'RECV ');
        process.stderr.write('[' + m.type() + '] ' + text + '\n');
        if (m.type() === 'error' || m.type() === 'warning') {
            consoleLines.push(m.type() + ': ' + m.text());
        }
    });
    await page.goto(cmd.url, { waitUntil: 'load' });
    // logged in with the roster fetched: the peer's roster entry
    const contact = 'converse-roster a.open-chat[data-jid=' +
        cssString(bare(cmd.peer)) + ']';
    await page.waitForSelector(contact, { state: 'visible' });
    await page.waitForSelector('body[data-xmpp-cm="connected"]',
                               { state: 'attached' });
    const jid = await page.evaluate(
        () => window.xmppCmTest.api.connection.get().jid);
    const transport = await page.evaluate(
        () => window.xmppCmTest.api.connection.isType('websocket') ?
            'websocket' : (window.xmppCmTest.api.connection.isType('bosh') ?
                           'bosh' : 'other'));
    return { jid: jid, transport: transport, ms: Date.now() - t0 };
}

async function openChat(jid) {
    const chat = chatSel(jid);
    if (await page.$(chat) === null) {
        await page.click('converse-roster a.open-chat[data-jid=' +
                         cssString(bare(jid)) + ']');
    }
    await page.waitForSelector(chat + ' textarea.chat-textarea',
                               { state: 'visible' });
    return chat;
}

async function send(cmd) {
    const t0 = Date.now();
    const chat = await openChat(cmd.to);
    const area = chat + ' textarea.chat-textarea';
    await page.fill(area, cmd.body);
    await page.press(area, 'Enter');
    // shown as our own message in that chat
    await page.locator(chat + ' .chat-msg .chat-msg__text',
                       { hasText: cmd.body }).first()
        .waitFor({ state: 'visible' });
    return { ms: Date.now() - t0 };
}

async function expect(cmd) {
    const t0 = Date.now();
    const chat = await openChat(cmd.from);
    const msg = page.locator(
        chat + ' .chat-msg[data-from^=' + cssString(bare(cmd.from)) +
            '] .chat-msg__text', { hasText: cmd.body }).first();
    await msg.waitFor({ state: 'visible' });
    const text = await msg.textContent();
    const from = await page.locator(
        chat + ' .chat-msg[data-from^=' + cssString(bare(cmd.from)) + ']',
        { hasText: cmd.body }).first().getAttribute('data-from');
    return { text: text.trim(), from: from, ms: Date.now() - t0 };
}

async function screenshot(cmd) {
    await page.screenshot({ path: cmd.path });
    return { path: cmd.path };
}

function report() {
    return { offsite: offsite, failed: failed, http_errors: httpErrors,
             page_errors: pageErrors, console: consoleLines.slice(-50) };
}

async function close() {
    if (browser) {
        await browser.close();
        browser = null;
    }
    return {};
}

const handlers = { open, send, expect, screenshot, report, close };

async function main() {
    const rl = readline.createInterface({ input: process.stdin });
    for await (const line of rl) {
        if (!line.trim()) {
            continue;
        }
        let cmd;
        try {
            cmd = JSON.parse(line);
        } catch (e) {
            answer({ ok: false, error: 'bad JSON: ' + e.message });
            continue;
        }
        const h = handlers[cmd.cmd];
        if (!h) {
            answer({ ok: false, error: 'unknown command ' + cmd.cmd });
            continue;
        }
        try {
            answer(Object.assign({ ok: true }, await h(cmd)));
        } catch (e) {
            answer({ ok: false, error: String(e && e.stack || e),
                     report: report() });
        }
        if (cmd.cmd === 'close') {
            break;
        }
    }
    await close();
}

main().catch((e) => {
    answer({ ok: false, error: String(e && e.stack || e) });
    process.exit(1);
});
