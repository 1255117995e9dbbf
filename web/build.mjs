// Builds the web client into dist/ (what the gateway serves; `--outdir DIR`
// for another place), or with `--tests` the unit tests into .test-build/
// (for `node --test`).
//
// esbuild only strips types: `npm run check` (tsc) is what type-checks.

import { build } from 'esbuild';
import { copyFileSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const at = (...parts) => join(here, ...parts);

if (process.argv.includes('--tests')) {
  const out = at('.test-build');
  rmSync(out, { recursive: true, force: true });
  const tests = readdirSync(at('test'))
    .filter((name) => name.endsWith('.test.ts'))
    .map((name) => at('test', name));
  await build({
    entryPoints: tests,
    outdir: out,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    outExtension: { '.js': '.mjs' },
    logLevel: 'warning',
  });
} else {
  // `--outdir DIR` builds elsewhere (dist/ may be in use by a running stack,
  // which reads it when a gateway starts).
  const flag = process.argv.indexOf('--outdir');
  const out = flag > 0 && process.argv[flag + 1] ? process.argv[flag + 1] : at('dist');
  // Only our own dist/ is wiped first (no stale files in what is served).
  if (out === at('dist')) rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  await build({
    entryPoints: [at('src', 'main.ts')],
    outfile: join(out, 'app.js'),
    bundle: true,
    minify: true,
    sourcemap: true,
    format: 'iife',
    target: ['es2020', 'chrome100', 'firefox100', 'safari15'],
    logLevel: 'warning',
  });
  for (const file of ['index.html', 'app.css', 'favicon.svg']) {
    copyFileSync(at(file), join(out, file));
  }
  console.log(`built ${out}`);
}
