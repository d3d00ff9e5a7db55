import { expect, Page, test } from '@playwright/test';
import { operatorAuth } from '../operator';
import { createHmac } from 'node:crypto';
import * as fs from 'node:fs';

const password = 'correct horse battery';

async function signUp(page: Page, name: string) {
  await page.goto('/signup');
  await page.getByTestId('email').fill(`${name}-${Date.now()}-${Math.floor(Math.random() * 1e6)}@example.com`);
  await page.getByTestId('password').fill(password);
  await page.getByTestId('submit').click();
  await expect(page.getByTestId('empty-state')).toBeVisible();
}

/** `1,234.500000 credits` (an exact amount, as in a balance's title) as micro-credits. */
function micros(text: string | null): number {
  const [whole, frac = ''] = (text ?? '').replace(/ credits$/, '').replace(/,/g, '').split('.');
  return Number(whole) * 1_000_000 + Number(frac.padEnd(6, '0'));
}

/** Delivers a deposit notification as the payment processor does: timestamped HMAC-SHA256. */
async function notifyDeposit(page: Page, body: object) {
  const secret = process.env.TALLY_E2E_DEPOSIT_SECRET ?? '';
  expect(secret, 'playwright.config.ts sets the deposit secret').not.toBe('');
  const text = JSON.stringify(body);
  const timestamp = String(Math.floor(Date.now() / 1000));
  const signature = createHmac('sha256', secret).update(`${timestamp}.${text}`).digest('hex');
  return page.request.post('/api/v1/billing/deposits', {
    headers: {
      'Content-Type': 'application/json',
      'X-Tally-Timestamp': timestamp,
      'X-Tally-Signature': `sha256=${signature}`,
    },
    data: text,
  });
}

test('a top-up paid through the deposit endpoint shows as paid, in the balance and in the invoice', async ({
  page,
}) => {
  await signUp(page, 'finance');
  await page.locator('nav.sidebar').getByRole('link', { name: 'Finance' }).click();
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('Finance');
  const balance = page.getByTestId('balance');
  await expect(balance).toHaveText(/credits$/);
  const before = micros(await balance.getAttribute('title'));
  await expect(page.getByTestId('no-intents')).toBeVisible();

  // Before TGE only the stablecoins are offered.
  await expect(page.getByTestId('topup-currency').locator('option')).toHaveText(['USDC', 'USDT']);
  await page.getByTestId('topup-currency').selectOption('USDC');
  await page.getByTestId('topup-amount').fill('25');
  await page.getByTestId('topup-submit').click();
  const current = page.getByTestId('current-intent');
  await expect(current.getByTestId('intent-status')).toHaveText('waiting for payment');
  await expect(current.getByTestId('intent-amount')).toHaveText('25.00 USDC');
  const intentId = (await current.getByTestId('intent-id').textContent()) ?? '';
  expect(intentId).toMatch(/^pi_/);
  await expect(page.getByTestId('intent-row')).toHaveCount(1);
  await expect(page.getByTestId('intent-row')).toContainText('waiting for payment');

  // The processor confirms the deposit; the page notices by itself.
  const deposit = { external_tx_id: `0xe2e${Date.now()}`, intent_id: intentId, currency: 'USDC', amount_units: 25_000_000 };
  const res = await notifyDeposit(page, deposit);
  expect(res.status()).toBe(200);
  expect((await res.json()).duplicate).toBe(false);

  await expect(current.getByTestId('intent-status')).toHaveText('paid');
  await expect(current.getByTestId('intent-credited')).toContainText('25.00 credits credited');
  await expect.poll(async () => micros(await balance.getAttribute('title'))).toBe(before + 25_000_000);
  await expect(page.getByTestId('intent-row')).toContainText('paid');
  await expect(page.getByTestId('intent-row')).toContainText('25.00 credits');

  // The same transaction again credits nothing more.
  const again = await notifyDeposit(page, deposit);
  expect(again.status()).toBe(200);
  expect((await again.json()).duplicate).toBe(true);

  // The running month's statement lists the top-up and closes at the balance.
  const month = new Date().toISOString().slice(0, 7);
  const row = page.locator(`[data-testid="statement-row"][data-month="${month}"]`);
  await expect(row).toContainText('running');
  await expect(row.getByTestId('statement-topups')).toHaveText('25.000000');
  expect(micros(await row.getByTestId('statement-closing').textContent())).toBe(before + 25_000_000);

  // Downloads carry the session: the CSV is the month's statement.
  const [download] = await Promise.all([page.waitForEvent('download'), row.getByTestId('download-csv').click()]);
  expect(download.suggestedFilename()).toBe(`tally-statement-${month}-test.csv`);
  const csv = fs.readFileSync((await download.path()) ?? '', 'utf8');
  expect(csv).toContain('topups');
  expect(csv).toContain('25000000');
});

