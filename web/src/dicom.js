// A DICOM folder as a volume: the largest series of uncompressed single-frame slices, sorted along its normal.
import dicomParser from "dicom-parser";
import { Volume } from "./volume.js";

const UNCOMPRESSED = new Set(["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"]);

/** Read the slices of one series from the files of a folder; throws a message that names the problem. */
export async function readDicomFolder(files) {
  const slices = [];
  const problems = new Set();
  for (const file of files) {
    let data;
    try {
      data = dicomParser.parseDicom(new Uint8Array(await file.arrayBuffer()));
    } catch {
      continue; // DICOMDIR, thumbnails, notes: not slices
    }
    if (!data.elements.x7fe00010) continue;
    const syntax = (data.string("x00020010") ?? "").replace(/\0/g, "").trim();
    if (!UNCOMPRESSED.has(syntax)) {
      problems.add(`transfer syntax ${syntax || "unknown"} is compressed (the page reads uncompressed DICOM only)`);
      continue;
    }
    if ((data.intString("x00280008") ?? 1) > 1) {
      problems.add("multi-frame images are not read in the page");
      continue;
    }
    slices.push(slice(data, file.name));
  }
  if (!slices.length) {
    const why = problems.size ? `: ${[...problems].join("; ")}` : " (no file with pixel data parsed as DICOM)";
    throw new Error(`The folder has no DICOM slices the viewer can read${why}.`);
  }
  const bySeries = new Map();
  for (const s of slices) bySeries.set(s.series, [...(bySeries.get(s.series) ?? []), s]);
  const series = [...bySeries.values()].sort((a, b) => b.length - a.length)[0];
  const { rows, columns } = series[0];
  if (series.some((s) => s.rows !== rows || s.columns !== columns)) {
    throw new Error("The series mixes slice sizes: open one series at a time.");
  }
  series.sort((a, b) => a.along - b.along || a.instance - b.instance);
  const gaps = series.slice(1).map((s, i) => Math.abs(s.along - series[i].along)).filter((g) => g > 0);
  const sliceSpacing = gaps.length ? gaps.sort((a, b) => a - b)[Math.floor(gaps.length / 2)] : series[0].thickness;
  const plane = rows * columns;
  const values = new Float32Array(plane * series.length);
  series.forEach((s, i) => values.set(s.values, i * plane));
  const integral = values.every((v) => Number.isInteger(v) && v >= -32768 && v <= 32767);
  return new Volume({ columns, rows, slices: series.length, spacing: [sliceSpacing || 1, ...series[0].pixelSpacing],
                      voxels: integral ? Int16Array.from(values) : values,
                      dtype: integral ? "DATA_TYPE_INT16" : "DATA_TYPE_FLOAT32" });
}

function slice(data, name) {
  const rows = data.uint16("x00280010");
  const columns = data.uint16("x00280011");
  const bits = data.uint16("x00280100");
  const signed = data.uint16("x00280103") === 1;
  const element = data.elements.x7fe00010;
  const count = rows * columns;
  if ((data.uint16("x00280002") ?? 1) !== 1) throw new Error(`${name} is a colour image: open a greyscale series.`);
  if (element.length < count * (bits / 8)) throw new Error(`${name} has less pixel data than ${rows}×${columns}.`);
  const bytes = data.byteArray.slice(element.dataOffset, element.dataOffset + count * (bits / 8));
  let raw;
  if (bits === 16) raw = signed ? new Int16Array(bytes.buffer) : new Uint16Array(bytes.buffer);
  else if (bits === 8) raw = bytes;
  else throw new Error(`${name} has ${bits} bits per pixel, which the viewer does not read.`);
  const slope = data.floatString("x00281053") ?? 1;
  const intercept = data.floatString("x00281052") ?? 0;
  const values = Float32Array.from(raw, (v) => v * slope + intercept);
  const position = [0, 1, 2].map((i) => data.floatString("x00200032", i));
  const orientation = [0, 1, 2, 3, 4, 5].map((i) => data.floatString("x00200037", i));
  let along = data.intString("x00200013") ?? 0;
  if (position.every(Number.isFinite) && orientation.every(Number.isFinite)) {
    const [a, b, c, d, e, f] = orientation;
    const normal = [b * f - c * e, c * d - a * f, a * e - b * d];
    along = position[0] * normal[0] + position[1] * normal[1] + position[2] * normal[2];
  }
  return {
    rows, columns, values, along,
    series: data.string("x0020000e") ?? "",
    instance: data.intString("x00200013") ?? 0,
    thickness: data.floatString("x00180050") ?? 1,
    pixelSpacing: [data.floatString("x00280030", 0) || 1, data.floatString("x00280030", 1) || 1],
  };
}
