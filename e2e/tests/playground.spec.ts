// The whole test-mode journey of a new user (K1, G1, G4, G5, C3): create a test key on the Keys
// page, call /v1/chat/completions with the unmodified OpenAI SDK and that key, find the call and
// its cost in the Playground, send one from the Playground, and see the spend on the Credits page,
// then top the test balance up from the faucet.
import { expect, Page, test } from '@playwright/test';
import OpenAI from 'openai';

const MODEL = 'tally-sandbox';

function uniqueEmail(name: string): string {
  return `${name}-${Date.now()}-${Math.floor(Math.random() * 1e6)}@example.com`;
}

function sidebar(page: Page, name: string) {
  return page.locator('nav.sidebar').getByRole('link', { name: new RegExp(`^${name}`) });
}

/** "9.999 credits" and the like, as a number. */
function credits(text: string | null): number {
  const match = (text ?? '').replace(/,/g, '').match(/-?\d+(\.\d+)?/);
  expect(match, `no amount in '${text}'`).not.toBeNull();
  return Number(match![0]);
}

test('a key made in the dashboard calls the gateway with the OpenAI SDK; the Playground and Credits show the call and its spend', async ({
  page,
  baseURL,
}) => {
  await page.goto('/signup');
  await page.getByTestId('email').fill(uniqueEmail('playground'));
  await page.getByTestId('password').fill('correct horse battery');
  await page.getByTestId('submit').click();
  await expect(page.getByTestId('empty-state')).toBeVisible();

  // A new namespace starts with welcome test credits.
  await sidebar(page, 'Credits').click();
  const balance = page.getByTestId('balance');
  await expect(balance).toContainText(/\d/);
  const before = credits(await balance.getAttribute('title'));
  expect(before).toBeGreaterThan(0);

  await sidebar(page, 'Keys').click();
  await page.getByTestId('key-name').fill('Playground key');
  await page.getByTestId('key-create').click();
  const secretCell = page.getByTestId('key-secret');
  await expect(secretCell).toHaveText(/^tk_test_[A-Za-z0-9]{40}$/);
  const secret = (await secretCell.textContent()) ?? '';

  // An unmodified OpenAI client, pointed at the gateway.
  const client = new OpenAI({ baseURL: `${baseURL}/v1`, apiKey: secret, maxRetries: 0, timeout: 20_000 });
  const completion = await client.chat.completions.create({
    model: MODEL,
    messages: [{ role: 'user', content: 'Hello from the SDK' }],
    max_tokens: 32,
  });
  expect(completion.choices[0].message.content).toBeTruthy();
  expect(completion.usage?.total_tokens ?? 0).toBeGreaterThan(0);

  // The SDK's call is listed under the key in the Playground, with its cost.
  await sidebar(page, 'Playground').click();
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('Playground');
  await expect(page.getByTestId('playground-key')).toContainText('Playground key');
  const recent = page.getByTestId('recent-call');
  await expect(recent).toHaveCount(1);
  await expect(recent.first()).toContainText('/v1/chat/completions');
  await expect(recent.first()).toContainText(MODEL);
  await expect(recent.first()).toContainText('200');
  await expect(recent.first()).toContainText(`${completion.usage!.prompt_tokens} / ${completion.usage!.completion_tokens}`);

  // A call from the Playground itself: the server makes it with the chosen key.
  await expect(page.getByTestId('playground-target')).toContainText(MODEL);
  await page.getByTestId('playground-send').click();
  await expect(page.getByTestId('playground-status')).toHaveText('200');
  await expect(page.getByTestId('playground-assistant')).toBeVisible();
  await expect(page.getByTestId('playground-tokens')).toHaveText(/^[1-9]\d* \/ [1-9]\d*$/);
  const cost = credits(await page.getByTestId('playground-cost').textContent());
  expect(cost).toBeGreaterThan(0);
  await expect(recent).toHaveCount(2);
  // Snippets show the key's placeholder, never its secret.
  await expect(page.getByTestId('snippet-curl')).toContainText('$TALLY_KEY');
  await expect(page.getByTestId('playground-snippets')).not.toContainText(secret);

  // Both calls were paid from the test balance, and the ledger shows them.
  await sidebar(page, 'Credits').click();
  await expect
    .poll(async () => credits(await balance.getAttribute('title')))
    .toBeLessThan(before);
  await expect(page.getByTestId('ledger-row').first()).toBeVisible();
  const spent = credits(await balance.getAttribute('title'));

  // The faucet tops the test balance up.
  await page.getByTestId('faucet').click();
  await expect(page.getByTestId('faucet-result')).toBeVisible();
  await expect.poll(async () => credits(await balance.getAttribute('title'))).toBeGreaterThan(spent);

  // With calls recorded, the dashboard no longer says the namespace has no traffic (D6);
  // the live environment still has none.
  await sidebar(page, 'Dashboard').click();
  await expect(page.getByTestId('kpi-balance')).toBeVisible();
  await expect(page.getByTestId('empty-state')).toHaveCount(0);
  await page.getByTestId('env-live').click();
  await expect(page.getByTestId('empty-state')).toBeVisible();
});
