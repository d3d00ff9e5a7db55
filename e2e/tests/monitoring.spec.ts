// The dashboard (D1–D4, D8) and the Monitoring page (M1–M5) after demo-like traffic: calls of
// every kind made through the gateway with the test's own keys (sync, stream, completions,
// embeddings, several client ids, refusals), then what the pages show is compared with what the
// API reports, the 30-second refresh is watched happening in place, and the request log's search,
// live tail and export are used.
import { APIRequestContext, expect, Page, test } from '@playwright/test';
import * as fs from 'node:fs';

/** Micro-credits as the dashboard shows them (`tally_common::format::Micros`): two decimals from
 * one credit up, the significant digits below. */
function readable(micros: number): string {
  if (micros === 0) return '0';
  const sign = micros < 0 ? '-' : '';
  const abs = Math.abs(micros);
  if (abs >= 1_000_000) {
    const cents = Math.floor((abs + 5_000) / 10_000);
    return `${sign}${Math.floor(cents / 100).toLocaleString('en-US')}.${String(cents % 100).padStart(2, '0')}`;
  }
  return `${sign}0.${String(abs).padStart(6, '0').replace(/0+$/, '')}`;
}

const password = 'correct horse battery';
const MODEL = 'tally-sandbox';
const CLIENTS = ['web-frontend', 'ios-app', 'nightly-batch'];

type Session = { token: string; ns: string };

/** Signs up in the browser and reads the session the dashboard stored. */
async function signUp(page: Page, name: string): Promise<Session> {
  await page.goto('/signup');
  await page.getByTestId('email').fill(`${name}-${Date.now()}-${Math.floor(Math.random() * 1e6)}@example.com`);
  await page.getByTestId('password').fill(password);
  await page.getByTestId('submit').click();
  await expect(page.getByTestId('empty-state')).toBeVisible();
  const stored = await page.evaluate(() => ({
    tokens: localStorage.getItem('tally.tokens'),
    ns: localStorage.getItem('tally.namespace'),
  }));
  const token = JSON.parse(stored.tokens ?? '{}').access_token as string;
  const ns = JSON.parse(stored.ns ?? '""') as string;
  expect(token).toBeTruthy();
  expect(ns).toBeTruthy();
  return { token, ns };
}

async function rest(request: APIRequestContext, s: Session, method: 'GET' | 'POST', path: string, data?: object) {
  const res = await request.fetch(path, {
    method,
    headers: { Authorization: `Bearer ${s.token}` },
    data,
  });
  expect(res.ok(), `${method} ${path}: ${res.status()} ${await res.text()}`).toBeTruthy();
  return res.json();
}

async function createKey(request: APIRequestContext, s: Session, name: string, extra: object = {}) {
  const created = await rest(request, s, 'POST', `/api/v1/namespaces/${s.ns}/keys`, {
    name,
    environment: 'test',
    ...extra,
  });
  return created.secret as string;
}

async function call(request: APIRequestContext, secret: string, path: string, body: object, clientId: string) {
  const res = await request.post(path, {
    headers: { Authorization: `Bearer ${secret}`, 'X-Client-Id': clientId },
    data: body,
  });
  await res.body(); // streams are recorded when they finish
  return res.status();
}

