// The dashboard's delivery (A4): compressed, cached hashed assets, 404 for missing files, and
// the security headers, with the real build running under its Content-Security-Policy.
import { expect, Page, test } from '@playwright/test';

const password = 'correct horse battery';

/// Records CSP violations and console errors of a page from its first script on.
async function watch(page: Page): Promise<{ violations: string[]; errors: string[] }> {
  const seen = { violations: [] as string[], errors: [] as string[] };
  await page.exposeFunction('__reportViolation', (v: string) => seen.violations.push(v));
  await page.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      (window as unknown as { __reportViolation: (v: string) => void }).__reportViolation(
        `${e.violatedDirective} blocked ${e.blockedURI} (${e.sourceFile}:${e.lineNumber})`,
      );
    });
  });
  page.on('console', (msg) => {
    if (msg.type() === 'error') seen.errors.push(msg.text());
  });
  return seen;
}

test('the dashboard loads compressed, cached and under its CSP with no violation', async ({ page }) => {
  const seen = await watch(page);
  const responses: { url: string; headers: Record<string, string>; bodySize: number }[] = [];
  page.on('requestfinished', async (req) => {
    const res = await req.response();
    if (!res) return;
    const sizes = await req.sizes();
    responses.push({ url: req.url(), headers: await res.allHeaders(), bodySize: sizes.responseBodySize });
  });

  const doc = await page.goto('/signup');
  expect(doc?.status()).toBe(200);
  const headers = await doc!.allHeaders();
  expect(headers['content-security-policy']).toContain("script-src 'self' 'wasm-unsafe-eval' 'sha256-");
  expect(headers['content-security-policy']).toContain("frame-ancestors 'none'");
  expect(headers['x-content-type-options']).toBe('nosniff');
  expect(headers['x-frame-options']).toBe('DENY');
  expect(headers['referrer-policy']).toBe('no-referrer');
  expect(headers['cache-control']).toBe('no-cache');

  // The app starts (the wasm ran) and works: sign up, then visit every page.
  const email = `static-${Date.now()}-${Math.floor(Math.random() * 1e6)}@example.com`;
  await page.getByTestId('display-name').fill('Static');
  await page.getByTestId('email').fill(email);
  await page.getByTestId('password').fill(password);
  await page.getByTestId('submit').click();
  await expect(page.getByTestId('empty-state')).toBeVisible();
  for (const path of ['/keys', '/credits', '/finance', '/monitoring', '/catalog', '/playground', '/settings', '/']) {
    await page.goto(path);
    await expect(page.getByTestId('account-email')).toHaveText(email);
  }
  await page.waitForLoadState('networkidle');

  // The wasm came brotli-compressed and cacheable for a year, and is far smaller on the wire.
  const wasm = responses.find((r) => r.url.endsWith('.wasm'));
  expect(wasm, 'the wasm was fetched').toBeTruthy();
  expect(wasm!.headers['content-encoding']).toBe('br');
  expect(wasm!.headers['content-type']).toBe('application/wasm');
  expect(wasm!.headers['cache-control']).toBe('public, max-age=31536000, immutable');
  const plain = await page.request.get(new URL(wasm!.url).pathname, {
    headers: { 'accept-encoding': 'identity' },
  });
  const plainSize = (await plain.body()).length;
  expect(plain.headers()['content-encoding']).toBeUndefined();
  console.log(`wasm: ${plainSize} bytes plain, ${wasm!.bodySize} bytes transferred (br)`);
  expect(wasm!.bodySize).toBeGreaterThan(0);
  expect(wasm!.bodySize * 3).toBeLessThan(plainSize);
  for (const r of responses.filter((r) => /\.(js|css)$/.test(r.url))) {
    expect(r.headers['content-encoding'], r.url).toBe('br');
    expect(r.headers['cache-control'], r.url).toBe('public, max-age=31536000, immutable');
  }

  expect(seen.violations).toEqual([]);
  expect(seen.errors.filter((e) => /Content Security Policy|Refused to/.test(e))).toEqual([]);
});

test('missing files are 404 while client-side routes get the dashboard', async ({ request }) => {
  for (const path of ['/favicon.ico', '/x.wasm', '/tally-frontend-0000000000000000_bg.wasm']) {
    const res = await request.get(path);
    expect(res.status(), path).toBe(404);
    expect((await res.json()).error.code).toBe('not_found');
  }
  for (const path of ['/keys', '/settings/members']) {
    const res = await request.get(path);
    expect(res.status(), path).toBe(200);
    expect(res.headers()['content-type']).toContain('text/html');
  }
});

test('the API documentation works offline under its own CSP', async ({ page }) => {
  const seen = await watch(page);
  const outside: string[] = [];
  page.on('request', (req) => {
    if (!req.url().startsWith(new URL(page.url() || 'http://127.0.0.1').origin) && !req.url().startsWith('data:')) {
      outside.push(req.url());
    }
  });
  const doc = await page.goto('/api/docs/');
  expect(doc?.headers()['content-security-policy']).toContain("script-src 'self';");
  await expect(page.locator('.swagger-ui .info .title')).toContainText('Tally');
  await expect(page.locator('.opblock').first()).toBeVisible();
  expect(seen.violations).toEqual([]);
  expect(outside.filter((u) => !u.includes('127.0.0.1'))).toEqual([]);
});
