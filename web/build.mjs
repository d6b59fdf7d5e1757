// Bundle the viewer with esbuild into the Python package's static folder (generated, not committed).
// Usage: node build.mjs [outdir]   (default: ../services/medsam2/gateway/static)
import { build } from "esbuild";
import { copyFileSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const outdir = resolve(process.argv[2] ?? join(here, "..", "services", "medsam2", "gateway", "static"));
rmSync(outdir, { recursive: true, force: true });
mkdirSync(outdir, { recursive: true });
await build({
  entryPoints: [join(here, "src", "main.js")],
  outfile: join(outdir, "app.js"),
  bundle: true,
  format: "esm",
  target: "es2022",
  minify: true,
  legalComments: "linked",
  logLevel: "warning",
});
for (const name of ["index.html", "style.css"]) copyFileSync(join(here, "src", name), join(outdir, name));
console.log(`web viewer built into ${outdir}`);