/** A small version of `tally demo`'s mix: successes of every kind and a few refusals. */
async function demoTraffic(request: APIRequestContext, s: Session, rounds: number) {
  const main = await createKey(request, s, `traffic ${Date.now()}`);
  const limited = await createKey(request, s, `limited ${Date.now()}`, { limits: { requests_per_second: 1 } });
  const statuses: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const client = CLIENTS[i % CLIENTS.length];
    const messages = [{ role: 'user', content: `Question ${i} from ${client}` }];
    statuses.push(await call(request, main, '/v1/chat/completions', { model: MODEL, messages, max_tokens: 24 }, client));
    statuses.push(
      await call(request, main, '/v1/chat/completions', { model: MODEL, messages, stream: true, max_tokens: 12 }, client),
    );
    statuses.push(await call(request, main, '/v1/completions', { model: MODEL, prompt: `Prompt ${i}`, max_tokens: 8 }, client));
    statuses.push(await call(request, main, '/v1/embeddings', { model: MODEL, input: [`text ${i}`] }, client));
  }
  // Refusals that are recorded: more than the key's rate, more than the balance can hold.
  const burst = await Promise.all(
    [0, 1, 2].map(() => call(request, limited, '/v1/chat/completions', { model: MODEL, messages: [{ role: 'user', content: 'hi' }] }, 'cli')),
  );
  statuses.push(...burst);
  statuses.push(await call(request, main, '/v1/completions', { model: MODEL, prompt: 'too much', max_tokens: 9_000_000 }, 'cli'));
  expect(burst).toContain(429);
  expect(statuses).toContain(402);
  return statuses;
}

/** `1,234` as a number. */
function count(text: string | null): number {
  return Number((text ?? '').replace(/,/g, '').trim());
}

test('after demo traffic the dashboard shows the KPIs, hourly bars and API rows the API reports, and refreshes them in place', async ({
  page,
  request,
}) => {
  test.setTimeout(150_000);
  const s = await signUp(page, 'dash');
  const statuses = await demoTraffic(request, s, 4);
  const summaryPath = `/api/v1/namespaces/${s.ns}/dashboard?environment=test`;
  const summary = await rest(request, s, 'GET', summaryPath);
  expect(summary.consumer.calls_24h).toBe(statuses.length);

  await page.reload();
  const kpis = page.getByTestId('kpis');
  await expect(page.getByTestId('kpi-calls-24h-value')).toHaveText(summary.consumer.calls_24h.toLocaleString('en-US'));
  await expect(page.getByTestId('kpi-calls-total-value')).toHaveText(summary.consumer.calls_total.toLocaleString('en-US'));
  await expect(page.getByTestId('kpi-calls-24h')).toContainText('success');
  await expect(page.getByTestId('kpi-spent-24h-value')).toHaveText(`${readable(summary.consumer.spent_24h_micros)} credits`);
  await expect(page.getByTestId('empty-state')).toHaveCount(0);

  // 48 hourly bars; the running hour's bar has this traffic's successes and errors stacked.
  const bars = page.getByTestId('call-rate').getByTestId('chart-bar');
  await expect(bars).toHaveCount(48);
  const last = summary.hourly[47];
  expect(last.errors).toBeGreaterThan(0);
  await expect(bars.last()).toHaveAttribute('data-values', `${last.successes},${last.errors}`);
  await expect(bars.last().locator('rect.series-ok')).toHaveCount(1);
  await expect(bars.last().locator('rect.series-err')).toHaveCount(1);
  await expect(bars.last().locator('title')).toHaveText(/successful, \d+ failed/);
  await expect(page.getByTestId('call-rate').locator('.legend')).toContainText('Errors');
  await expect(page.getByTestId('call-rate').locator('text.x-label')).toHaveCount(8);

  // The all-time API table (D3).
  const row = page.locator('[data-testid="api-row"][data-api="sandbox"]');
  const apiRow = summary.apis.find((r: { api: string }) => r.api === 'sandbox');
  await expect(row.getByTestId('api-calls')).toHaveText(apiRow.calls.toLocaleString('en-US'));

  // The event log colours severities.
  await expect(page.getByTestId('event-log').locator('.badge.info').first()).toBeVisible();

  // More traffic, then the 30-second tick: the figures change in place. The KPI panel element
  // found before is the one that shows the new figures (no reload), and no loading line shows.
  const panel = await kpis.elementHandle();
  await page.evaluate(() => {
    (window as unknown as { flashed: boolean }).flashed = false;
    new MutationObserver(() => {
      if (document.querySelector('.content .loading')) (window as unknown as { flashed: boolean }).flashed = true;
    }).observe(document.body, { childList: true, subtree: true });
  });
  const more = await demoTraffic(request, s, 2);
  const after = await rest(request, s, 'GET', summaryPath);
  expect(after.consumer.calls_24h).toBe(statuses.length + more.length);
  await expect(page.getByTestId('kpi-calls-24h-value')).toHaveText(after.consumer.calls_24h.toLocaleString('en-US'), {
    // The tick comes every 30 s; the traffic may have straddled one.
    timeout: 70_000,
  });
  await expect(bars.last()).toHaveAttribute('data-values', `${after.hourly[47].successes},${after.hourly[47].errors}`);
  await expect(row.getByTestId('api-calls')).toHaveText(
    after.apis.find((r: { api: string }) => r.api === 'sandbox').calls.toLocaleString('en-US'),
  );
  expect(await panel!.evaluate((el) => el.isConnected)).toBe(true);
  expect(await page.evaluate(() => (window as unknown as { flashed: boolean }).flashed)).toBe(false);
});

