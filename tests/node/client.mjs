// A Node.js client of the session service, written from proto/ only (and the google/rpc protos it names).
//
// node client.mjs TARGET VOXELS.raw SLICES ROWS COLUMNS KEY "x0,y0,x1,y1" FIX GOOGLE_PROTOS_DIR
// Uploads the uint8 study, boxes object 1 on slice KEY, propagates, corrects slice FIX with a negative click,
// propagates again, then reads the result. A viewer's view: every streamed message replaces its objects' masks on
// its slice (the final messages last). Prints one JSON line: what was streamed and whether the view equals
// GetResult's object-id labels; and the google.rpc details of a refused prompt (object_id 0).
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const [target, voxelFile, s, r, c, key, boxText, fix, googleProtos] = process.argv.slice(2);
const [slices, rows, columns, keySlice, fixSlice] = [s, r, c, key, fix].map(Number);
const box = boxText.split(",").map(Number);
const here = path.dirname(fileURLToPath(import.meta.url));
const protoRoot = path.resolve(here, "../../proto");
const options = { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true };
const definition = protoLoader.loadSync("medsam2/v1/segmentation.proto", { ...options, includeDirs: [protoRoot] });
const api = grpc.loadPackageDefinition(definition).medsam2.v1;
const rpcRoot = new protobuf.Root();
rpcRoot.resolvePath = (_origin, name) => path.join(googleProtos, name);
rpcRoot.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });
const Status = rpcRoot.lookupType("google.rpc.Status");
const client = new api.SegmentationService(target, grpc.credentials.createInsecure(), {
  "grpc.max_receive_message_length": 64 << 20,
});
const metadata = new grpc.Metadata();
metadata.set("x-medsam2-session", "node-client-study"); // the routing key a consistent-hash router hashes

const unary = (method, request) =>
  new Promise((resolve, reject) => client[method](request, metadata, (error, reply) => (error ? reject(error) : resolve(reply))));
const stream = (method, request) =>
  new Promise((resolve, reject) => {
    const messages = [];
    const call = client[method](request, metadata);
    call.on("data", (m) => messages.push(m));
    call.on("error", reject);
    call.on("end", () => resolve(messages));
  });

// MASK_ENCODING_BITPACKED: row-major bits, most significant bit first, padded to a whole byte.
function unpack(mask) {
  const out = new Uint8Array(mask.rows * mask.columns);
  for (let i = 0; i < out.length; i++) out[i] = (mask.data[i >> 3] >> (7 - (i & 7))) & 1;
  return out;
}

const view = new Map(); // "slice/object" -> Uint8Array
function paint(messages) {
  for (const m of messages) for (const o of m.objects) view.set(`${m.slice}/${o.object_id}`, unpack(o.mask));
}

const voxels = readFileSync(voxelFile);
const session = await new Promise((resolve, reject) => {
  const call = client.CreateSession(metadata, (error, reply) => (error ? reject(error) : resolve(reply)));
  call.write({
    header: {
      shape: [slices, rows, columns],
      dtype: "DATA_TYPE_UINT8",
      preprocessing: { preset: "none" },
      kind: "STUDY_KIND_VOLUME",
    },
  });
  for (let offset = 0; offset < voxels.length; offset += 1 << 20) call.write({ voxels: voxels.subarray(offset, offset + (1 << 20)) });
  call.end();
});
const sid = session.session_id;
const [x0, y0, x1, y1] = box;
paint([await unary("AddPrompt", { session_id: sid, object_id: 1, slice: keySlice, box: { x0, y0, x1, y1 } })]);
const first = await stream("Propagate", { session_id: sid });
paint(first);
const click = { x: (x0 + x1) / 2, y: (y0 + y1) / 2, positive: false };
paint([await unary("AddPrompt", { session_id: sid, object_id: 1, slice: fixSlice, points: [click], correction: true })]);
const second = await stream("Propagate", { session_id: sid });
paint(second);
const chunks = await stream("GetResult", {
  session_id: sid,
  format: "RESULT_FORMAT_RAW_LABELS",
  label_values: "LABEL_VALUES_OBJECT_IDS",
});
const raw = Buffer.concat(chunks.map((chunk) => chunk.data));
const labels = new Uint16Array(raw.buffer, raw.byteOffset, raw.length / 2);
let mismatched = 0;
let voxelsOfObject = 0;
const plane = rows * columns;
for (let k = 0; k < slices; k++) {
  const painted = view.get(`${k}/1`) ?? new Uint8Array(plane);
  for (let i = 0; i < plane; i++) {
    const stored = labels[k * plane + i] === 1 ? 1 : 0;
    voxelsOfObject += stored;
    if (stored !== painted[i]) mismatched++;
  }
}

let refused = null;
try {
  await unary("AddPrompt", { session_id: sid, object_id: 0, slice: keySlice, box: { x0, y0, x1, y1 } });
} catch (error) {
  // The rich status travels in the grpc-status-details-bin trailer as a google.rpc.Status.
  const status = Status.decode(error.metadata.get("grpc-status-details-bin")[0]);
  const details = {};
  for (const any of status.details) {
    const type = rpcRoot.lookupType(any.type_url.split("/").pop());
    details[type.name] = type.toObject(type.decode(any.value), { longs: Number, enums: String, defaults: true });
  }
  refused = { code: error.code, details };
}
await unary("CloseSession", { session_id: sid });
client.close();

console.log(
  JSON.stringify({
    session_id: sid,
    first: first.map((m) => ({ slice: m.slice, pass: m.pass, final: m.final, done: m.done, total: m.total })),
    second: second.map((m) => ({ slice: m.slice, pass: m.pass, final: m.final })),
    label_map: chunks[0].labels,
    voxels: voxelsOfObject,
    mismatched,
    refused,
  }),
);
