// The browser half of tests/console/test_console.c: headless Chromium (Debian's) driven by
// playwright-core through the console that the C test started over the five services. Each step
// waits for what it wants to see, with a deadline; a screenshot of each page goes to ARTIFACTS.
import { chromium } from 'playwright-core';
import { execFileSync } from 'node:child_process';

const { CONSOLE_URL, CONSOLE_TOKEN, AUTH_URL, EWCTL, ARTIFACTS } = process.env;
const T = 30000;
const t0 = Date.now();
const step = m => console.log(`browser: [${((Date.now() - t0) / 1000).toFixed(1)} s] ${m}`);
const errors = [];

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--no-proxy-server', '--disable-gpu', '--disable-dev-shm-usage'],
  headless: true,
});
let page;
try {
  // The console's Content-Security-Policy forbids eval, which waitForFunction's polling uses.
  const context = await browser.newContext({ viewport: { width: 1440, height: 860 }, bypassCSP: true });
  page = await context.newPage();
  page.setDefaultTimeout(T);
  page.on('pageerror', e => errors.push(String(e)));
  const shot = name => page.screenshot({ path: `${ARTIFACTS}/${name}.png` });

  // A wrong operator token is refused.
  await page.goto(CONSOLE_URL + '/');
  await page.fill('#token', 'not-the-token-of-this-console');
  await page.click('#login-button');
  await page.waitForFunction(() => document.querySelector('#login-error').textContent.includes('refused'));
  if (await page.locator('#app').isVisible()) throw new Error('the app shows with a wrong token');
  await shot('login-refused');
  step('a wrong token is refused');

  // The right one opens the live view.
  await page.fill('#token', CONSOLE_TOKEN);
  await page.click('#login-button');
  await page.locator('#app').waitFor({ state: 'visible' });
  await page.waitForSelector('body[data-live="open"]');
  step('the live stream is open');

  // A registration through the API: its events arrive live.
  const username = 'ada' + Date.now();
  const res = await fetch(AUTH_URL + '/auth/register', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ username, email: username + '@example.com', password: 'correct horse battery' }),
  });
  if (res.status !== 201 && res.status !== 200) throw new Error('register: ' + res.status + ' ' + (await res.text()));
  const { user_id: userId } = await res.json();
  const row = type => page.locator(`#live-table tbody tr[data-type="${type}"][data-subject="${userId}"]`).first();
  await row('user.registered').waitFor();
  await row('user.profile_created').waitFor();
  step('user.registered and user.profile_created arrived live');

  // Filters: by subject, only that user's events are listed.
  await page.fill('#live-filters input[name="subject"]', userId);
  await page.click('#live-filters button[type="submit"]');
  await row('user.registered').waitFor();
  const subjects = await page.$$eval('#live-table tbody tr[data-seq]', trs => trs.map(tr => tr.dataset.subject));
  if (!subjects.length || subjects.some(s => s !== userId)) throw new Error('the subject filter let through ' + subjects);
  // An event's detail: envelope and data.
  await row('user.registered').click();
  // The user's personal fields arrive encrypted, and the page says so; nothing of them in clear.
  await page.waitForFunction(() => document.querySelector('#detail-data')?.textContent.includes('"username": "[encrypted]"'));
  if ((await page.textContent('#detail-data')).includes(username)) throw new Error('the detail shows the username in clear');
  await shot('live');
  step(`the subject filter shows ${subjects.length} events of the user; the detail shows the data, its personal fields as encrypted`);

  // The registration saga, completed, with its transitions.
  await page.click('header nav button[data-view="sagas"]');
  await page.locator(`#sagas-table tbody tr[data-key="${userId}"]`).click();
  await page.waitForFunction(() => document.querySelector('#saga-title')?.textContent.includes('completed'));
  const transitions = await page.locator('#saga-transitions tr').count();
  if (transitions < 3) throw new Error('the saga shows ' + (transitions - 1) + ' transitions');
  await shot('saga');
  step(`the UserRegistration saga is completed, ${transitions - 1} transitions`);

  // Its timeline: the events of its correlation id across services.
  await page.click('#saga-timeline-link');
  await page.locator('#view-timeline').waitFor({ state: 'visible' });
  await page.waitForFunction(() => document.querySelectorAll('#timeline-table tbody tr').length >= 3);
  const lanes = await page.locator('#timeline .lane').count();
  const types = await page.$$eval('#timeline-table tbody tr td:nth-child(3)', tds => tds.map(td => td.textContent));
  if (!types.includes('user.registered') || lanes < 2) throw new Error(`timeline: ${lanes} lanes, ${types}`);
  await shot('timeline');
  step(`the timeline shows ${types.length} events from ${lanes} services`);

  // A dead letter: an event the test's handler refuses the first time; retried from the page.
  execFileSync(EWCTL, ['publish', 'compliance.retention_applied', '--subject', 'audit', '--data',
    JSON.stringify({ service: 'console-test', category: 'events', purged: 3, older_than: '2026-01-01T00:00:00Z' })]);
  await page.click('header nav button[data-view="dlq"]');
  const pending = page.locator('#dlq-table tbody tr[data-status="pending"]', { hasText: 'retention-audit' }).first();
  await pending.waitFor();
  const id = await pending.getAttribute('data-id');
  await shot('dlq-pending');
  await pending.locator('button.retry').click();
  await page.locator(`#dlq-table tbody tr[data-id="${id}"][data-status="resolved"]`).waitFor();
  await shot('dlq');
  step(`dead letter ${id} retried from the page and resolved`);

  // Groups and charts.
  await page.click('header nav button[data-view="groups"]');
  await page.locator('#groups-table').waitFor();
  await shot('groups');
  await page.click('header nav button[data-view="charts"]');
  await page.waitForFunction(() => Number(document.body.dataset.samples || 0) >= 2);
  await page.waitForFunction(() => document.querySelector('#charts-services').textContent.startsWith('5 of 5'));
  await shot('charts');
  step('groups and charts drawn');

  if (errors.length) throw new Error('errors on the page: ' + errors.join('; '));
  await browser.close();
  step('done');
} catch (e) {
  console.error('browser: FAILED: ' + (e && e.stack || e));
  if (page) await page.screenshot({ path: `${ARTIFACTS}/failure.png` }).catch(() => {});
  await browser.close();
  process.exit(1);
}