test('a low-balance threshold above the balance shows the banner until it is removed', async ({ page }) => {
  await signUp(page, 'alerts');
  await page.goto('/finance');
  const balance = page.getByTestId('balance');
  await expect(balance).toHaveText(/credits$/);
  const now = micros(await balance.getAttribute('title'));
  await expect(page.getByTestId('alert-current')).toContainText('No threshold is set for test credits');
  await expect(page.getByTestId('low-balance-banner')).toHaveCount(0);

  const threshold = (now + 100_000_000) / 1_000_000;
  await page.getByTestId('alert-threshold').fill(String(threshold));
  await page.getByTestId('alert-save').click();
  await expect(page.getByTestId('alert-settings').getByTestId('outcome')).toContainText('The test alert is set');
  await expect(page.getByTestId('alert-current')).toContainText('below now');
  await expect(page.getByTestId('low-balance-banner')).toContainText('below the alert threshold');

  await page.getByTestId('alert-clear').click();
  await expect(page.getByTestId('alert-current')).toContainText('No threshold is set');
  await expect(page.getByTestId('low-balance-banner')).toHaveCount(0);
});

test('a viewer sees the balance, the alert and its banner, but no top-ups, invoices or settings', async ({
  page,
  request,
}) => {
  // An owner whose test balance is below the alert threshold it set.
  const ownerEmail = `owner-${Date.now()}-${Math.floor(Math.random() * 1e6)}@example.com`;
  const signup = await request.post('/api/v1/auth/signup', { data: { email: ownerEmail, password } });
  expect(signup.status()).toBe(201);
  const auth = { Authorization: `Bearer ${(await signup.json()).access_token}` };
  const ns = (await (await request.get('/api/v1/me', { headers: auth })).json()).namespaces[0].id;
  const alert = await request.put(`/api/v1/namespaces/${ns}/credits/alerts/test`, {
    headers: auth,
    data: { threshold_micros: 1_000_000_000 },
  });
  expect(alert.status()).toBe(200);

  // The viewer signs up, is added to the owner's namespace and switches to it.
  await signUp(page, 'viewer');
  const viewerEmail = (await page.getByTestId('account-email').textContent()) ?? '';
  const invited = await request.post(`/api/v1/namespaces/${ns}/members`, {
    headers: auth,
    data: { email: viewerEmail, role: 'viewer' },
  });
  expect(invited.status()).toBe(201);
  // Membership comes only from accepting the invitation's token while signed in.
  const viewerTokens = await page.evaluate(() => JSON.parse(localStorage.getItem('tally.tokens') ?? '{}'));
  const accepted = await request.post('/api/v1/invitations/accept', {
    headers: { Authorization: `Bearer ${viewerTokens.access_token}` },
    data: { token: (await invited.json()).token },
  });
  expect(accepted.ok()).toBe(true);
  await page.reload();
  await page.getByTestId('namespace-switcher').selectOption({ label: 'Personal (viewer)' });
  await page.locator('nav.sidebar').getByRole('link', { name: 'Finance' }).click();

  await expect(page.getByTestId('balance')).toHaveText(/credits$/);
  await expect(page.getByTestId('low-balance-banner')).toContainText('below the alert threshold of 1,000.00 credits');
  await expect(page.getByTestId('alert-current')).toContainText('below now');
  await expect(page.getByTestId('alert-readonly')).toBeVisible();
  await expect(page.getByTestId('billing-readonly')).toBeVisible();
  await expect(page.getByTestId('alert-threshold')).toHaveCount(0);
  await expect(page.getByTestId('topup')).toHaveCount(0);
  await expect(page.getByTestId('statements')).toHaveCount(0);
  await expect(page.getByTestId('auto-topup-settings')).toHaveCount(0);
});

