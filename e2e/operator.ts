import { APIRequestContext, expect } from '@playwright/test';

/**
 * The e2e server's operator. playwright.config.ts creates it with
 * `tally admin create-operator` before the server starts (operators are never
 * made by signing up); its password is generated once per run.
 */
export const OPERATOR_EMAIL = 'operator@e2e.example.com';

export function operatorPassword(): string {
  const password = process.env.TALLY_E2E_OPERATOR_PASSWORD ?? '';
  expect(password, 'playwright.config.ts sets the operator password').not.toBe('');
  return password;
}

/** `Bearer …` for the operator. */
export async function operatorAuth(request: APIRequestContext): Promise<string> {
  const res = await request.post('/api/v1/auth/login', {
    data: { email: OPERATOR_EMAIL, password: operatorPassword() },
  });
  expect(res.status()).toBe(200);
  return `Bearer ${(await res.json()).access_token}`;
}
