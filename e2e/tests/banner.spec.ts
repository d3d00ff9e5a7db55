import { expect, Page, test } from '@playwright/test';
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

// The backup-overdue banner (D5) as a server ages: this spec runs its own server on its own
// SQLite directory, restarted with TALLY_TEST_CLOCK_OFFSET_SECS to stand 31 and then 62
// days later, since the shared e2e server's clock cannot move.
const root = path.resolve(__dirname, '../..');
const bin = path.resolve(process.env.TALLY_BIN ?? path.join(root, 'target/debug/tally'));
const staticDir = path.resolve(process.env.TALLY_STATIC_DIR ?? path.join(root, 'frontend/dist'));
const DAY = 86_400;
const password = 'correct horse battery';
const operatorPassword = 'operator horse battery';

function freePort(): number {
  return Number(
    execFileSync(process.execPath, [
      '-e',
      "const s = require('node:net').createServer(); s.listen(0, '127.0.0.1', () => { process.stdout.write(String(s.address().port)); s.close(); });",
    ]).toString(),
  );
}

/** `tally serve` on `dataDir`, `offsetDays` days ahead; resolves once it is ready. */
async function serve(dataDir: string, offsetDays: number): Promise<{ base: string; child: ChildProcess }> {
  const port = freePort();
  const child = spawn(
    bin,
    ['serve', '--bind', `127.0.0.1:${port}`, '--data-dir', dataDir, '--static-dir', staticDir],
    {
      env: {
        ...process.env,
        TALLY_TEST_CLOCK_OFFSET_SECS: String(offsetDays * DAY),
        TALLY_AUTH__ARGON2_MEMORY_KIB: '1024',
        TALLY_AUTH__ARGON2_ITERATIONS: '1',
        RUST_LOG: 'warn',
      },
      stdio: 'ignore',
    },
  );
  const base = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 300; i++) {
    try {
      if ((await fetch(`${base}/readyz`)).ok) return { base, child };
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('the banner spec server did not start');
}

async function stop(child: ChildProcess) {
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await exited;
}

async function logIn(page: Page, base: string, email: string, secret: string) {
  await page.goto(`${base}/login`);
  await page.getByTestId('email').fill(email);
  await page.getByTestId('password').fill(secret);
  await page.getByTestId('submit').click();
  await expect(page.getByTestId('account-email')).toHaveText(email);
}

test('the backup-overdue banner appears as the server ages without a backup and goes with one', async ({
  browser,
}) => {
  test.setTimeout(90_000);
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tally-banner-'));
  const passwordFile = path.join(dataDir, 'operator-password');
  fs.writeFileSync(passwordFile, `${operatorPassword}\n`, { mode: 0o600 });
  execFileSync(bin, [
    'admin', '--data-dir', dataDir, 'create-operator', '--email', 'op@banner.example.com',
    '--password-file', passwordFile,
  ], { env: { ...process.env, TALLY_AUTH__ARGON2_MEMORY_KIB: '1024', TALLY_AUTH__ARGON2_ITERATIONS: '1', RUST_LOG: 'warn' } });
  const owner = `owner-${Date.now()}@banner.example.com`;

  // Day 0: a new server needs no backup yet.
  let server = await serve(dataDir, 0);
  let page = await browser.newPage();
  await page.goto(`${server.base}/signup`);
  await page.getByTestId('email').fill(owner);
  await page.getByTestId('password').fill(password);
  await page.getByTestId('submit').click();
  await expect(page.getByTestId('empty-state')).toBeVisible();
  await expect(page.getByTestId('backup-banner')).toHaveCount(0);
  await page.close();
  await stop(server.child);

  // Day 31, no backup: the owner is told, and the banner leads to Settings › Backup.
  server = await serve(dataDir, 31);
  page = await browser.newPage();
  await logIn(page, server.base, owner, password);
  const banner = page.getByTestId('backup-banner');
  await expect(banner).toContainText('Backup overdue');
  await expect(banner).toContainText('31 days');
  await banner.getByRole('link').click();
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('Backup');

  // The operator takes one; the owner's banner goes.
  const operator = await browser.newPage();
  await logIn(operator, server.base, 'op@banner.example.com', operatorPassword);
  await operator.goto(`${server.base}/settings/backup`);
  await operator.getByTestId('backup-create').click();
  await expect(operator.getByTestId('backup-notice')).toContainText('taken');
  await operator.close();
  await page.goto(`${server.base}/`);
  await expect(page.getByTestId('account-email')).toHaveText(owner);
  await expect(page.getByTestId('backup-banner')).toHaveCount(0);
  await page.close();
  await stop(server.child);

  // Day 62: that backup is 31 days old; the banner is back.
  server = await serve(dataDir, 62);
  page = await browser.newPage();
  await logIn(page, server.base, owner, password);
  await expect(page.getByTestId('backup-banner')).toContainText('last backup is 31 days old');
  await page.close();
  await stop(server.child);
});