test('the monitoring page charts the series, breaks calls down, searches and tails the request log, and exports', async ({
  page,
  request,
}) => {
  test.setTimeout(90_000);
  const s = await signUp(page, 'monitoring');
  await demoTraffic(request, s, 3);

  await page.locator('nav.sidebar').getByRole('link', { name: /^Monitoring/ }).click();
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('Monitoring');
  await page.getByTestId('range-1h').click();
  const series = await rest(request, s, 'GET', `/api/v1/namespaces/${s.ns}/monitoring/series?environment=test&range=1h`);
  await expect(page.getByTestId('total-calls')).toHaveText(series.totals.calls.toLocaleString('en-US'));
  const bars = page.getByTestId('chart-volume').getByTestId('chart-bar');
  await expect(bars).toHaveCount(series.points.length);
  await expect(page.getByTestId('chart-latency').getByTestId('chart-line')).toHaveCount(3);
  await expect(page.getByTestId('chart-latency').locator('.legend')).toContainText('p99');
  await expect(page.getByTestId('chart-errors').getByTestId('chart-line')).toHaveCount(1);
  await expect(page.getByTestId('chart-cost').getByTestId('chart-line')).toHaveCount(1);

  // A filter narrows everything: only streamed calls.
  await page.getByTestId('filter-type').selectOption('stream');
  const streamed = await rest(
    request,
    s,
    'GET',
    `/api/v1/namespaces/${s.ns}/monitoring/series?environment=test&range=1h&request_type=stream`,
  );
  await expect(page.getByTestId('total-calls')).toHaveText(streamed.totals.calls.toLocaleString('en-US'));
  await page.getByTestId('filter-type').selectOption('');

  // Breakdowns by client id list the clients the traffic used.
  await page.getByTestId('breakdown-client_id').click();
  for (const client of CLIENTS) {
    await expect(page.getByTestId('breakdown-table')).toContainText(client);
  }

  // The request log, searched by client id.
  const rows = page.getByTestId('log-row');
  await expect(rows.first()).toBeVisible();
  await page.getByTestId('log-search').fill('nightly-batch');
  await page.getByTestId('log-search-submit').click();
  await expect(rows.first()).toContainText('nightly-batch');
  for (const text of await rows.allTextContents()) expect(text).toContain('nightly-batch');
  await page.getByTestId('log-search').fill('');
  await page.getByTestId('log-search-submit').click();

  // Live tail: a new call shows up on top without touching the page.
  await page.getByTestId('live-tail').check();
  const key = await createKey(request, s, 'tail');
  const marker = `tail-${Date.now()}`;
  expect(await call(request, key, '/v1/chat/completions', { model: MODEL, messages: [{ role: 'user', content: 'tail' }] }, marker)).toBe(200);
  await expect(rows.first()).toContainText(marker, { timeout: 15_000 });

  // Export of the filtered window as CSV.
  const download = page.waitForEvent('download');
  await page.getByTestId('export-csv').click();
  const file = await download;
  expect(file.suggestedFilename()).toMatch(/\.csv$/);
  const csv = fs.readFileSync(await file.path(), 'utf8');
  expect(csv.split('\n')[0]).toContain('status');
  expect(csv).toContain(marker);
});
