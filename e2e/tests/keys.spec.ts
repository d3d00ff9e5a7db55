import { expect, test } from '@playwright/test';

test('a key is created with its secret shown once, then rotated and revoked', async ({ page }) => {
  const email = `keys-${Date.now()}-${Math.floor(Math.random() * 1e6)}@example.com`;
  await page.goto('/signup');
  await page.getByTestId('email').fill(email);
  await page.getByTestId('password').fill('correct horse battery');
  await page.getByTestId('submit').click();
  await expect(page.getByTestId('empty-state')).toBeVisible();

  await page.locator('nav.sidebar').getByRole('link', { name: 'Keys' }).click();
  await expect(page.getByTestId('no-keys')).toBeVisible();
  await page.getByTestId('key-name').fill('CI runner');
  await page.getByTestId('key-labels').fill('ci, nightly');
  await page.getByTestId('key-rpm').fill('60');
  await page.getByTestId('key-create').click();

  const secret = page.getByTestId('key-secret');
  await expect(secret).toHaveText(/^tk_test_[A-Za-z0-9]{40}$/);
  const first = (await secret.textContent()) ?? '';
  const row = page.getByTestId('key-row');
  await expect(row).toHaveCount(1);
  await expect(row).toContainText('CI runner');
  await expect(row).toContainText(`tk_test_…${first.slice(-4)}`);
  await expect(row).toContainText('nightly');
  await expect(row).toContainText('active');

  // The list, as the API returns it, never contains the secret.
  const token = await page.evaluate(() => JSON.parse(localStorage.getItem('tally.tokens') ?? '{}').access_token);
  const me = await (await page.request.get('/api/v1/me', { headers: { Authorization: `Bearer ${token}` } })).json();
  const ns = me.namespaces[0].id;
  const listed = await page.request.get(`/api/v1/namespaces/${ns}/keys`, { headers: { Authorization: `Bearer ${token}` } });
  expect(await listed.text()).not.toContain(first.slice(8));

  // Rotation shows a new secret once.
  await page.getByTestId('key-rotate').click();
  await expect(secret).not.toHaveText(first);
  await expect(secret).toHaveText(/^tk_test_/);

  // Live keys are listed separately.
  await page.getByTestId('env-live').click();
  await expect(page.getByTestId('no-keys')).toBeVisible();
  await page.getByTestId('env-test').click();
  await expect(row).toHaveCount(1);

  await page.getByTestId('key-revoke').click();
  await expect(row).toContainText('revoked');
  await page.getByTestId('key-status-filter').selectOption('active');
  await expect(page.getByTestId('no-keys')).toBeVisible();
  await page.getByTestId('key-status-filter').selectOption('revoked');
  await expect(row).toHaveCount(1);

  await page.getByRole('button', { name: 'History' }).click();
  const audit = page.getByTestId('key-audit');
  for (const action of ['created', 'rotated', 'revoked']) {
    await expect(audit).toContainText(action);
  }
  await expect(audit).toContainText(email);
});
