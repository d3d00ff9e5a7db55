import { expect, Page, test } from '@playwright/test';

const password = 'correct horse battery';

function uniqueEmail(name: string): string {
  return `${name}-${Date.now()}-${Math.floor(Math.random() * 1e6)}@example.com`;
}

async function signUp(page: Page, email: string) {
  await page.goto('/signup');
  await page.getByTestId('display-name').fill('E2E User');
  await page.getByTestId('email').fill(email);
  await page.getByTestId('password').fill(password);
  await page.getByTestId('submit').click();
  await expect(page.getByTestId('empty-state')).toBeVisible();
}

test('signing up lands on the empty dashboard of a personal namespace', async ({ page }) => {
  const email = uniqueEmail('signup');
  await signUp(page, email);
  await expect(page).toHaveURL(/\/$/);
  await expect(page.getByTestId('empty-state')).toContainText('This namespace has no traffic yet');
  await expect(page.getByRole('link', { name: 'Browse the catalog' })).toBeVisible();
  await expect(page.getByTestId('namespace-name')).toHaveText('Personal');
  await expect(page.getByTestId('account-email')).toHaveText(email);
  await expect(page.getByTestId('uptime')).toHaveText(/^Up \d+(s|m|h)/);
  // The event log shows the server's startup and this namespace's creation.
  const log = page.getByTestId('event-log');
  await expect(log).toContainText('startup');
  await expect(log).toContainText('namespace.created');
});

test('logging out and back in returns to the dashboard', async ({ page }) => {
  const email = uniqueEmail('relogin');
  await signUp(page, email);
  await page.getByTestId('logout').click();
  await expect(page).toHaveURL(/\/login$/);
  // Protected pages send a logged-out visitor to the login page.
  await page.goto('/settings');
  await expect(page).toHaveURL(/\/login$/);
  await page.getByTestId('email').fill(email);
  await page.getByTestId('password').fill(password);
  await page.getByTestId('submit').click();
  await expect(page.getByTestId('empty-state')).toBeVisible();
  await expect(page.getByTestId('account-email')).toHaveText(email);
});

test('a wrong password shows the server error and stays on the login page', async ({ page }) => {
  const email = uniqueEmail('wrongpw');
  await signUp(page, email);
  await page.getByTestId('logout').click();
  await page.getByTestId('email').fill(email);
  await page.getByTestId('password').fill('not the password');
  await page.getByTestId('submit').click();
  await expect(page.getByTestId('error')).toHaveText('wrong email or password');
  await expect(page).toHaveURL(/\/login$/);
});

test('creating a second namespace and switching between namespaces', async ({ page }) => {
  await signUp(page, uniqueEmail('switch'));
  await page.getByTestId('new-namespace').click();
  await page.getByTestId('new-namespace-name').fill('Research lab');
  await page.getByTestId('new-namespace-submit').click();
  // The new namespace is selected and its dashboard is empty too.
  await expect(page.getByTestId('namespace-name')).toHaveText('Research lab');
  await expect(page.getByTestId('empty-state')).toBeVisible();
  const switcher = page.getByTestId('namespace-switcher');
  await expect(switcher.locator('option')).toHaveCount(2);

  await switcher.selectOption({ label: 'Personal (owner)' });
  await expect(page.getByTestId('namespace-name')).toHaveText('Personal');
  await switcher.selectOption({ label: 'Research lab (owner)' });
  await expect(page.getByTestId('namespace-name')).toHaveText('Research lab');
  // The selection survives a reload.
  await page.reload();
  await expect(page.getByTestId('namespace-name')).toHaveText('Research lab');
});

test('the test/live toggle switches the environment in place', async ({ page }) => {
  await signUp(page, uniqueEmail('env'));
  await expect(page.getByTestId('env-test')).toHaveAttribute('aria-pressed', 'true');
  await page.getByTestId('env-live').click();
  await expect(page.getByTestId('env-live')).toHaveAttribute('aria-pressed', 'true');
  await expect(page.getByTestId('env-test')).toHaveAttribute('aria-pressed', 'false');
  await expect(page.getByTestId('empty-state')).toBeVisible();
});

test('areas not built yet say so plainly', async ({ page }) => {
  await signUp(page, uniqueEmail('areas'));
  for (const [link, title] of [
    ['APIs', 'APIs'],
    ['Subclouds', 'Subclouds'],
  ]) {
    await page.locator('nav.sidebar').getByRole('link', { name: new RegExp(`^${link}`) }).click();
    await expect(page.getByRole('heading', { level: 1 })).toHaveText(title);
    await expect(page.getByTestId('placeholder')).toContainText('Not available yet');
  }
});

test('members are invited from settings and join when they accept the link', async ({ page, request }) => {
  // A second account to invite: having an account joins it to nothing by itself.
  const other = uniqueEmail('colleague');
  const res = await request.post('/api/v1/auth/signup', { data: { email: other, password } });
  expect(res.status()).toBe(201);
  const otherAuth = { Authorization: `Bearer ${(await res.json()).access_token}` };

  await signUp(page, uniqueEmail('owner'));
  await page.locator('nav.sidebar').getByRole('link', { name: 'Settings' }).click();
  await expect(page.getByTestId('members')).toBeVisible();
  await page.getByTestId('member-email').fill(other);
  await page.getByTestId('member-add').click();
  await expect(page.getByTestId('invite-panel')).toContainText(`Invitation for ${other} as developer`);
  await expect(page.getByTestId('invitation-row')).toContainText(other);

  // The colleague accepts with the link's token and appears among the members.
  const link = (await page.getByTestId('invite-link').textContent()) ?? '';
  const token = link.split('#')[1] ?? '';
  const accepted = await request.post('/api/v1/invitations/accept', { headers: otherAuth, data: { token } });
  expect(accepted.ok()).toBe(true);
  await page.reload();
  await expect(page.getByTestId('members')).toContainText(other);
  await expect(page.getByTestId('invitation-row')).toHaveCount(0);

  const stranger = uniqueEmail('stranger');
  await page.getByTestId('member-email').fill(stranger);
  await page.getByTestId('member-add').click();
  await expect(page.getByTestId('invitation-row')).toContainText(stranger);
  await expect(page.getByTestId('invitation-row')).toContainText('invited');
});
