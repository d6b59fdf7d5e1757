// The MedSAM2 extension for stock OHIF 3.13 (loaded at start-up from window.config.extensions; no OHIF rebuild).
//
// It reaches OHIF only through what the viewer hands an extension (the services manager: viewport grid, display
// sets, segmentation, notifications, user authentication) and the cornerstone globals OHIF sets
// (window.cornerstone, window.cornerstoneTools): no React of its own, so its panel is plain DOM.
//
// The reader's loop: choose the object (name, colour); "Box" arms OHIF's RectangleROI tool, and the rectangle drawn
// on the key slice becomes a box prompt; the service (which opens the same study from PACS by its UIDs) answers
// that slice's mask; "Propagate" streams every slice into an OHIF labelmap segmentation (one segment per object)
// with progress and Cancel; "Click −"/"Click +" send a click on the shown slice; a brush or eraser edit on a slice
// is sent as that slice's mask before the next Propagate or Store; "Store" writes the SEG and SR to PACS, "Save for
// training" keeps the case. Slices are matched by SOP Instance UID (the session lists each slice's), never by index.
import { Api, ApiError } from "../../src/api.js";
import { decodeMask } from "../../src/volume.js";

const ID = "@medsam2/extension-ohif";
const config = () => window.config?.medsam2 ?? {};

class MedsamApi extends Api {
  async fetch(path, init) {
    return super.fetch(`${config().api ?? ""}${path}`, init);
  }
}

const api = new MedsamApi();
const log = []; // every prompt sent, for the reader's record (and the browser test)
let services = null;
let state = null; // the open session: { session, series, uidBySlice, sliceByUid, segmentationId, objects, ... }
let armed = null; // "box" | "click+" | "click-" | null
let running = null; // the AbortController of a propagation

function notify(message, type = "info") {
  services?.uiNotificationService?.show({ title: "MedSAM2", message, type, duration: type === "error" ? 10000 : 3000 });
  status(message);
}

function status(text) {
  const el = document.getElementById("medsam2-status");
  if (el) el.textContent = text;
}

/** What to do about a failed call, in the reader's words. */
function explain(error) {
  const why = error instanceof ApiError ? error.status : "";
  const advice = {
    UNAUTHENTICATED: "Enter your MedSAM2 token in the panel.",
    RESOURCE_EXHAUSTED: "The service is at a limit (sessions, study size or rate): close other studies or wait.",
    UNAVAILABLE: "The service or its PACS is not reachable: try again in a moment.",
    FAILED_PRECONDITION: "",
    ABORTED: "The session is busy: wait for the running propagation or cancel it.",
    NOT_FOUND: "The session expired: start again with a box.",
  }[why];
  return `${error.message}${advice ? ` ${advice}` : ""}`;
}

function guard(fn) {
  return async (...args) => {
    try {
      await fn(...args);
    } catch (error) {
      if (error?.name === "AbortError") return;
      notify(explain(error), "error");
    }
  };
}

// -- the study as the viewer shows it ---------------------------------------------------------------------------
function activeDisplaySet() {
  const { viewportGridService, displaySetService } = services;
  const viewportId = viewportGridService.getActiveViewportId();
  const uids = viewportGridService.getDisplaySetsUIDsForViewport(viewportId) ?? [];
  const displaySet = uids.map((uid) => displaySetService.getDisplaySetByUID(uid)).find((d) => d?.images?.length);
  if (!displaySet) throw new ApiError("Open an image series in the viewport first.");
  return { viewportId, displaySet };
}

function sopOf(imageId) {
  const instance = window.cornerstone.metaData.get("instance", imageId);
  return instance?.SOPInstanceUID ?? null;
}

