// End-to-end check of built .wasm modules under a real WebAssembly engine (Node's), playing the
// host side of ABI v1 (sdk/ABI.md) with an in-memory state store: init, alloc, process, decode.
// Usage: node smoke.mjs DIST_DIR   (expects the file names build.sh writes)
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";

const dist = process.argv[2] ?? "dist";
const enc = new TextEncoder();
const dec = new TextDecoder();
let failures = 0;

function instantiate(file, env) {
  const state = new Map();
  const host = { state, logs: [], error: null, memory: null, jsonFindCalls: 0, jsonEqualsCalls: 0 };
  const mem = () => new Uint8Array(host.memory.buffer);
  const read = (ptr, len) => mem().slice(ptr, ptr + len);
  const copyIfFits = (value, dst, cap) => {
    if (value === undefined) return -1;
    if (value.length <= cap) mem().set(value, dst);
    return value.length;
  };
  const runnel = {
    log: (level, ptr, len) => host.logs.push([level, dec.decode(read(ptr, len))]),
    set_error: (ptr, len) => { host.error = dec.decode(read(ptr, len)); },
    state_get: (kp, kl, dst, cap) => copyIfFits(state.get(dec.decode(read(kp, kl))), dst, cap),
    state_put: (kp, kl, vp, vl) => { state.set(dec.decode(read(kp, kl)), read(vp, vl)); return 0; },
    state_delete: (kp, kl) => { state.delete(dec.decode(read(kp, kl))); return 0; },
    env_get: (np, nl, dst, cap) => {
      const v = env[dec.decode(read(np, nl))];
      return copyIfFits(v === undefined ? undefined : enc.encode(v), dst, cap);
    },
    // The json-find extension's import, refusing every call as a host may (-1): the SDK then
    // scans the values itself. Runnel's own answers are tested in runtime/tests/json_find.rs.
    json_find: () => { host.jsonFindCalls++; return -1; },
    // The json-equals extension's import, refusing likewise (runtime/tests/json_equals.rs).
    json_equals: () => { host.jsonEqualsCalls++; return -1; },
  };
  const module = new WebAssembly.Module(readFileSync(join(dist, file)));
  const instance = new WebAssembly.Instance(module, { runnel });
  host.memory = instance.exports.memory;
  host.exports = instance.exports;
  return host;
}

function encodeBatch(records, partition = 0) {
  const parts = [];
  const u32 = (n) => { const b = new Uint8Array(4); new DataView(b.buffer).setUint32(0, n, true); parts.push(b); };
  const i32 = (n) => { const b = new Uint8Array(4); new DataView(b.buffer).setInt32(0, n, true); parts.push(b); };
  const i64 = (n) => { const b = new Uint8Array(8); new DataView(b.buffer).setBigInt64(0, BigInt(n), true); parts.push(b); };
  const bytes = (s) => { if (s === null) { i32(-1); } else { const b = enc.encode(s); i32(b.length); parts.push(b); } };
  u32(1); i32(partition); u32(records.length);
  records.forEach((r, i) => { i64(r.offset ?? i); i64(r.ts ?? 0); bytes(r.key ?? null); bytes(r.value ?? null); u32(0); });
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let pos = 0;
  for (const p of parts) { out.set(p, pos); pos += p.length; }
  return out;
}

// A forwarded input (the keep-input extension, only after runnel_abi_features accepted it) is
// its output index with the top bit set, then the input's position: decoded as {index, input}.
const FORWARD = 0x80000000;

function decodeOutput(buf) {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let pos = 0;
  const u32 = () => { const v = view.getUint32(pos, true); pos += 4; return v; };
  const i32 = () => { const v = view.getInt32(pos, true); pos += 4; return v; };
  const bytes = () => { const n = i32(); if (n === -1) return null; const s = dec.decode(buf.slice(pos, pos + n)); pos += n; return s; };
  const outs = [];
  for (let n = u32(); n > 0; n--) {
    const index = u32();
    if (index >= FORWARD) { outs.push({ index: index - FORWARD, input: u32() }); continue; }
    const ts = Number(view.getBigInt64(pos, true)); pos += 8;
    const key = bytes(), value = bytes();
    for (let h = u32(); h > 0; h--) { bytes(); bytes(); }
    outs.push({ index, ts, key, value });
  }
  return outs;
}

function processBatch(host, input) {
  const ptr = host.exports.runnel_alloc(input.length);
  new Uint8Array(host.memory.buffer).set(input, ptr);
  const packed = host.exports.runnel_process(ptr, input.length);
  if (packed < 0n) return { code: Number(packed), error: host.error };
  const outPtr = Number(packed >> 32n), outLen = Number(packed & 0xffffffffn);
  return { outputs: decodeOutput(new Uint8Array(host.memory.buffer).slice(outPtr, outPtr + outLen)) };
}

function expectEq(name, got, want) {
  const g = JSON.stringify(got), w = JSON.stringify(want);
  if (g === w) { console.log(`ok   ${name}`); } else { failures++; console.log(`FAIL ${name}\n     got  ${g}\n     want ${w}`); }
}

const click = '{"user":"u1","action":"click","page":"/home"}';
const view = '{"user":"u2","action":"view","page":"/cart"}';
const pick = (r) => r.outputs ? r.outputs.map((o) => [o.index, o.value]) : r;

