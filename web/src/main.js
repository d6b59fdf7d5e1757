// The MedSAM2 web viewer: NiiVue for display, the service's HTTP gateway for everything else.
import { Niivue } from "@niivue/niivue";
import { Api, ApiError } from "./api.js";
import { readDicomFolder } from "./dicom.js";
import { decodeMask, displayNifti, readNifti } from "./volume.js";

const $ = (id) => document.getElementById(id);
// NiiVue's default drawing colours ("$itksnap"): pen 1 red, 2 green, 3 blue, 4 yellow, 5 cyan, 6 magenta.
const PEN_COLOURS = ["#ff0000", "#00ff00", "#0000ff", "#ffff00", "#00ffff", "#ff00ff"];
const FILE_EXTENSIONS = { RESULT_FORMAT_NIFTI_GZ: ".nii.gz", RESULT_FORMAT_NPZ: ".npz", RESULT_FORMAT_RAW_LABELS: ".raw",
                          RESULT_FORMAT_DICOM_SEG: ".dcm" };

const api = new Api();
const nv = new Niivue({ backColor: [0, 0, 0, 1], show3Dcrosshair: false, crosshairWidth: 0, isOrientCube: false,
                        dragModePrimary: 6 /* roiSelection: a box while dragging, then onDragRelease */ });
const state = { volume: null, session: null, propagating: false, propagatedOnce: false, lastSlice: null };

function status(message, { error = false } = {}) {
  const line = $("status");
  line.textContent = message;
  line.classList.toggle("error", error);
}

function fail(error) {
  console.error(error);
  status(error instanceof ApiError || error instanceof Error ? error.message : String(error), { error: true });
}

function pen(objectId) {
  return ((objectId - 1) % PEN_COLOURS.length) + 1;
}

function currentObject() {
  return Math.max(1, Math.min(255, Number($("object").value) || 1));
}

function currentSlice() {
  return Number($("slice").value);
}

// -- display ----------------------------------------------------------------------------------
async function show(volume, session) {
  state.volume = volume;
  state.session = session;
  state.propagatedOnce = false;
  while (nv.volumes.length) nv.removeVolume(nv.volumes[0]);
  await nv.loadFromArrayBuffer(displayNifti(volume), "study.nii");
  nv.setSliceType(nv.sliceTypeAxial);
  nv.createEmptyDrawing();
  nv.setDrawOpacity(0.45);
  applyWindow();
  const slider = $("slice");
  slider.max = String(volume.slices - 1);
  slider.disabled = false;
  goToSlice(Math.floor(volume.slices / 2));
  $("propagate").disabled = true;
  $("download").disabled = true;
  $("store").disabled = true;
  $("save-annotation").disabled = true;
  $("measurements").tBodies[0].replaceChildren();
  document.body.dataset.session = session.sessionId;
  document.body.dataset.source = "upload";
  delete document.body.dataset.stored;
  delete document.body.dataset.savedCase;
}

function goToSlice(slice) {
  const { columns, rows } = state.volume;
  const frac = nv.vox2frac([Math.floor(columns / 2), Math.floor(rows / 2), slice]);
  nv.scene.crosshairPos = frac;
  nv.drawScene();
  syncSlice(slice);
}

function syncSlice(slice) {
  $("slice").value = String(slice);
  $("slice-label").textContent = `${slice + 1} / ${state.volume.slices}`;
  document.body.dataset.slice = String(slice);
}

function applyWindow() {
  const volume = nv.volumes[0];
  if (!volume) return;
  const choice = $("window").value;
  if (choice === "auto") {
    volume.cal_min = volume.robust_min;
    volume.cal_max = volume.robust_max;
  } else {
    const [width, level] = choice.replace("m", "").split("/").map(Number);
    volume.cal_min = level - width / 2;
    volume.cal_max = level + width / 2;
  }
  nv.updateGLVolume();
}

/** Paint one slice's object masks into NiiVue's drawing layer (rows flipped like the display copy). */
function paint(result) {
  const { columns, rows } = state.volume;
  const bitmap = nv.drawBitmap;
  const base = result.slice * columns * rows;
  for (const object of result.objects ?? []) {
    const mask = decodeMask(object.mask);
    const value = pen(object.objectId);
    for (let y = 0; y < rows; y++) {
      const row = base + (rows - 1 - y) * columns;
      for (let x = 0; x < columns; x++) {
        const i = row + x;
        if (mask[y * columns + x]) bitmap[i] = value;
        else if (bitmap[i] === value) bitmap[i] = 0;
      }
    }
  }
}

function redraw() {
  nv.refreshDrawing(true);
  nv.drawScene();
}

