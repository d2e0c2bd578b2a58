// Drives latchkey's browser pages in Debian's headless Chromium through
// playwright-core. Started by scripts/browser-test, which sets:
//   BASE_URL   the local runner (PUBLIC_BASE_URL), e.g. http://127.0.0.1:40123
//   OUTBOX     the runner's outbox directory (one .eml per mail)
//   ADMIN_KEY  the admin key whose hash the runner was given
// Screenshots go to tests/browser/artifacts/. Exits non-zero on the first
// failed check.

import { chromium } from "playwright-core";
import { mkdtempSync, mkdirSync, readdirSync, readFileSync, statSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const BASE = process.env.BASE_URL;
const OUTBOX = process.env.OUTBOX;
const ADMIN_KEY = process.env.ADMIN_KEY;
const ART = join(dirname(fileURLToPath(import.meta.url)), "artifacts");
mkdirSync(ART, { recursive: true });
const PASSWORD = "correct horse battery staple";

let step = 0;
const log = (m) => console.log(`browser-test: ${m}`);
function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
  log(`ok - ${what}`);
}
async function shot(page, name) {
  step += 1;
  const file = join(ART, `${String(step).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  log(`screenshot ${file}`);
}

// --- the outbox -----------------------------------------------------------
function decodeQp(s) {
  return s.replace(/=\r?\n/g, "").replace(/=([0-9A-F]{2})/g, (_, h) => String.fromCharCode(parseInt(h, 16)));
}
function mailsTo(addr) {
  let files = [];
  try {
    files = readdirSync(OUTBOX).filter((f) => f.endsWith(".eml")).map((f) => join(OUTBOX, f));
  } catch {
    return [];
  }
  files.sort((a, b) => statSync(a).mtimeMs - statSync(b).mtimeMs);
  return files
    .map((f) => decodeQp(readFileSync(f, "utf8")))
    .filter((t) => new RegExp(`^To:.*${addr.replace(/[.+]/g, "\\$&")}`, "mi").test(t));
}
async function waitMail(addr, n) {
  for (let i = 0; i < 200; i++) {
    const all = mailsTo(addr);
    if (all.length >= n) return all[all.length - 1];
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`no mail #${n} to ${addr}`);
}
const linkIn = (mail) => mail.match(/https?:\/\/\S+\/verify-email\?token=[A-Za-z0-9_-]+/)[0];
const codeIn = (mail) => mail.match(/code is:\s*(\d{6})/)[1];

// --- the journey ----------------------------------------------------------
const id = Math.random().toString(16).slice(2, 12);
const username = `user${id}`;
const email = `u${id}@example.com`;

const userDataDir = mkdtempSync(join(tmpdir(), "latchkey-chromium-"));
const browser = await chromium.launchPersistentContext(userDataDir, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
  ],
  viewport: { width: 1000, height: 800 },
});
// An attacker's page on another site (localhost is cross-site to 127.0.0.1).
let attackerHtml = "";
const attacker = createServer((_, res) => {
  res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
  res.end(attackerHtml);
});
await new Promise((r) => attacker.listen(0, "127.0.0.1", r));
const ATTACKER = `http://localhost:${attacker.address().port}`;

