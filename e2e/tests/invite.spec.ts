import { expect, Page, test } from '@playwright/test';

// Invitations (A1): adding a member shows a one-time link; the invitee opens it, signs up or
// logs in, and accepts. Nothing is joined by email alone.

const password = 'correct horse battery';
const PHONE = { width: 390, height: 844 };
const DESKTOP = { width: 1300, height: 850 };

function uniqueEmail(name: string): string {
  return `${name}-${Date.now()}-${Math.floor(Math.random() * 1e6)}@example.com`;
}

async function signUp(page: Page, email: string) {
  await page.goto('/signup');
  await page.getByTestId('email').fill(email);
  await page.getByTestId('password').fill(password);
  await page.getByTestId('submit').click();
}

async function shoot(page: Page, name: string) {
  for (const [label, size] of [['desktop', DESKTOP], ['phone', PHONE]] as const) {
    await page.setViewportSize(size);
    await page.screenshot({ path: test.info().outputPath(`${name}-${label}.png`), fullPage: true });
  }
  await page.setViewportSize(DESKTOP);
}

test('an invitation link, shown once, lets the invitee sign up and join with the invited role', async ({ page, browser, request }) => {
  const owner = uniqueEmail('owner');
  const guestEmail = uniqueEmail('guest');
  await signUp(page, owner);
  await expect(page.getByTestId('empty-state')).toBeVisible();
  const tokens = await page.evaluate(() => JSON.parse(localStorage.getItem('tally.tokens') ?? '{}'));
  const auth = { Authorization: `Bearer ${tokens.access_token}` };
  const ns = (await (await request.get('/api/v1/me', { headers: auth })).json()).namespaces[0].id;
  const renamed = await request.patch(`/api/v1/namespaces/${ns}`, { headers: auth, data: { name: 'Acme e2e' } });
  expect(renamed.status()).toBe(200);

  await page.goto('/settings');
  await page.getByTestId('member-email').fill(guestEmail);
  await page.getByTestId('member-role').selectOption('billing');
  await page.getByTestId('member-add').click();
  const panel = page.getByTestId('invite-panel');
  await expect(panel).toContainText(`Invitation for ${guestEmail} as billing`);
  const link = (await page.getByTestId('invite-link').textContent()) ?? '';
  expect(link).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/invite#tin_[A-Za-z0-9_-]{43}$/);
  await expect(page.getByTestId('invitation-row')).toContainText(guestEmail);
  await shoot(page, 'settings-invite-link');

  // The invitee, in a browser of their own, without an account yet.
  const guest = await browser.newContext({ viewport: DESKTOP });
  const gp = await guest.newPage();
  await gp.goto(link);
  await expect(gp.getByTestId('invitation-summary')).toContainText('invites you to join Acme e2e as billing');
  await shoot(gp, 'invite-signed-out');
  await gp.getByTestId('invite-signup').click();
  await expect(gp).toHaveURL(/\/signup$/);
  await gp.getByTestId('email').fill(guestEmail);
  await gp.getByTestId('password').fill(password);
  await gp.getByTestId('submit').click();
  // Signing up alone joins nothing: it comes back to the invitation to accept it.
  await expect(gp).toHaveURL(/\/invite$/);
  await expect(gp.getByTestId('invite-accept')).toBeVisible();
  const guestTokens = await gp.evaluate(() => JSON.parse(localStorage.getItem('tally.tokens') ?? '{}'));
  const guestAuth = { Authorization: `Bearer ${guestTokens.access_token}` };
  expect((await (await request.get('/api/v1/me', { headers: guestAuth })).json()).namespaces).toHaveLength(1);
  await shoot(gp, 'invite-signed-in');

  await gp.getByTestId('invite-accept').click();
  await expect(gp).toHaveURL(/\/$/);
  await expect(gp.getByTestId('namespace-name')).toHaveText('Acme e2e');
  const joined = (await (await request.get('/api/v1/me', { headers: guestAuth })).json()).namespaces;
  expect(joined.map((n: { name: string; role: string }) => `${n.name}:${n.role}`)).toContain('Acme e2e:billing');

  // The link works once.
  await gp.goto(link);
  await expect(gp.getByTestId('error')).toContainText('invitation not found');
  await guest.close();

  await page.goto('/settings');
  await expect(page.getByTestId('members')).toContainText(guestEmail);
  await expect(page.getByTestId('invitation-row')).toHaveCount(0);
});
