import { expect, test } from '@playwright/test';
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

// The first operator (A1): a server that starts without one writes a one-time setup token to
// its data directory; /setup#TOKEN creates the operator, once. This test runs a server of its
// own on a fresh data directory (the suite's server already has its operator).

const root = path.resolve(__dirname, '..', '..');
const bin = path.resolve(process.env.TALLY_BIN ?? path.join(root, 'target/debug/tally'));
const staticDir = path.resolve(process.env.TALLY_STATIC_DIR ?? path.join(root, 'frontend/dist'));

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

async function waitReady(base: string) {
  for (let i = 0; i < 300; i++) {
    try {
      if ((await fetch(`${base}/readyz`)).ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${base} did not become ready`);
}

test('a new server is set up with its one-time token, and the token works once', async ({ browser }) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tally-e2e-setup-'));
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const server: ChildProcess = spawn(
    bin,
    ['serve', '--bind', `127.0.0.1:${port}`, '--data-dir', dir, '--static-dir', staticDir],
    { stdio: 'ignore' },
  );
  try {
    await waitReady(base);
    const file = path.join(dir, 'setup-token');
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    const token = fs.readFileSync(file, 'utf8').trim();
    expect(token).toMatch(/^tsu_[A-Za-z0-9_-]{43}$/);

    const context = await browser.newContext({ baseURL: base, viewport: { width: 1300, height: 850 } });
    const page = await context.newPage();
    await page.goto(`/setup#${token}`);
    await expect(page.getByTestId('setup-token')).toHaveValue(token);
    for (const [label, size] of [['desktop', { width: 1300, height: 850 }], ['phone', { width: 390, height: 844 }]] as const) {
      await page.setViewportSize(size);
      await page.screenshot({ path: test.info().outputPath(`setup-${label}.png`), fullPage: true });
    }
    await page.setViewportSize({ width: 1300, height: 850 });
    await page.getByTestId('email').fill('root@setup.example.com');
    await page.getByTestId('password').fill('a long operator password');
    await page.getByTestId('submit').click();
    await expect(page).toHaveURL(`${base}/`);
    const tokens = await page.evaluate(() => JSON.parse(localStorage.getItem('tally.tokens') ?? '{}'));
    const me = await (await fetch(`${base}/api/v1/me`, { headers: { Authorization: `Bearer ${tokens.access_token}` } })).json();
    expect(me.is_operator).toBe(true);
    expect(fs.existsSync(file)).toBe(false);

    // Used up: a second try, in another browser, is refused.
    const other = await browser.newContext({ baseURL: base });
    const again = await other.newPage();
    await again.goto(`/setup#${token}`);
    await again.getByTestId('email').fill('second@setup.example.com');
    await again.getByTestId('password').fill('a long operator password');
    await again.getByTestId('submit').click();
    await expect(again.getByTestId('error')).toContainText('setup token is unknown, expired or used');
    await other.close();
    await context.close();
  } finally {
    server.kill();
  }
});

test('a new server restores a backup uploaded on its setup page, whole or not at all', async ({ browser }) => {
  // The backup: an install with one operator, backed up on the command line.
  const source = fs.mkdtempSync(path.join(os.tmpdir(), 'tally-e2e-source-'));
  const passwordFile = path.join(source, 'operator-password');
  fs.writeFileSync(passwordFile, 'a long restored password\n');
  const cli = { env: { ...process.env, TALLY_AUTH__ARGON2_MEMORY_KIB: '1024', TALLY_AUTH__ARGON2_ITERATIONS: '1' } };
  execFileSync(bin, ['admin', '--data-dir', source, 'create-operator', '--email', 'moved@setup.example.com', '--password-file', passwordFile], cli);
  const archive = path.join(source, 'moved.tar');
  execFileSync(bin, ['backup', '--data-dir', source, 'create', '--out', archive], cli);
  const damaged = path.join(source, 'damaged.tar');
  fs.writeFileSync(damaged, fs.readFileSync(archive).subarray(0, 3000));

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tally-e2e-restore-'));
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const server: ChildProcess = spawn(
    bin,
    ['serve', '--bind', `127.0.0.1:${port}`, '--data-dir', dir, '--static-dir', staticDir],
    { stdio: 'ignore' },
  );
  try {
    await waitReady(base);
    const token = fs.readFileSync(path.join(dir, 'setup-token'), 'utf8').trim();
    const context = await browser.newContext({ baseURL: base, viewport: { width: 1300, height: 850 } });
    const page = await context.newPage();
    await page.goto(`/setup#${token}`);
    await page.getByTestId('restore-backup').locator('summary').click();

    // A damaged file is refused with the reason, and nothing changes.
    await page.getByTestId('restore-file').setInputFiles(damaged);
    await page.getByTestId('restore-submit').click();
    await expect(page.getByTestId('error')).toContainText('damaged');
    expect(fs.existsSync(path.join(dir, 'setup-token'))).toBe(true);

    await page.getByTestId('restore-file').setInputFiles(archive);
    await page.getByTestId('restore-submit').click();
    await expect(page.getByTestId('restore-result')).toContainText('Restored');
    await expect(page.getByTestId('restore-result')).toContainText('sqlite backup');
    await expect(page.getByTestId('error')).toHaveCount(0);
    await page.screenshot({ path: test.info().outputPath('restored.png'), fullPage: true });
    expect(fs.existsSync(path.join(dir, 'setup-token'))).toBe(false);

    // The backup's operator signs in here.
    await page.getByTestId('restore-result').getByRole('link', { name: 'Log in' }).click();
    await page.getByTestId('email').fill('moved@setup.example.com');
    await page.getByTestId('password').fill('a long restored password');
    await page.getByTestId('submit').click();
    await expect(page).toHaveURL(`${base}/`);
    const tokens = await page.evaluate(() => JSON.parse(localStorage.getItem('tally.tokens') ?? '{}'));
    const me = await (await fetch(`${base}/api/v1/me`, { headers: { Authorization: `Bearer ${tokens.access_token}` } })).json();
    expect(me.is_operator).toBe(true);
    await context.close();
  } finally {
    server.kill();
  }
});
