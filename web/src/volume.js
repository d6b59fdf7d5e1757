// Studies as the service sees them: voxels [slices, rows, columns] in C order, spacing (slice, row, column) in mm.

/** A study: dims, spacing, voxels (a typed array in C order), and the service's name of their element type. */
export class Volume {
  constructor({ columns, rows, slices, spacing, voxels, dtype }) {
    Object.assign(this, { columns, rows, slices, spacing, voxels, dtype });
  }
}

const NIFTI_TYPES = {
  2: [Uint8Array, "DATA_TYPE_UINT8"],
  4: [Int16Array, "DATA_TYPE_INT16"],
  8: [Int32Array, "DATA_TYPE_INT32"],
  16: [Float32Array, "DATA_TYPE_FLOAT32"],
  64: [Float64Array, "DATA_TYPE_FLOAT64"],
  256: [Int8Array, null],
  512: [Uint16Array, "DATA_TYPE_UINT16"],
  768: [Uint32Array, null],
};

/** Read a NIfTI-1 file (plain or gzipped); throws a message that names the problem. */
export async function readNifti(file) {
  let buffer = await file.arrayBuffer();
  const head = new Uint8Array(buffer, 0, Math.min(2, buffer.byteLength));
  if (head[0] === 0x1f && head[1] === 0x8b) {
    try {
      buffer = await new Response(new Blob([buffer]).stream().pipeThrough(new DecompressionStream("gzip")))
        .arrayBuffer();
    } catch {
      throw new Error(`${file.name} is gzipped but does not decompress: it is damaged or not a NIfTI image.`);
    }
  }
  if (buffer.byteLength < 348) throw new Error(`${file.name} is not a NIfTI image (too short for a NIfTI header).`);
  const view = new DataView(buffer);
  let little = true;
  if (view.getInt32(0, true) !== 348) {
    if (view.getInt32(0, false) === 348) little = false;
    else if (view.getInt32(0, true) === 540) throw new Error(`${file.name} is NIfTI-2: save it as NIfTI-1.`);
    else throw new Error(`${file.name} is not a NIfTI image (no NIfTI-1 header).`);
  }
  const magic = String.fromCharCode(...new Uint8Array(buffer, 344, 3));
  if (magic !== "n+1") throw new Error(`${file.name} is not a single-file NIfTI-1 image (magic "${magic}").`);
  const dim = Array.from({ length: 8 }, (_, i) => view.getInt16(40 + 2 * i, little));
  const [ndim, columns, rows, slices] = dim;
  const extra = dim.slice(4, 1 + ndim).reduce((a, b) => a * Math.max(b, 1), 1);
  if (ndim < 2 || columns < 1 || rows < 1 || extra > 1) {
    throw new Error(`${file.name} has ${ndim} dimensions ${dim.slice(1, 1 + ndim).join("×")}: open a 3D volume.`);
  }
  const datatype = view.getInt16(70, little);
  if (!NIFTI_TYPES[datatype]) throw new Error(`${file.name} has NIfTI data type ${datatype}, which the viewer does not read.`);
  const [Kind, dtype] = NIFTI_TYPES[datatype];
  const pixdim = Array.from({ length: 4 }, (_, i) => Math.abs(view.getFloat32(76 + 4 * i, little)) || 1);
  const offset = Math.max(352, Math.round(view.getFloat32(108, little)));
  const count = columns * rows * Math.max(slices, 1);
  if (offset + count * Kind.BYTES_PER_ELEMENT > buffer.byteLength) {
    throw new Error(`${file.name} is truncated: the header promises ${count} voxels.`);
  }
  let voxels = readArray(view, offset, count, Kind, little);
  const slope = view.getFloat32(112, little);
  const inter = view.getFloat32(116, little);
  let type = dtype;
  if ((slope && slope !== 1) || inter || !dtype) {
    voxels = Float32Array.from(voxels, (v) => v * (slope || 1) + inter);
    type = "DATA_TYPE_FLOAT32";
  }
  return new Volume({ columns, rows, slices: Math.max(slices, 1), spacing: [pixdim[3], pixdim[2], pixdim[1]],
                      voxels, dtype: type });
}

function readArray(view, offset, count, Kind, little) {
  if (little && offset % Kind.BYTES_PER_ELEMENT === 0) return new Kind(view.buffer.slice(offset, offset + count * Kind.BYTES_PER_ELEMENT));
  const out = new Kind(count);
  const size = Kind.BYTES_PER_ELEMENT;
  const get = { 1: "Int8", 2: "Int16", 4: "Int32", 8: "Float64" };
  const name = Kind === Float32Array ? "Float32" : Kind === Uint8Array ? "Uint8" : Kind === Uint16Array ? "Uint16"
    : Kind === Uint32Array ? "Uint32" : get[size];
  for (let i = 0; i < count; i++) out[i] = view[`get${name}`](offset + i * size, little);
  return out;
}

/** The display copy of a volume as NIfTI-1 (float32, row 0 at the top, the file's orientation ignored). */
export function displayNifti(volume) {
  const { columns, rows, slices, spacing, voxels } = volume;
  const buffer = new ArrayBuffer(352 + columns * rows * slices * 4);
  const view = new DataView(buffer);
  view.setInt32(0, 348, true);
  [3, columns, rows, slices, 1, 1, 1, 1].forEach((v, i) => view.setInt16(40 + 2 * i, v, true));
  view.setInt16(70, 16, true);
  view.setInt16(72, 32, true);
  [1, spacing[2], spacing[1], spacing[0], 1, 1, 1, 1].forEach((v, i) => view.setFloat32(76 + 4 * i, v, true));
  view.setFloat32(108, 352, true);
  view.setFloat32(112, 1, true);
  view.setInt16(254, 2, true); // sform_code: aligned
  [[spacing[2], 0, 0, 0], [0, spacing[1], 0, 0], [0, 0, spacing[0], 0]].forEach((row, r) =>
    row.forEach((v, c) => view.setFloat32(280 + 16 * r + 4 * c, v, true)));
  [0x6e, 0x2b, 0x31, 0].forEach((v, i) => view.setUint8(344 + i, v));
  const out = new Float32Array(buffer, 352);
  const plane = columns * rows;
  for (let z = 0; z < slices; z++) {
    for (let y = 0; y < rows; y++) {
      // NiiVue draws +y upwards; flipping rows shows row 0 at the top, as the service and DICOM count them.
      out.set(voxels.subarray(z * plane + y * columns, z * plane + (y + 1) * columns),
              z * plane + (rows - 1 - y) * columns);
    }
  }
  return buffer;
}

/** Decode a proto-JSON Mask (bit-packed or run-length) into a Uint8Array of rows×columns (0/1). */
export function decodeMask(mask) {
  const rows = mask.rows;
  const columns = mask.columns;
  const bytes = Uint8Array.from(atob(mask.data ?? ""), (c) => c.charCodeAt(0));
  const out = new Uint8Array(rows * columns);
  if (mask.encoding === "MASK_ENCODING_RLE") {
    const runs = new DataView(bytes.buffer);
    let position = 0;
    for (let r = 0; r * 4 < bytes.length; r++) {
      const length = runs.getUint32(r * 4, true);
      if (r % 2 === 1) out.fill(1, position, position + length);
      position += length;
    }
    return out;
  }
  for (let i = 0; i < out.length; i++) out[i] = (bytes[i >> 3] >> (7 - (i & 7))) & 1;
  return out;
}
