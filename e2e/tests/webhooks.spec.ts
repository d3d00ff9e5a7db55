import { expect, test } from '@playwright/test';
import * as http from 'node:http';
import { AddressInfo } from 'node:net';

// Webhooks (W1, W2) in the browser: an endpoint on loopback that fails once is added, sent a
// test event, retried until it accepts, its attempts read, the event replayed with the same id,
// and the endpoint disabled.

type Hit = { id: string; signature: string; status: number };

function receiver(): Promise<{ url: string; hits: Hit[]; close: () => void }> {
  const hits: Hit[] = [];
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      const status = hits.length === 0 ? 500 : 200;
      hits.push({ id: String(req.headers['webhook-id']), signature: String(req.headers['webhook-signature']), status });
      res.writeHead(status, { 'content-type': 'text/plain' });
      res.end(status === 200 ? 'thanks' : 'try later');
    });
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as AddressInfo).port;
      resolve({ url: `http://127.0.0.1:${port}/tally`, hits, close: () => server.close() });
    });
  });
}

test('an endpoint is added, tested through a failure, its attempts read, replayed and disabled', async ({ page }) => {
  test.setTimeout(90_000);
  const rx = await receiver();
  try {
    const email = `hooks-${Date.now()}-${Math.floor(Math.random() * 1e6)}@example.com`;
    await page.goto('/signup');
    await page.getByTestId('email').fill(email);
    await page.getByTestId('password').fill('correct horse battery');
    await page.getByTestId('submit').click();
    await expect(page.getByTestId('empty-state')).toBeVisible();

    await page.locator('nav.sidebar').getByRole('link', { name: 'Webhooks' }).click();
    await expect(page.getByTestId('webhooks-empty')).toBeVisible();
    await expect(page.getByTestId('deliveries-empty')).toBeVisible();
    await page.getByTestId('webhook-url').fill(rx.url);
    await page.getByTestId('webhook-description').fill('Ops alerts');
    await page.getByTestId('webhook-type-webhook.test').check();
    await page.getByTestId('webhook-type-credits.low_balance').check();
    await page.getByTestId('webhook-create').click();
    await expect(page.getByTestId('webhook-secret')).toHaveText(/^whsec_[A-Za-z0-9+/]{43}=$/);
    const row = page.getByTestId('webhook-row');
    await expect(row).toHaveCount(1);
    await expect(row).toContainText(rx.url);
    await expect(row).toContainText('credits.low_balance, webhook.test');
    await expect(row.getByTestId('webhook-state')).toHaveText('enabled');

    // The first attempt gets 500; the retry, five seconds later, is accepted.
    await page.getByTestId('webhook-test').click();
    await expect(page.getByTestId('webhook-notice')).toContainText('Test event');
    const delivery = page.getByTestId('delivery-row');
    await expect(delivery).toHaveCount(1);
    await expect(delivery).toContainText('succeeded', { timeout: 30_000 });
    await expect(delivery.getByTestId('delivery-attempts')).toHaveText('2');
    expect(rx.hits.map((h) => h.status)).toEqual([500, 200]);
    expect(rx.hits[0].id).toBe(rx.hits[1].id);
    expect(rx.hits[0].signature).toMatch(/^v1,/);

    await delivery.getByTestId('delivery-open').click();
    const detail = page.getByTestId('delivery-detail');
    await expect(detail.getByTestId('attempt-row')).toHaveCount(2);
    await expect(detail.getByTestId('attempt-row').first()).toContainText('try later');
    await expect(detail.getByTestId('delivery-message-id')).toHaveText(rx.hits[0].id);
    for (const [label, size] of [['desktop', { width: 1440, height: 1000 }], ['phone', { width: 390, height: 844 }]] as const) {
      await page.setViewportSize(size);
      await page.screenshot({ path: test.info().outputPath(`webhooks-${label}.png`), fullPage: true });
    }
    await page.setViewportSize({ width: 1440, height: 1000 });

    // A replay sends the same event id again, as a new delivery.
    await delivery.getByTestId('delivery-replay').click();
    await expect(page.getByTestId('delivery-row')).toHaveCount(2);
    await expect(page.getByTestId('delivery-row').first()).toContainText('succeeded', { timeout: 15_000 });
    expect(rx.hits.length).toBe(3);
    expect(rx.hits[2].id).toBe(rx.hits[0].id);

    await page.getByTestId('webhook-toggle').click();
    await expect(row.getByTestId('webhook-state')).toHaveText('disabled');
    await expect(page.getByTestId('webhook-test')).toBeDisabled();
  } finally {
    rx.close();
  }
});
