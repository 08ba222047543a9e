/**
 * Headless Chromium for the browser test and the benchmark: Debian's /usr/bin/chromium driven
 * by playwright-core, a fresh profile each time, no network but localhost, and no browser
 * download ever (PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD).
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const CHROMIUM = process.env.RANET_EDGE_CHROMIUM || '/usr/bin/chromium';
export const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

/** Why Chromium cannot run here, or null when it can. */
export function chromiumMissing() {
  return existsSync(CHROMIUM) ? null : `${CHROMIUM} is absent (Debian: apt-get install chromium; or set RANET_EDGE_CHROMIUM)`;
}

/**
 * Start Chromium with a fresh --user-data-dir. @param {string[]} [extraArgs]
 * @returns {Promise<{context: import('playwright-core').BrowserContext, close: () => Promise<void>}>}
 */
export async function launchChromium(extraArgs = []) {
  process.env.PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD = '1';
  const { chromium } = await import('playwright-core');
  const profile = mkdtempSync(join(tmpdir(), 'ranet-edge-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM, headless: true, args: [...FLAGS, ...extraArgs],
  });
  return {
    context,
    close: async () => {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}
