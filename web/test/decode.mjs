// Read a NIfTI file and decode masks with the page's own code (web/src/volume.js), for tests/test_web_decoding.py.
// Usage: node decode.mjs <nifti-file> <masks.json>; prints JSON.
import { readFile } from "node:fs/promises";
import { createHash } from "node:crypto";
import { basename } from "node:path";
import { decodeMask, readNifti } from "../src/volume.js";

const [path, masksPath] = process.argv.slice(2);
const out = {};
try {
  const volume = await readNifti(new File([await readFile(path)], basename(path)));
  out.volume = {
    shape: [volume.slices, volume.rows, volume.columns], spacing: volume.spacing, dtype: volume.dtype,
    sha256: createHash("sha256").update(new Uint8Array(volume.voxels.buffer, volume.voxels.byteOffset,
                                                       volume.voxels.byteLength)).digest("hex"),
  };
} catch (error) {
  out.error = error.message;
}
if (masksPath) {
  const masks = JSON.parse(await readFile(masksPath, "utf8"));
  out.masks = masks.map((m) => Array.from(decodeMask(m)).join(""));
}
console.log(JSON.stringify(out));