async function ensureSession() {
  const { viewportId, displaySet } = activeDisplaySet();
  if (state && state.series === displaySet.SeriesInstanceUID) return state;
  if (state) await closeSession();
  const endpoint = config().endpoint ?? config().endpoints?.[0] ?? services.extensionManager?.activeDataSourceName;
  status(`Opening the series in MedSAM2 (PACS ${endpoint})…`);
  const session = await api.open({
    pacs: { endpoint, studyUid: displaySet.StudyInstanceUID, seriesUid: displaySet.SeriesInstanceUID },
    preprocessing: { preset: "auto" },
    kind: "STUDY_KIND_VOLUME",
    label: "OHIF",
  });
  const uids = session.sopInstanceUids ?? [];
  const shown = displaySet.images.map((image) => image.SOPInstanceUID);
  const missing = shown.filter((uid) => !uids.includes(uid));
  if (!uids.length || missing.length) {
    api.call("CloseSession", { sessionId: session.sessionId }).catch(() => {});
    throw new ApiError(`The service's copy of the series does not hold ${missing.length || shown.length} of the ` +
      "viewer's images (matched by SOP Instance UID): is it the same PACS?");
  }
  state = {
    session,
    viewportId,
    series: displaySet.SeriesInstanceUID,
    displaySet,
    uidBySlice: uids,
    sliceByUid: new Map(uids.map((uid, k) => [uid, k])),
    segmentationId: null,
    objects: new Map(), // objectId -> { label, colour, segmentIndex }
    sent: new Map(), // `${objectId}/${slice}` -> Uint8Array the service answered last (to find edits)
  };
  window.medsam2.state = state;
  return state;
}

async function closeSession() {
  const old = state;
  state = null;
  if (old) await api.call("CloseSession", { sessionId: old.session.sessionId }).catch(() => {});
}

// -- the segmentation OHIF shows ------------------------------------------------------------------------------
function currentObject() {
  const label = document.getElementById("medsam2-label").value.trim() || "object";
  const hex = document.getElementById("medsam2-colour").value;
  const colour = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  const id = Number(document.getElementById("medsam2-object").value) || 1;
  return { id, label, colour };
}

async function ensureSegment(object) {
  const { segmentationService } = services;
  if (!state.segmentationId) {
    state.segmentationId = await segmentationService.createLabelmapForDisplaySet(state.displaySet, {
      label: "MedSAM2",
      segments: { [object.id]: { label: object.label, active: true } },
    });
    await segmentationService.addSegmentationRepresentation(state.viewportId, {
      segmentationId: state.segmentationId,
    });
  } else if (!state.objects.has(object.id)) {
    segmentationService.addSegment(state.segmentationId, { segmentIndex: object.id, properties: { label: object.label } });
  }
  segmentationService.setSegmentLabel?.(state.segmentationId, object.id, object.label);
  segmentationService.setSegmentColor?.(state.viewportId, state.segmentationId, object.id, [...object.colour, 255]);
  state.objects.set(object.id, object);
}

/** The labelmap image of each slice, by SOP Instance UID of the image it labels. */
function labelmapImages() {
  const seg = window.cornerstoneTools.segmentation.state.getSegmentation(state.segmentationId);
  const ids = seg?.representationData?.Labelmap?.imageIds ?? [];
  const bySop = new Map();
  for (const id of ids) {
    const image = window.cornerstone.cache.getImage(id);
    const sop = image?.referencedImageId ? sopOf(image.referencedImageId) : null;
    if (sop) bySop.set(sop, image);
  }
  return bySop;
}

function pixelsOf(image) {
  return image.voxelManager ? image.voxelManager.getScalarData() : image.getPixelData();
}

/** Paint one SliceResult into the labelmap; returns whether anything was painted. */
function paint(result, images) {
  const uid = state.uidBySlice[result.slice ?? 0];
  const image = images.get(uid);
  if (!image) return false;
  const pixels = pixelsOf(image);
  for (const object of result.objects ?? []) {
    const mask = decodeMask(object.mask);
    const value = object.objectId;
    for (let i = 0; i < mask.length; i++) {
      if (mask[i]) pixels[i] = value;
      else if (pixels[i] === value) pixels[i] = 0;
    }
    state.sent.set(`${value}/${result.slice ?? 0}`, mask);
  }
  image.voxelManager?.setScalarData?.(pixels);
  return true;
}

function modified() {
  window.cornerstoneTools.segmentation.triggerSegmentationEvents.triggerSegmentationDataModified(state.segmentationId);
}

// -- prompts --------------------------------------------------------------------------------------------------
async function prompt(body, object) {
  await ensureSegment(object);
  const info = { label: object.label, colourRgb: object.colour };
  const result = await api.call("AddPrompt", { sessionId: state.session.sessionId, objectId: object.id, ...body,
                                               objectInfo: info, encoding: "MASK_ENCODING_RLE" });
  log.push({ ...body, objectId: object.id, label: object.label });
  paint(result, labelmapImages());
  modified();
  return result;
}

