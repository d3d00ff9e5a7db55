/** Signing up with this email makes an operator (the server's `operators` setting, set by playwright.config.ts). */
export const OPERATOR_EMAIL = 'operator@e2e.example.com';