// -- opening studies --------------------------------------------------------------------------
async function openVolume(volume, label) {
  status(`Uploading ${label} (${volume.columns}×${volume.rows}×${volume.slices})…`);
  const header = { shape: [volume.slices, volume.rows, volume.columns], dtype: volume.dtype,
                   spacingMm: volume.spacing, preprocessing: { preset: $("preset").value }, kind: "STUDY_KIND_VOLUME" };
  const session = await api.upload(header, volume.voxels);
  await show(volume, session);
  status(`Opened ${label}: ${volume.slices} slices. Drag a box around the object on its key slice.`);
}

async function openFile(file) {
  let volume;
  try {
    volume = await readNifti(file);
  } catch (error) {
    throw new ApiError(error.message);
  }
  await openVolume(volume, file.name);
}

async function openDicom(files) {
  const volume = await readDicomFolder(files);
  await openVolume(volume, `a DICOM series of ${volume.slices} files`);
}

// -- prompts ----------------------------------------------------------------------------------
async function prompt(request) {
  const result = await api.call("AddPrompt", { sessionId: state.session.sessionId, ...request });
  paint(result);
  redraw();
  $("propagate").disabled = false;
  return result;
}

async function onDragRelease(params) {
  if (!state.session || state.propagating || params.tileIdx < 0) return;
  const { rows } = state.volume;
  const [x0, y0, z] = params.voxStart.map(Math.round);
  const [x1, y1] = params.voxEnd.map(Math.round);
  const mode = document.querySelector("input[name=mode]:checked").value;
  const objectId = currentObject();
  syncSlice(z);
  // Display rows are flipped: the service's row is rows - 1 - display row.
  if (mode === "box") {
    if (Math.abs(x1 - x0) < 2 || Math.abs(y1 - y0) < 2) {
      status("Drag to draw a box (a click is too small); or choose + click / − click.");
      return;
    }
    const box = { x0: Math.min(x0, x1), x1: Math.max(x0, x1) + 1,
                  y0: rows - 1 - Math.max(y0, y1), y1: rows - Math.min(y0, y1) };
    status(`Box on slice ${z + 1} for object ${objectId}…`);
    await prompt({ objectId, slice: z, box, mask: undefined });
    state.lastPrompt = { slice: z, kind: "box" };
    status(`Box on slice ${z + 1}: object ${objectId} segmented there. Propagate to track it through the study.`);
  } else {
    const positive = mode === "positive";
    const point = { x: x1 + 0.5, y: rows - 1 - y1 + 0.5, positive };
    // After a propagation a click corrects that slice: the next Propagate re-tracks from it, away from the key
    // slice, and leaves the other slices as they were (the service's one meaning of a correction).
    const correction = Boolean(state.propagatedOnce);
    await prompt({ objectId, slice: z, points: [point], keepPreviousPoints: true, correction });
    state.lastPrompt = { slice: z, kind: "click" };
    status(`${positive ? "Positive" : "Negative"} click on slice ${z + 1}. Propagate again to carry the correction.`);
  }
}

async function propagate() {
  if (!state.session || state.propagating) return;
  state.propagating = true;
  $("propagate").disabled = true;
  const progress = $("progress");
  progress.value = 0;
  $("progress-label").textContent = "";
  const started = performance.now();
  // MedSAM2's 3D protocol: objects not yet propagated run from their key slice; corrected ones re-track from
  // the corrected slice outward.
  const request = { sessionId: state.session.sessionId, encoding: "MASK_ENCODING_BITPACKED" };
  let done = 0;
  let total = 0;
  let pending = false;
  document.body.dataset.propagation = "running";
  status("Propagating…");
  try {
    await api.stream("Propagate", request, (result) => {
      done = result.done;
      total = result.total;
      paint(result);
      progress.max = total;
      progress.value = done;
      $("progress-label").textContent = `${done} / ${total} slices (${result.pass})`;
      if (!pending) {
        pending = true;
        requestAnimationFrame(() => { pending = false; redraw(); });
      }
    }, (error, seconds) => {
      // The server is draining (a restart) or gone: the stream starts over, here or on another replica.
      status(`${error.reason || error.status}: propagating again in ${seconds.toFixed(1)} s…`);
    });
    redraw();
    await new Promise((resolve) => requestAnimationFrame(resolve));
    const seconds = (performance.now() - started) / 1000;
    document.body.dataset.propagation = "done";
    document.body.dataset.propagationSeconds = seconds.toFixed(3);
    state.propagatedOnce = true;
    status(`Propagated ${total} slices in ${seconds.toFixed(1)} s.`);
    $("download").disabled = false;
    $("store").disabled = false;
    $("save-annotation").disabled = false;
    await measure();
  } catch (error) {
    document.body.dataset.propagation = "failed";
    const where = total ? ` after ${done} of ${total} slices` : "";
    throw new ApiError(`Propagation stopped${where}: ${error.message}`);
  } finally {
    state.propagating = false;
    $("propagate").disabled = false;
  }
}

