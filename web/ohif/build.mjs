// Set-up of the OHIF viewer the gateway serves at /ohif/, and the MedSAM2 extension it loads.
// Usage: node ohif/build.mjs [outdir]   (default: ../services/medsam2/gateway/ohif, gitignored)
//
// OHIF comes from the npm package @ohif/app, pinned by version and by the sha256 of its tarball (ohif.json),
// fetched with `npm pack` (only the tarball, none of its dependencies: its dist/ is the prebuilt viewer). Nothing
// of OHIF is committed. The prebuilt dist assumes it lives at "/"; the copy here is moved to /ohif/ by rewriting
// the three places that say so (index.html's links, window.PUBLIC_URL, webpack's public path). ONNX Runtime Web
// (OHIF's in-browser AI tools), the microscopy viewer and source maps are left out (190 MB the service never uses).
// The extension (src/) is bundled with esbuild into one ES module, medsam2/extension.js.
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const pin = JSON.parse(readFileSync(join(here, "ohif.json"), "utf8"));
const outdir = resolve(process.argv[2] ?? join(here, "..", "..", "services", "medsam2", "gateway", "ohif"));
const base = pin.base; // where the gateway serves it
const cache = join(here, ".cache");
const tarball = join(cache, `ohif-app-${pin.version}.tgz`);

mkdirSync(cache, { recursive: true });
if (!existsSync(tarball)) {
  execFileSync("npm", ["pack", `${pin.package}@${pin.version}`, "--pack-destination", cache, "--silent"], {
    stdio: ["ignore", "ignore", "inherit"],
  });
}
const digest = createHash("sha256").update(readFileSync(tarball)).digest("hex");
if (digest !== pin.sha256) {
  rmSync(tarball, { force: true });
  throw new Error(`${pin.package}@${pin.version}: sha256 ${digest}, expected ${pin.sha256} (ohif.json); removed`);
}
const unpacked = join(cache, `ohif-app-${pin.version}`);
rmSync(unpacked, { recursive: true, force: true });
mkdirSync(unpacked, { recursive: true });
execFileSync("tar", ["-xzf", tarball, "-C", unpacked]);
const dist = join(unpacked, "package", "dist");

rmSync(outdir, { recursive: true, force: true });
const skip = new Set(["ort", "dicom-microscopy-viewer"]);
cpSync(dist, outdir, {
  recursive: true,
  filter: (src) => !src.endsWith(".map") && !skip.has(src.slice(dist.length + 1).split("/")[0]),
});
// Moved to `base`: every absolute link of index.html, PUBLIC_URL, and webpack's public path for its chunks.
const index = join(outdir, "index.html");
let html = readFileSync(index, "utf8");
html = html.replaceAll('href="/', `href="${base}`).replaceAll('src="/', `src="${base}`);
html = html.replaceAll('window.PUBLIC_URL="/"', `window.PUBLIC_URL="${base}"`);
writeFileSync(index, html);
// Webpack's public path for chunks, in the app bundle and in each worker bundle (each has its own runtime).
const publicPath = '__webpack_require__.p = "/";';
const bundles = readdirSync(outdir).filter((n) => n.endsWith(".js"));
const moved = [];
for (const name of bundles) {
  const file = join(outdir, name);
  const code = readFileSync(file, "utf8");
  if (!code.includes(publicPath)) continue;
  writeFileSync(file, code.replaceAll(publicPath, `__webpack_require__.p = "${base}";`));
  moved.push(name);
}
if (!moved.some((n) => /^app\.bundle\.[0-9a-f]+\.js$/.test(n))) {
  throw new Error(`${pin.package}@${pin.version}: the app bundle's public path is not where 3.13 has it`);
}
rmSync(join(outdir, "app-config.js")); // the gateway writes it from the configured PACS endpoints
writeFileSync(join(outdir, "VERSION"), `${pin.package}@${pin.version} sha256:${pin.sha256}\n`);
rmSync(unpacked, { recursive: true, force: true });

await build({
  entryPoints: [join(here, "src", "extension.js")],
  outfile: join(outdir, "medsam2", "extension.js"),
  bundle: true,
  format: "esm",
  target: "es2022",
  minify: true,
  legalComments: "linked",
  logLevel: "warning",
});
console.log(`OHIF ${pin.version} with the MedSAM2 extension built into ${outdir}`);
