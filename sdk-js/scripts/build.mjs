// Builds dist/: the ESM and CommonJS entries of the npm package (runtime
// dependencies left as imports), their bundled .d.ts, and a self-contained
// minified ESM bundle for pages without a bundler (dist/browser/), which is
// also what the size budget measures.
//
// Run with: npm run build

import { execFileSync } from "node:child_process";
import { copyFileSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { build } from "esbuild";

const root = new URL("..", import.meta.url).pathname;
process.chdir(root);
rmSync("dist", { recursive: true, force: true });

const common = {
  entryPoints: ["src/index.ts"],
  bundle: true,
  target: "es2022",
  platform: "neutral",
  logLevel: "warning",
  legalComments: "none",
};

// The deflate fallback stays a chunk of its own, loaded on first use.
await build({
  ...common,
  format: "esm",
  splitting: true,
  outdir: "dist",
  chunkNames: "[name]",
  external: ["@msgpack/msgpack", "fflate"],
});
await build({
  ...common,
  format: "cjs",
  outfile: "dist/index.cjs",
  external: ["@msgpack/msgpack", "fflate"],
});
await build({
  ...common,
  format: "esm",
  splitting: true,
  minify: true,
  outdir: "dist/browser",
  entryNames: "sockeye-sdk",
  chunkNames: "[name]",
  mainFields: ["module", "main"],
});

// The minified bundle carries code of @msgpack/msgpack and fflate: their
// licences travel with it.
writeFileSync(
  "dist/browser/LICENSES.txt",
  ["@msgpack/msgpack", "fflate"]
    .map((name) => `${name}\n\n${readFileSync(`node_modules/${name}/LICENSE`, "utf8").trim()}\n`)
    .join("\n---\n\n"),
);

execFileSync(
  process.execPath,
  [
    "node_modules/dts-bundle-generator/dist/bin/dts-bundle-generator.js",
    "--silent",
    "--no-banner",
    "--export-referenced-types=false",
    "-o",
    "dist/index.d.ts",
    "src/index.ts",
  ],
  { stdio: "inherit" },
);
// The same declarations for `require`: no relative imports, so one copy serves.
copyFileSync("dist/index.d.ts", "dist/index.d.cts");