let failed = false;
try {
  const page = browser.pages()[0] ?? (await browser.newPage());
  const cspErrors = [];
  page.on("console", (m) => {
    if (/Content Security Policy/i.test(m.text())) cspErrors.push(m.text());
  });

  // Register.
  await page.goto(`${BASE}/register`);
  await shot(page, "register");
  await page.fill("#username", username);
  await page.fill("#email", email);
  await page.fill("#password", "short");
  await page.click("button[type=submit]");
  check((await page.textContent("#password-error"))?.length > 0, "weak password refused next to the field");
  await shot(page, "register-error");
  await page.fill("#password", PASSWORD);
  await page.click("button[type=submit]");
  await page.waitForURL(`${BASE}/register/sent`);
  await shot(page, "check-mail");

  // The mail, the link, the button.
  const link = linkIn(await waitMail(email, 1));
  await page.goto(link);
  check((await page.textContent("h1")).includes("Confirm your email"), "link lands on a confirm page");
  await shot(page, "verify-landing");
  await page.click("button[type=submit]");
  check((await page.textContent("h1")).includes("Email confirmed"), "email confirmed by the POST");
  await shot(page, "verified");

  // Login by username, code from the mail.
  const login = async (identifier, n, wrongFirst) => {
    await page.goto(`${BASE}/login`);
    await page.fill("#identifier", identifier);
    await page.fill("#password", PASSWORD);
    await page.click("button[type=submit]");
    await page.waitForURL(`${BASE}/login/code`);
    check((await page.content()).includes("You can ask for a new code in"), "code page shows the resend cooldown");
    if (wrongFirst) await shot(page, "code");
    const code = codeIn(await waitMail(email, n));
    if (wrongFirst) {
      await page.fill("#code", code === "000000" ? "111111" : "000000");
      await page.click("form[action='/login/code'] button[type=submit]");
      check((await page.textContent("#code-error")).includes("attempts left"), "wrong code refused next to the field");
      await shot(page, "code-wrong");
    }
    await page.fill("#code", code);
    await page.click("form[action='/login/code'] button[type=submit]");
    await page.waitForURL(`${BASE}/dashboard`);
  };
  await login(username, 2, true);
  check((await page.textContent("#profile-email")).includes(email), "dashboard shows the profile");
  const cookies = await browser.cookies(BASE);
  const session = cookies.find((c) => c.name === "__Host-latchkey_session");
  check(session && session.httpOnly && session.secure && session.sameSite === "Lax" && session.path === "/",
    "session cookie is __Host-, HttpOnly, Secure, SameSite=Lax, Path=/");
  await page.waitForTimeout(1500); // let the audit feed catch up
  await page.reload();
  await shot(page, "dashboard");
  await page.setViewportSize({ width: 390, height: 844 });
  await shot(page, "dashboard-phone");
  await page.setViewportSize({ width: 1000, height: 800 });

  // A cross-site form post (with the real token, as if it leaked) is refused.
  const token = await page.getAttribute("form[action='/logout'] input[name=csrf]", "value");
  attackerHtml = `<!doctype html><title>evil</title><form method="post" action="${BASE}/logout">
    <input type="hidden" name="csrf" value="${token}"><button id="go">Win a prize</button></form>`;
  await page.goto(ATTACKER);
  await page.click("#go");
  await page.waitForLoadState();
  check((await page.textContent("body")).includes("Nothing was changed"), "cross-site form post refused (403)");
  await shot(page, "cross-site-refused");
  await page.goto(`${BASE}/dashboard`);
  check(page.url() === `${BASE}/dashboard`, "still signed in after the refused post");

  // Logout, then the back button.
  await page.click("form[action='/logout'] button");
  await page.waitForURL(/\/login\?bye=1$/);
  await shot(page, "logged-out");
  await page.goBack();
  await page.waitForLoadState();
  const back = await page.content();
  check(!back.includes(email) && !back.includes(username), "back button after logout shows nothing private");
  await shot(page, "after-logout-back");

  // Login by email (upper case), then sign out again.
  await login(email.toUpperCase(), 3, false);
  check((await page.textContent("#profile-username")) === username, "login by email works");
  check((await page.textContent("#sessions")).includes("this browser"), "the dashboard lists this session");

  // Sign out everywhere else from the dashboard, with the password.
  await page.selectOption("#session_id", "others");
  await page.fill("#current_password", PASSWORD);
  await page.click("form[action='/sessions/end'] button[type=submit]");
  await page.waitForURL(/\/dashboard\?ended=others$/);
  check((await page.textContent(".notice")).includes("Every other session is signed out"),
    "every other session signed out from the dashboard, this one kept");
  await shot(page, "sessions-ended");
  await page.click("form[action='/logout'] button");
  await page.waitForURL(/\/login\?bye=1$/);
  await page.setViewportSize({ width: 390, height: 844 });
  await shot(page, "login-phone");
  await page.setViewportSize({ width: 1000, height: 800 });

  // A forgotten password: from the sign-in page's link to a new password.
  const NEW_PASSWORD = "velvet orbit harbor lantern";
  await page.click("a[href='/password/forgot']");
  await page.waitForURL(`${BASE}/password/forgot`);
  await page.fill("#email", email);
  await page.click("form[action='/password/forgot'] button");
  check((await page.textContent(".notice")).includes("is on its way"), "reset link asked for");
  await shot(page, "forgot-sent");
  const resetLink = (await waitMail(email, 4)).match(/https?:\/\/\S+\/password\/reset\?token=[A-Za-z0-9_.-]+/)[0];
  await page.goto(resetLink);
  await page.fill("#new_password", "short");
  await page.click("form[action='/password/reset'] button");
  check((await page.textContent("#new_password-error"))?.length > 0, "weak new password refused next to the field");
  await page.fill("#new_password", NEW_PASSWORD);
  await page.click("form[action='/password/reset'] button");
  check((await page.textContent("h1")).includes("Password changed"), "new password set through the link");
  await shot(page, "reset-done");
  await page.goto(`${BASE}/login`);
  await page.fill("#identifier", username);
  await page.fill("#password", NEW_PASSWORD);
  await page.click("button[type=submit]");
  await page.waitForURL(`${BASE}/login/code`);
  check(page.url() === `${BASE}/login/code`, "the new password passes the password step");
  await page.fill("#code", codeIn(await waitMail(email, 5)));
  await page.click("form[action='/login/code'] button[type=submit]");
  await page.waitForURL(`${BASE}/dashboard`);

  // Move the account to another address: the dashboard's form, then the
  // link mailed there, whose page changes nothing until its button.
  const moved = `moved-${email}`;
  await page.fill("#new_email", moved);
  await page.fill("#email_password", NEW_PASSWORD);
  await page.click("form[action='/account/email'] button[type=submit]");
  await page.waitForURL(/\/dashboard\?email=asked$/);
  check((await page.textContent(".notice")).includes("A link is on its way"), "address change asked for");
  const moveLink = (await waitMail(moved, 1)).match(/https?:\/\/\S+\/email\/confirm\?token=[A-Za-z0-9_.-]+/)[0];
  await page.goto(moveLink);
  check((await page.textContent("h1")).includes("Confirm your new address"), "address change link lands on a button");
  await shot(page, "email-confirm");
  await page.click("form[action='/email/confirm'] button");
  check((await page.textContent("h1")).includes("Address changed"), "address changed by the link's POST");
  await page.goto(`${BASE}/dashboard`);
  check((await page.textContent("#profile-email")).includes(moved), "the dashboard shows the new address");

  // Change the password from the dashboard: a weak one is refused next to
  // its field; then every other session ends and this one stays.
  await page.fill("#password_current", NEW_PASSWORD);
  await page.fill("#new_password", "short");
  await page.click("form[action='/account/password'] button[type=submit]");
  check((await page.textContent("#new_password-error"))?.length > 0, "weak new password refused on the dashboard");
  await page.fill("#password_current", NEW_PASSWORD);
  await page.fill("#new_password", "quiet pebble saffron engine");
  await page.click("form[action='/account/password'] button[type=submit]");
  await page.waitForURL(/\/dashboard\?password=changed$/);
  check((await page.textContent(".notice")).includes("Your password is changed"),
    "password changed from the dashboard, this session kept");

  // The standalone one-time-code page.
  const otpMail = `o${id}@example.com`;
  await page.goto(`${BASE}/one-time-code`);
  await shot(page, "otp");
  await page.fill("#email", otpMail);
  await page.click("form[action='/one-time-code/send'] button");
  check((await page.textContent(".notice")).includes("Code sent"), "OTP sent");
  const otp = codeIn(await waitMail(otpMail, 1));
  await page.fill("#otp", otp === "000000" ? "111111" : "000000");
  await page.click("form[action='/one-time-code/verify'] button");
  check((await page.textContent("#otp-error")).includes("not right"), "wrong OTP refused");
  await shot(page, "otp-wrong");
  await page.fill("#otp", otp);
  await page.click("form[action='/one-time-code/verify'] button");
  check((await page.textContent(".notice")).includes("Code verified"), "right OTP accepted");
  await shot(page, "otp-verified");

  // The admin page.
  await page.goto(`${BASE}/admin`);
  await page.fill("#admin_key", ADMIN_KEY);
  await page.click("button[type=submit]");
  check((await page.content()).includes("Events per day"), "admin stats shown for the right key");
  check(!(await browser.cookies(BASE)).some((c) => c.value.includes(ADMIN_KEY)), "admin key not in a cookie");
  await shot(page, "admin");

  check(cspErrors.length === 0, `no CSP violations (${cspErrors.join(" | ")})`);
} catch (e) {
  failed = true;
  console.error(`browser-test: FAILED: ${e.stack ?? e}`);
  try {
    await browser.pages()[0]?.screenshot({ path: join(ART, "failure.png"), fullPage: true });
  } catch {}
} finally {
  await browser.close();
  attacker.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