async function measure() {
  const body = $("measurements").tBodies[0];
  const result = await api.measurements(state.session.sessionId);
  body.replaceChildren(...result.objects.map((o) => {
    const row = document.createElement("tr");
    const recist = o.recist ? `${o.recist.longAxisMm.toFixed(1)} × ${o.recist.shortAxisMm.toFixed(1)}` : "–";
    for (const text of [o.objectId, o.volumeMl.toFixed(2), recist, o.recist ? o.recist.slice + 1 : "–"]) {
      const cell = document.createElement("td");
      cell.textContent = String(text);
      row.append(cell);
    }
    return row;
  }));
}

// -- results ----------------------------------------------------------------------------------
async function download() {
  const format = $("format").value;
  const blob = await api.download("GetResult", { sessionId: state.session.sessionId, format });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = `segmentation${FILE_EXTENSIONS[format] ?? ".bin"}`;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  status(`Downloaded ${link.download} (${blob.size} bytes).`);
}

async function store() {
  const endpoint = $("pacs-endpoint").value.trim();
  if (!endpoint) throw new ApiError("Name the PACS endpoint to store to (the server lists its endpoints below).");
  status(`Storing the segmentation (DICOM SEG and SR) to PACS ${endpoint}…`);
  // A fresh request id per click: a retried request stores nothing twice, and unchanged results are the same
  // two objects again on the PACS.
  const answer = await api.call("StoreResult", { sessionId: state.session.sessionId, endpoint,
                                                 requestId: crypto.randomUUID() });
  document.body.dataset.stored = answer.segSopInstanceUid;
  status(`Stored to PACS ${endpoint}: SEG ${answer.segSopInstanceUid} and SR ${answer.srSopInstanceUid} ` +
         `in study ${answer.studyUid}.`);
}

async function saveAnnotation() {
  status("Saving the image and the corrected masks as a training case…");
  const answer = await api.call("SaveAnnotation", { sessionId: state.session.sessionId,
                                                    requestId: crypto.randomUUID() });
  document.body.dataset.savedCase = `${answer.folder}/${answer.caseFile}`;
  status(`Saved training case ${answer.caseFile} (objects ${answer.objectIds.join(", ")}) in the server's ` +
         `annotation store, folder ${answer.folder}.`);
}

// A DICOM UID: digits and dots, at most 64 characters (PS3.5 9.1).
const UID = /^[0-9]+(\.[0-9]+)*$/;

async function openPacs(event) {
  event.preventDefault();
  const endpoint = $("pacs-endpoint").value.trim();
  const studyUid = $("pacs-study").value.trim();
  const seriesUid = $("pacs-series").value.trim();
  for (const [name, uid] of [["Study Instance UID", studyUid], ["Series Instance UID", seriesUid]]) {
    if (name.startsWith("Study") && !uid) throw new ApiError("Enter the Study Instance UID of the study to open.");
    if (uid && (!UID.test(uid) || uid.length > 64)) {
      throw new ApiError(`"${uid}" is not a ${name}: a UID is digits and dots, at most 64 characters.`);
    }
  }
  if (!endpoint) throw new ApiError("Name the PACS endpoint to open the study from.");
  if (!api.has("GetImage")) {
    throw new ApiError("This server cannot send a study's pixels to the page (no GetImage): open the series " +
                       "as a DICOM folder instead.");
  }
  status(`Fetching study ${studyUid} from PACS ${endpoint}…`);
  let session;
  try {
    // keepImage: the server keeps the voxels as loaded, so the page can show them (GetImage) in HU.
    session = await api.open({ pacs: { endpoint, studyUid, seriesUid }, preprocessing: { preset: $("preset").value },
                               kind: "STUDY_KIND_VOLUME", keepImage: true });
  } catch (error) {
    throw new ApiError(`Cannot open study ${studyUid} from PACS ${endpoint}: ${error.message}`,
      { status: error.status, httpStatus: error.httpStatus });
  }
  status(`Loading the study's image (${session.shape.join("×")})…`);
  let volume;
  try {
    const blob = await api.download("GetImage", { sessionId: session.sessionId });
    volume = await readNifti(new File([blob], "study.nii.gz"));
    const shape = [volume.slices, volume.rows, volume.columns];
    if (shape.join() !== session.shape.join()) {
      throw new ApiError(`the server sent an image of ${shape.join("×")} for a session of ${session.shape.join("×")}`);
    }
  } catch (error) {
    // A session the page cannot show is of no use: close it rather than leave it to the TTL.
    api.call("CloseSession", { sessionId: session.sessionId }).catch(() => {});
    throw new ApiError(`Opened study ${studyUid}, but its image did not load: ${error.message}`);
  }
  await show(volume, session);
  document.body.dataset.source = "pacs";
  status(`Opened PACS study ${studyUid}: ${volume.slices} slices${session.modality ? ` (${session.modality})` : ""}. ` +
         "Drag a box around the object on its key slice.");
}