function imageCoords(imageId, world) {
  const [x, y] = window.cornerstone.utilities.worldToImageCoords(imageId, world);
  return [x, y];
}

const onAnnotation = guard(async (event) => {
  const annotation = event.detail?.annotation;
  if (armed !== "box" || annotation?.metadata?.toolName !== "RectangleROI") return;
  armed = null;
  restore?.();
  const imageId = annotation.metadata.referencedImageId;
  const points = annotation.data.handles.points.map((p) => imageCoords(imageId, p));
  window.cornerstoneTools.annotation.state.removeAnnotation(annotation.annotationUID);
  await ensureSession();
  const slice = state.sliceByUid.get(sopOf(imageId));
  if (slice === undefined) throw new ApiError("That image is not one of the series' slices.");
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  const box = { x0: Math.min(...xs), y0: Math.min(...ys), x1: Math.max(...xs), y1: Math.max(...ys) };
  const started = performance.now();
  await prompt({ slice, box }, currentObject());
  window.medsam2.timings.boxToMask = (performance.now() - started) / 1000;
  notify(`Segmented slice ${slice + 1} of ${state.uidBySlice.length}. Propagate to fill the series.`);
});

const onClick = guard(async (event) => {
  if (armed !== "click+" && armed !== "click-") return;
  const positive = armed === "click+";
  armed = null;
  restore?.();
  const viewport = activeCornerstoneViewport();
  const rect = event.currentTarget.getBoundingClientRect();
  const world = viewport.canvasToWorld([event.clientX - rect.left, event.clientY - rect.top]);
  const imageId = viewport.getCurrentImageId();
  const [x, y] = imageCoords(imageId, world);
  await ensureSession();
  const slice = state.sliceByUid.get(sopOf(imageId));
  await sendEdits();
  await prompt({ slice, points: [{ x, y, positive }], keepPreviousPoints: true }, currentObject());
  notify(`${positive ? "Positive" : "Negative"} click on slice ${slice + 1}. Propagate to re-track from there.`);
});

function activeCornerstoneViewport() {
  return services.cornerstoneViewportService.getCornerstoneViewport(services.viewportGridService.getActiveViewportId());
}

/** Brush or eraser edits (slices whose labelmap differs from what the service sent) as mask prompts. */
async function sendEdits() {
  if (!state?.segmentationId) return 0;
  const images = labelmapImages();
  let count = 0;
  for (const [objectId, object] of state.objects) {
    for (let slice = 0; slice < state.uidBySlice.length; slice++) {
      const image = images.get(state.uidBySlice[slice]);
      if (!image) continue;
      const pixels = pixelsOf(image);
      const known = state.sent.get(`${objectId}/${slice}`);
      let edited = false;
      let any = false;
      for (let i = 0; i < pixels.length; i++) {
        const mine = pixels[i] === objectId ? 1 : 0;
        any ||= mine === 1;
        if (mine !== (known ? known[i] : 0)) edited = true;
      }
      if (!edited || !any) continue;
      const { rows, columns } = image;
      const bits = new Uint8Array(Math.ceil((rows * columns) / 8));
      for (let i = 0; i < pixels.length; i++) if (pixels[i] === objectId) bits[i >> 3] |= 0x80 >> (i & 7);
      const mask = { rows, columns, encoding: "MASK_ENCODING_BITPACKED", data: btoa(String.fromCharCode(...bits)) };
      await prompt({ slice, mask }, object);
      count += 1;
    }
  }
  return count;
}

const propagate = guard(async () => {
  await ensureSession();
  if (running) throw new ApiError("A propagation is already running.");
  const edits = await sendEdits();
  running = new AbortController();
  const started = performance.now();
  let done = 0;
  const images = labelmapImages();
  try {
    await api.stream("Propagate", { sessionId: state.session.sessionId }, async (result) => {
      if (running?.signal.aborted) throw Object.assign(new Error("cancelled"), { name: "AbortError" });
      done += 1;
      paint(result, images);
      modified();
      status(`Propagating: ${done}${result.total ? ` of ${result.total}` : ""} slices`);
    });
  } finally {
    running = null;
  }
  const timings = window.medsam2.timings;
  (timings.propagations ??= []).push({ propagateToLast: (performance.now() - started) / 1000, slices: done });
  log.push({ op: "propagate", editsSent: edits });
  notify(`Propagated through ${done} slices.`);
});

