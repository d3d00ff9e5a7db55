import { expect, test } from '@playwright/test';
import * as fs from 'node:fs';
import { OPERATOR_EMAIL, operatorPassword } from '../operator';

test('an operator takes, downloads and deletes a backup on Settings › Backup', async ({ page }) => {
  await page.goto('/login');
  await page.getByTestId('email').fill(OPERATOR_EMAIL);
  await page.getByTestId('password').fill(operatorPassword());
  await page.getByTestId('submit').click();
  await expect(page.getByTestId('account-email')).toHaveText(OPERATOR_EMAIL);

  // Reached from Settings.
  await page.locator('nav.sidebar').getByRole('link', { name: 'Settings' }).click();
  await page.getByTestId('backup-link').click();
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('Backup');
  await expect(page.getByTestId('backup-schedule')).toContainText('No schedule');
  const rows = page.getByTestId('backup-row');
  const before = await rows.count();

  // The note says what leaving secrets out means, and what including them does.
  await expect(page.getByTestId('backup-secrets-note')).toContainText('signs everyone out');
  await page.getByTestId('backup-secrets').check();
  await expect(page.getByTestId('backup-secrets-note')).toContainText('keep it as safe');
  await page.getByTestId('backup-secrets').uncheck();

  await page.getByTestId('backup-create').click();
  await expect(page.getByTestId('backup-notice')).toContainText(/Backup tally-backup-\d{8}-\d{6}-\d{3}\.tar taken/);
  await expect(rows).toHaveCount(before + 1);
  await expect(page.getByTestId('backup-last')).not.toHaveText('never');
  const newest = rows.first();
  await expect(newest).toContainText('no');

  // The download is the archive: a tar whose first entry is the manifest.
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    newest.getByTestId('backup-download').click(),
  ]);
  expect(download.suggestedFilename()).toMatch(/^tally-backup-\d{8}-\d{6}-\d{3}\.tar$/);
  const file = await download.path();
  const bytes = fs.readFileSync(file!);
  expect(bytes.subarray(0, 13).toString()).toBe('manifest.json');
  const manifest = JSON.parse(
    bytes.subarray(512, 512 + Number.parseInt(bytes.subarray(124, 136).toString().trim(), 8)).toString(),
  );
  expect(manifest.format).toBe(1);
  expect(manifest.secrets_included).toBe(false);
  expect(manifest.tables.map((t: { name: string }) => t.name)).toContain('ledger_entries');

  await newest.getByTestId('backup-delete').click();
  await expect(page.getByTestId('backup-notice')).toContainText('deleted');
  await expect(rows).toHaveCount(before);
  // The last success stays on record after the file is gone.
  await expect(page.getByTestId('backup-last')).not.toHaveText('never');
});

test('a member who is not an operator is told who takes backups', async ({ page }) => {
  await page.goto('/signup');
  await page.getByTestId('email').fill(`backup-${Date.now()}@example.com`);
  await page.getByTestId('password').fill('correct horse battery');
  await page.getByTestId('submit').click();
  await expect(page.getByTestId('empty-state')).toBeVisible();
  await page.goto('/settings/backup');
  await expect(page.getByTestId('backup-not-operator')).toContainText('operators');
  await expect(page.getByTestId('backup-create')).toHaveCount(0);
});