// -- start ------------------------------------------------------------------------------------
async function checkServer() {
  await api.describe();
  const formats = api.enumValues("medsam2.v1.ResultFormat").filter((f) => !f.endsWith("UNSPECIFIED"));
  $("format").replaceChildren(...formats.map((f) => new Option(f.replace("RESULT_FORMAT_", "").toLowerCase(), f)));
  if (formats.includes("RESULT_FORMAT_NIFTI_GZ")) $("format").value = "RESULT_FORMAT_NIFTI_GZ";
  $("store").hidden = !api.has("StoreResult");
  $("pacs-form").hidden = false;
  try {
    await api.call("ListSessions");
  } catch (error) {
    if (error.httpStatus === 401) {
      status(api.token ? error.message : "This server needs a token: sign in above.", { error: Boolean(api.token) });
      document.body.dataset.auth = "needed";
      return;
    }
    throw error;
  }
  document.body.dataset.auth = "ok";
  if (api.has("GetServerInfo")) {
    const info = await api.call("GetServerInfo").catch(() => null);
    if (info) {
      $("server-info").textContent = JSON.stringify(info);
      // Storing needs a PACS endpoint on the server: without one the button would only ever fail.
      const endpoints = info.pacsEndpoints ?? [];
      if (!endpoints.length) $("store").hidden = true;
      if (endpoints.length && !$("pacs-endpoint").value) $("pacs-endpoint").value = endpoints[0];
      // Saving needs the server's annotation store (--annotations-dir).
      $("save-annotation").hidden = !(info.capabilities ?? []).includes("save-annotation");
    }
  }
}

function guard(fn) {
  return (...args) => Promise.resolve().then(() => fn(...args)).catch(fail);
}

async function main() {
  await nv.attachToCanvas($("gl"));
  nv.onDragRelease = guard(onDragRelease);
  nv.onLocationChange = (location) => {
    if (state.volume && location?.vox) syncSlice(Math.round(location.vox[2]));
  };
  $("token").value = api.token;
  $("signin").addEventListener("submit", guard(async (event) => {
    event.preventDefault();
    api.setToken($("token").value.trim());
    status("Signing in…");
    await checkServer();
    if (document.body.dataset.auth === "ok") status("Signed in. Open a study to start.");
  }));
  $("file").addEventListener("change", guard(async (event) => {
    if (event.target.files.length) await openFile(event.target.files[0]);
  }));
  $("dicom").addEventListener("change", guard(async (event) => {
    if (event.target.files.length) await openDicom(Array.from(event.target.files));
  }));
  $("pacs-form").addEventListener("submit", guard(openPacs));
  $("slice").addEventListener("input", () => state.volume && goToSlice(currentSlice()));
  $("window").addEventListener("change", applyWindow);
  $("object").addEventListener("input", () => { $("swatch").dataset.colour = String(pen(currentObject())); swatch(); });
  $("propagate").addEventListener("click", guard(propagate));
  $("download").addEventListener("click", guard(download));
  $("store").addEventListener("click", guard(store));
  $("save-annotation").addEventListener("click", guard(saveAnnotation));
  swatch();
  await guard(checkServer)();
  // For tests and automation: where a voxel of the current slice is on the page (CSS pixels).
  window.medsam2Viewer = {
    voxelToPage(x, y) {
      const { rows } = state.volume;
      const frac = nv.vox2frac([x, rows - 1 - y, currentSlice()]);
      const { pos } = nv.frac2canvasPosWithTile(frac, nv.sliceTypeAxial);
      const rect = $("gl").getBoundingClientRect();
      const scale = window.devicePixelRatio || 1;
      return [rect.left + pos[0] / scale, rect.top + pos[1] / scale];
    },
    /** The study's value at a voxel as the page holds it (HU for CT: what window presets act on). */
    voxelValue(x, y, slice) {
      const { columns, rows } = state.volume;
      return Number(state.volume.voxels[(slice * rows + y) * columns + x]);
    },
    overlayVoxels(slice) {
      const { columns, rows } = state.volume;
      return nv.drawBitmap.subarray(slice * columns * rows, (slice + 1) * columns * rows).reduce((n, v) => n + (v > 0), 0);
    },
  };
  document.body.dataset.ready = "true";
}

function swatch() {
  $("swatch").style.background = PEN_COLOURS[pen(currentObject()) - 1];
}

main().catch(fail);