const cancel = guard(async () => {
  if (!running || !state) return;
  running.abort();
  await api.call("CancelPropagation", { sessionId: state.session.sessionId });
  notify("Propagation cancelled: the slices drawn so far stay.");
});

const store = guard(async () => {
  await ensureSession();
  await sendEdits();
  const endpoint = config().endpoint ?? config().endpoints?.[0];
  const stored = await api.call("StoreResult", { sessionId: state.session.sessionId, endpoint });
  window.medsam2.stored = stored;
  notify(`Stored the SEG and SR in PACS ${endpoint}.`, "success");
});

const saveForTraining = guard(async () => {
  await ensureSession();
  await sendEdits();
  const saved = await api.call("SaveAnnotation", { sessionId: state.session.sessionId });
  notify(`Saved for training: ${saved.folder}/${saved.caseFile}.`, "success");
});

function arm(mode) {
  armed = mode;
  const { viewportId } = activeDisplaySet();
  const viewport = activeCornerstoneViewport();
  const group = window.cornerstoneTools.ToolGroupManager.getToolGroupForViewport(viewportId, viewport.renderingEngineId);
  // The primary button's tool (window/level, a brush...) yields until the prompt is given, then comes back.
  const primary = group.getActivePrimaryMouseButtonTool?.();
  if (primary && primary !== "RectangleROI") {
    group.setToolPassive(primary);
    restore = () => {
      if (group.hasTool("RectangleROI")) group.setToolPassive("RectangleROI");
      group.setToolActive(primary, { bindings: [{ mouseButton: 1 }] });
      restore = null;
    };
  }
  if (mode === "box") {
    if (!group.hasTool("RectangleROI")) group.addTool("RectangleROI");
    group.setToolActive("RectangleROI", { bindings: [{ mouseButton: 1 }] });
    status("Draw a box around the object on its key slice.");
  } else {
    status(`Click the ${mode === "click+" ? "object" : "background"} on the shown slice.`);
  }
}

let restore = null;

// -- where things are: for the reader's scripts and the browser test ---------------------------------------------
function imageIdOfSlice(slice) {
  const viewport = activeCornerstoneViewport();
  const uid = state.uidBySlice[slice];
  const ids = viewport.getImageIds();
  const index = ids.findIndex((id) => sopOf(id) === uid);
  if (index < 0) throw new ApiError(`slice ${slice} (${uid}) is not in the viewport`);
  return { viewport, imageId: ids[index], index };
}

/** Show service slice ``slice`` (found by its SOP Instance UID) in the active viewport. */
async function showSlice(slice) {
  await ensureSession();
  const { viewport, index } = imageIdOfSlice(slice);
  const uid = state.uidBySlice[slice];
  if (typeof viewport.setImageIdIndex === "function") {
    await viewport.setImageIdIndex(index);
  } else {
    // A volume viewport counts its slices along the view: try the image's index, then from the other end.
    const jump = window.cornerstone.utilities.jumpToSlice ?? window.cornerstoneTools.utilities.jumpToSlice;
    const count = viewport.getImageIds().length;
    for (const imageIndex of [index, count - 1 - index]) {
      await jump(viewport.element, { imageIndex });
      if (sopOf(viewport.getCurrentImageId()) === uid) break;
    }
  }
  viewport.render();
  if (sopOf(viewport.getCurrentImageId()) !== uid) throw new ApiError(`could not show slice ${slice} (${uid})`);
}

/** Page coordinates of pixel (x = column, y = row) of service slice ``slice`` (which must be shown). */
function pageOf(slice, x, y) {
  const { viewport, imageId } = imageIdOfSlice(slice);
  const world = window.cornerstone.utilities.imageToWorldCoords(imageId, [x, y]);
  const [cx, cy] = viewport.worldToCanvas(world);
  const rect = viewport.element.getBoundingClientRect();
  return [rect.left + cx, rect.top + cy];
}