test('a subscription starts when its first intent is paid, and the spending log filters by kind', async ({ page }) => {
  await signUp(page, 'subscriber');
  await page.goto('/finance');
  const subscriptions = page.getByTestId('subscriptions');
  await expect(subscriptions.getByTestId('package')).toHaveCount(2);
  await subscriptions.getByTestId('package').filter({ hasText: 'Starter' }).getByTestId('subscribe').click();
  await expect(subscriptions.getByTestId('outcome')).toContainText('Subscribed to starter');
  await expect(subscriptions.getByTestId('subscription-current')).toContainText('awaiting payment');
  const intentId = (await subscriptions.getByTestId('subscription-intent').textContent()) ?? '';
  expect(intentId).toMatch(/^pi_/);

  const res = await notifyDeposit(page, {
    external_tx_id: `0xsub${Date.now()}`,
    intent_id: intentId,
    currency: 'USDC',
    amount_units: 100_000_000,
  });
  expect(res.status()).toBe(200);
  expect((await res.json()).deposit.credited_micros).toBe(110_000_000);
  await page.reload();
  await expect(subscriptions.getByTestId('subscription-current')).toContainText('active');
  await expect(subscriptions.getByTestId('subscription-intent')).toHaveCount(0);

  // The spending log: every entry, then only the subscription's, then only usage (none yet).
  const log = page.getByTestId('spending-log');
  await expect(log.getByTestId('ledger-row').first()).toBeVisible();
  const all = await log.getByTestId('ledger-row').count();
  expect(all).toBeGreaterThanOrEqual(2);
  await log.getByTestId('filter-kind').selectOption('subscription');
  await expect(log.getByTestId('ledger-row')).toHaveCount(1);
  await expect(log.getByTestId('ledger-row')).toContainText('110.00 credits');
  await log.getByTestId('filter-kind').selectOption('usage');
  await expect(log.getByTestId('no-ledger')).toBeVisible();

  await subscriptions.getByTestId('subscription-cancel').click();
  await expect(subscriptions.getByTestId('outcome')).toContainText('Cancelled: it ends on');
  await expect(subscriptions.getByTestId('subscription-current')).toContainText('ends with the period');
});

test('a seller below its critical balance sees the paused banner, which leads to Finance', async ({ page, request }) => {
  const operator = await operatorAuth(request);

  await signUp(page, 'seller');
  await expect(page.getByTestId('paused-banner')).toHaveCount(0);
  const me = await page.evaluate(() => JSON.parse(localStorage.getItem('tally.tokens') ?? '{}'));
  const sellerAuth = { Authorization: `Bearer ${me.access_token}` };
  const ns = (await (await request.get('/api/v1/me', { headers: sellerAuth })).json()).namespaces[0].id;
  const created = await request.post('/api/v1/admin/catalog', {
    headers: { Authorization: operator },
    data: {
      slug: `sold-${Date.now()}`,
      name: 'Sold API',
      protocol: 'http',
      upstreams: [{ url: 'http://127.0.0.1:9' }],
      pricing: { per_request_micros: 1000 },
      owner_namespace_id: ns,
    },
  });
  expect(created.status()).toBe(201);

  await page.reload();
  const banner = page.getByTestId('paused-banner');
  await expect(banner).toContainText('API serving paused — low balance');
  await banner.getByRole('link').click();
  await expect(page).toHaveURL(/\/finance$/);
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('Finance');
  await expect(banner).toBeVisible();
});
