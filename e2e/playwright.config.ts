// Browser tests of the dashboard against a real `tally` server on a fresh SQLite file.
// `cargo xtask test` sets TALLY_BIN, TALLY_STATIC_DIR and TALLY_E2E_PORT; the defaults
// below let `npx playwright test` work after a debug build and `cargo xtask build-spa`.
import { defineConfig } from '@playwright/test';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { OPERATOR_EMAIL } from './operator';
import { randomBytes } from 'node:crypto';

const root = path.resolve(__dirname, '..');
const bin = path.resolve(process.env.TALLY_BIN ?? path.join(root, 'target/debug/tally'));
const staticDir = path.resolve(process.env.TALLY_STATIC_DIR ?? path.join(root, 'frontend/dist'));

// Playwright evaluates this file again in every worker process: the port and data directory are
// chosen once, in the runner, and handed to the workers (which inherit its environment), so
// the tests talk to the server that `webServer` started.
if (!process.env.TALLY_E2E_PORT) {
  // A free port, asked of the OS synchronously (the config cannot await).
  process.env.TALLY_E2E_PORT = execFileSync(process.execPath, [
    '-e',
    "const s = require('node:net').createServer(); s.listen(0, '127.0.0.1', () => { process.stdout.write(String(s.address().port)); s.close(); });",
  ])
    .toString()
    .trim();
}
if (!process.env.TALLY_E2E_DATA_DIR) {
  process.env.TALLY_E2E_DATA_DIR = fs.mkdtempSync(path.join(os.tmpdir(), 'tally-e2e-'));
}
// The secret that signs deposit notifications (C2): the server reads it as
// `billing.deposit_secret`, the tests sign with it.
if (!process.env.TALLY_E2E_DEPOSIT_SECRET) {
  process.env.TALLY_E2E_DEPOSIT_SECRET = `e2e-${Date.now()}-${Math.random().toString(36).slice(2)}`;
}
// The operator is made explicitly, as on a real server: `tally admin create-operator`
// with a password read from a file (never a command-line argument).
if (!process.env.TALLY_E2E_OPERATOR_PASSWORD) {
  process.env.TALLY_E2E_OPERATOR_PASSWORD = randomBytes(18).toString('base64url');
}
const port = Number(process.env.TALLY_E2E_PORT);
const dataDir = process.env.TALLY_E2E_DATA_DIR;
const passwordFile = path.join(dataDir, 'operator-password');
if (!fs.existsSync(passwordFile)) {
  fs.writeFileSync(passwordFile, `${process.env.TALLY_E2E_OPERATOR_PASSWORD}\n`, { mode: 0o600 });
}
const baseURL = `http://127.0.0.1:${port}`;

export default defineConfig({
  testDir: './tests',
  fullyParallel: false,
  workers: 1,
  retries: 0,
  reporter: 'list',
  timeout: 30_000,
  expect: { timeout: 10_000 },
  use: {
    baseURL,
    viewport: { width: 1300, height: 850 },
    screenshot: 'only-on-failure',
    launchOptions: {
      executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--no-first-run',
        '--disable-quic',
      ],
    },
  },
  webServer: {
    command:
      `"${bin}" admin --data-dir "${dataDir}" create-operator --email ${OPERATOR_EMAIL} --password-file "${passwordFile}" && ` +
      `exec "${bin}" serve --bind 127.0.0.1:${port} --data-dir "${dataDir}" --static-dir "${staticDir}"`,
    url: `${baseURL}/readyz`,
    timeout: 60_000,
    env: {
      TALLY_BILLING__DEPOSIT_SECRET: process.env.TALLY_E2E_DEPOSIT_SECRET,
      // The webhook spec's receiver listens on loopback.
      TALLY_WEBHOOKS__ALLOW_PRIVATE: 'true',
      // Every test signs up from 127.0.0.1: the sign-up and login throttles are
      // raised so that the suite's own accounts stay under them.
      TALLY_AUTH__IP_REQUESTS_PER_MINUTE: '10000',
      TALLY_AUTH__SIGNUPS_PER_IP_PER_HOUR: '10000',
    },
    reuseExistingServer: false,
    stdout: 'ignore',
    stderr: 'pipe',
  },
});