/** What OHIF's labelmap holds: per SOP Instance UID, the pixel count and bit-packed mask of each object. */
function readLabelmap() {
  const images = labelmapImages();
  const out = {};
  for (const [sop, image] of images) {
    const pixels = pixelsOf(image);
    const perObject = {};
    for (const objectId of state.objects.keys()) {
      const bits = new Uint8Array(Math.ceil(pixels.length / 8));
      let count = 0;
      for (let i = 0; i < pixels.length; i++) {
        if (pixels[i] === objectId) {
          bits[i >> 3] |= 0x80 >> (i & 7);
          count += 1;
        }
      }
      perObject[objectId] = { count, bits: btoa(String.fromCharCode(...bits)) };
    }
    out[sop] = { rows: image.rows, columns: image.columns, objects: perObject };
  }
  return out;
}

// -- the panel ------------------------------------------------------------------------------------------------
function panel() {
  if (document.getElementById("medsam2-panel")) return;
  const root = document.createElement("div");
  root.id = "medsam2-panel";
  root.style.cssText = "position:fixed;left:12px;bottom:12px;z-index:1000;background:#090c29;color:#fff;" +
    "border:1px solid #3a3f99;border-radius:6px;padding:8px;font:12px sans-serif;display:grid;gap:4px;width:230px";
  const style = document.createElement("style");
  style.textContent = "#medsam2-panel input{color:#000;background:#fff;padding:1px 3px}" +
    "#medsam2-panel button{background:#3a3f99;color:#fff;border-radius:3px;padding:2px 6px;margin:1px}";
  document.head.appendChild(style);
  root.innerHTML = `<b>MedSAM2</b>
    <input id="medsam2-token" type="password" placeholder="MedSAM2 token (if the service wants one)">
    <label>Object <input id="medsam2-object" type="number" min="1" value="1" style="width:40px"></label>
    <input id="medsam2-label" value="lesion" placeholder="name">
    <input id="medsam2-colour" type="color" value="#e6194b">
    <div><button id="medsam2-box">Box</button> <button id="medsam2-neg">Click −</button>
    <button id="medsam2-pos">Click +</button></div>
    <div><button id="medsam2-propagate">Propagate</button> <button id="medsam2-cancel">Cancel</button></div>
    <div><button id="medsam2-store">Store</button> <button id="medsam2-save">Save for training</button></div>
    <div id="medsam2-status">Open a series, then draw a box.</div>`;
  document.body.appendChild(root);
  const token = root.querySelector("#medsam2-token");
  token.value = api.token;
  token.addEventListener("change", () => {
    api.setToken(token.value.trim());
  });
  root.querySelector("#medsam2-box").addEventListener("click", guard(async () => arm("box")));
  root.querySelector("#medsam2-neg").addEventListener("click", guard(async () => arm("click-")));
  root.querySelector("#medsam2-pos").addEventListener("click", guard(async () => arm("click+")));
  root.querySelector("#medsam2-propagate").addEventListener("click", propagate);
  root.querySelector("#medsam2-cancel").addEventListener("click", cancel);
  root.querySelector("#medsam2-store").addEventListener("click", store);
  root.querySelector("#medsam2-save").addEventListener("click", saveForTraining);
}

function attach() {
  // The viewport's element exists once a study is open; clicks there are prompts when armed.
  for (const el of document.querySelectorAll(".cornerstone-viewport-element")) {
    if (el.dataset.medsam2) continue;
    el.dataset.medsam2 = "1";
    el.addEventListener("click", onClick, true);
  }
  if (document.querySelector(".cornerstone-viewport-element")) panel();
}

export default {
  id: ID,
  preRegistration({ servicesManager }) {
    services = servicesManager.services;
    // OHIF served by medsam2: DICOMweb goes through the gateway's proxy with the reader's medsam2 token (the PACS
    // credentials stay there). A site's own OHIF keeps its own authentication: its PACS never sees our token.
    if (config().proxy === true) {
      services.userAuthenticationService.setServiceImplementation({
        getAuthorizationHeader: () => (api.token ? { Authorization: `Bearer ${api.token}` } : {}),
      });
    }
    window.medsam2 = {
      api, log, timings: {}, state: null, propagate, store, arm, sendEdits, showSlice, pageOf, readLabelmap,
    };
    const ready = setInterval(() => {
      if (!window.cornerstone || !window.cornerstoneTools) return;
      clearInterval(ready);
      window.cornerstone.eventTarget.addEventListener(
        window.cornerstoneTools.Enums.Events.ANNOTATION_COMPLETED, onAnnotation);
    }, 200);
    new MutationObserver(attach).observe(document.body, { childList: true, subtree: true });
    window.addEventListener("pagehide", () => closeSession());
  },
};