// json-filter
{
  const h = instantiate("json-filter.wasm", { FIELD: "action", EQUALS: "click" });
  expectEq("json-filter abi version", h.exports.runnel_abi_version(), 1);
  expectEq("json-filter init", h.exports.runnel_init(), 0);
  expectEq("json-filter keeps clicks", pick(processBatch(h, encodeBatch([{ value: click }, { value: view }]))), [[0, click]]);
  const bad = processBatch(h, new Uint8Array([1, 0, 0, 0, 0]));
  expectEq("json-filter malformed batch is -2", [bad.code, /malformed/.test(bad.error)], [-2, true]);
  expectEq("json-filter still works after a failed batch", pick(processBatch(h, encodeBatch([{ value: click }]))), [[0, click]]);
}
// json-filter under a host that offers keep-input: kept records come back as their positions
{
  const h = instantiate("json-filter.wasm", { FIELD: "action", EQUALS: "click" });
  expectEq("json-filter accepts keep-input", Number(h.exports.runnel_abi_features(1n)), 1);
  expectEq("json-filter accepts only what is offered", Number(h.exports.runnel_abi_features(8n)), 0);
  expectEq("json-filter speaks plain v1 when nothing is offered",
    pick(processBatch(h, encodeBatch([{ value: view }, { value: click }]))), [[0, click]]);
  h.exports.runnel_abi_features(1n);
  const kept = processBatch(h, encodeBatch([{ value: view }, { value: click }, { value: click }]));
  expectEq("json-filter forwards kept inputs by position", kept.outputs, [{ index: 0, input: 1 }, { index: 0, input: 2 }]);
  expectEq("json-filter accepts json-find", Number(h.exports.runnel_abi_features(3n)), 3);
  const found = processBatch(h, encodeBatch([{ value: view }, { value: click }, { value: "not json" }]));
  expectEq("json-filter asks json_find once per batch and scans itself when refused",
    [found.outputs, h.jsonFindCalls], [[{ index: 0, input: 1 }], 1]);
  expectEq("json-filter accepts json-equals", Number(h.exports.runnel_abi_features(7n)), 7);
  const tested = processBatch(h, encodeBatch([{ value: click }, { value: view }, { value: "not json" }]));
  expectEq("json-filter asks json_equals once per batch and falls back to json_find, then scans",
    [tested.outputs, h.jsonEqualsCalls, h.jsonFindCalls], [[{ index: 0, input: 0 }], 1, 2]);
}
// json-filter without config: init fails with a message
{
  const h = instantiate("json-filter.wasm", {});
  expectEq("json-filter init without FIELD fails", [h.exports.runnel_init() !== 0, /FIELD/.test(h.error)], [true, true]);
}
// json-project
{
  const h = instantiate("json-project.wasm", { FIELDS: "page:url,user" });
  expectEq("json-project", pick(processBatch(h, encodeBatch([{ value: click }]))), [[0, '{"url":"/home","user":"u1"}']]);
}
// router
{
  const h = instantiate("router.wasm", { FIELD: "action", ROUTES: "click:1", DEFAULT: "2" });
  expectEq("router", pick(processBatch(h, encodeBatch([{ value: click }, { value: view }]))), [[1, click], [2, view]]);
}
// dedup: state carries across batches
{
  const h = instantiate("dedup.wasm", { WINDOW_MS: "1000" });
  const b1 = processBatch(h, encodeBatch([{ key: "a", value: "1", ts: 0 }, { key: "a", value: "2", ts: 10 }]));
  const b2 = processBatch(h, encodeBatch([{ key: "a", value: "3", ts: 500 }, { key: "a", value: "4", ts: 1500 }]));
  expectEq("dedup", [pick(b1), pick(b2), h.state.size], [[[0, "1"]], [[0, "4"]], 1]);
}
// hello-transform
{
  const h = instantiate("hello-transform.wasm", { SALT: "s" });
  const r = processBatch(h, encodeBatch([{ value: click, ts: 7 }, { value: view }, { value: "oops" }]));
  const ok = r.outputs && r.outputs.length === 2 && r.outputs[0].index === 0 && r.outputs[1].index === 1 &&
    !r.outputs[0].value.includes('"u1"') && r.outputs[0].key.startsWith("u-") && r.outputs[0].ts === 7;
  expectEq("hello-transform masks and routes", ok, true);
  expectEq("hello-transform logs the dropped record", h.logs.length === 1 && h.logs[0][0] === 1, true);
  const err = processBatch(h, encodeBatch([{ value: '{"action":"click"}', offset: 41 }]));
  expectEq("hello-transform error is -1 with message", [err.code, err.error], [-1, 'record at offset 41: event has no "user" string']);
}

// The C example of ABI.md (built only when clang can target wasm32).
if (existsSync(join(dist, "c-passthrough.wasm"))) {
  const h = instantiate("c-passthrough.wasm", {});
  const r = processBatch(h, encodeBatch([{ key: "k", value: click, ts: 3 }, { key: null, value: null }]));
  expectEq("c-passthrough", r.outputs, [{ index: 0, ts: -1, key: "k", value: click }, { index: 0, ts: -1, key: null, value: null }]);
  const bad = processBatch(h, new Uint8Array([1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0]));
  expectEq("c-passthrough malformed", [bad.code, bad.error], [-2, "malformed input batch"]);
}

if (failures) { console.log(`${failures} smoke check(s) failed`); process.exit(1); }
