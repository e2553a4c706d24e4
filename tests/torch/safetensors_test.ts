// safetensors: byte-exact agreement with the reference writer (huggingface safetensors), round
// trips of every supported dtype, clear errors on corrupt files, atomic writes, header-only
// reads.
import assert from "node:assert/strict";
import {
  deserializeSafetensors,
  type DType,
  fromTypedArray,
  liveTensors,
  loadSafetensors,
  parseSafetensorsHeader,
  readSafetensorsHeader,
  saveSafetensors,
  serializeSafetensors,
  type Tensor,
  tensor,
  TorchError,
  zeros,
} from "../../mod.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

// The reference's own test vector (safetensors' Rust `test_serialization`): one F32 tensor
// "attn.0" of shape [1, 2, 3] holding 0..5. Header length 64, so no padding.
// deno-fmt-ignore
const ATTN_DOT_0 = new Uint8Array([
  64, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 46, 48, 34, 58, 123, 34, 100,
  116, 121, 112, 101, 34, 58, 34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34,
  58, 91, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102, 115,
  101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 0, 0, 0, 0, 0, 0, 128, 63,
  0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64,
]);

// The reference's alignment vector: "attn0" of shape [1, 1, 2, 3]; the 65-byte JSON is padded
// with 7 spaces to a header of 72 bytes.
// deno-fmt-ignore
const ATTN0 = new Uint8Array([
  72, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 48, 34, 58, 123, 34, 100, 116,
  121, 112, 101, 34, 58, 34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58,
  91, 49, 44, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102, 115,
  101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 32, 32, 32, 32, 32, 32, 32,
  0, 0, 0, 0, 0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64,
]);

// The reference's empty file: "{}" padded with 6 spaces, header length 8.
// deno-fmt-ignore
const EMPTY = new Uint8Array([8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32]);

// A file as the reference writes it for metadata {"format": "pt"} and ten tensors of eight
// dtypes (0-d and empty included). Header (600 bytes: 599 of JSON + 1 space):
// {"__metadata__":{"format":"pt"},
//  "l":{"dtype":"I64","shape":[2],"data_offsets":[0,16]},      [-5, 2^40 + 1]
//  "d":{"dtype":"F64","shape":[1],"data_offsets":[16,24]},     [0.1]
//  "e":{"dtype":"F32","shape":[0,3],"data_offsets":[24,24]},   empty
//  "s":{"dtype":"F32","shape":[],"data_offsets":[24,28]},      42 (0-d)
//  "w":{"dtype":"F32","shape":[2],"data_offsets":[28,36]},     [0.5, -3.25]
//  "idx":{"dtype":"I32","shape":[2],"data_offsets":[36,44]},   [-1, 7]
//  "brain":{"dtype":"BF16","shape":[2],"data_offsets":[44,48]},[1, -0.5]
//  "half":{"dtype":"F16","shape":[2],"data_offsets":[48,52]},  [1.5, -2]
//  "pix":{"dtype":"U8","shape":[2,2],"data_offsets":[52,56]},  [[0, 255], [7, 128]]
//  "flag":{"dtype":"BOOL","shape":[3],"data_offsets":[56,59]}} [true, false, true]
// (no whitespace in the real header). Order: descending dtype rank, then name.
// deno-fmt-ignore
const MULTI = new Uint8Array([
  88, 2, 0, 0, 0, 0, 0, 0, 123, 34, 95, 95, 109, 101, 116, 97, 100, 97,
  116, 97, 95, 95, 34, 58, 123, 34, 102, 111, 114, 109, 97, 116, 34, 58, 34, 112,
  116, 34, 125, 44, 34, 108, 34, 58, 123, 34, 100, 116, 121, 112, 101, 34, 58, 34,
  73, 54, 52, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58, 91, 50, 93, 44, 34,
  100, 97, 116, 97, 95, 111, 102, 102, 115, 101, 116, 115, 34, 58, 91, 48, 44, 49,
  54, 93, 125, 44, 34, 100, 34, 58, 123, 34, 100, 116, 121, 112, 101, 34, 58, 34,
  70, 54, 52, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58, 91, 49, 93, 44, 34,
  100, 97, 116, 97, 95, 111, 102, 102, 115, 101, 116, 115, 34, 58, 91, 49, 54, 44,
  50, 52, 93, 125, 44, 34, 101, 34, 58, 123, 34, 100, 116, 121, 112, 101, 34, 58,
  34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58, 91, 48, 44, 51,
  93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102, 115, 101, 116, 115, 34, 58, 91,
  50, 52, 44, 50, 52, 93, 125, 44, 34, 115, 34, 58, 123, 34, 100, 116, 121, 112,
  101, 34, 58, 34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58, 91,
  93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102, 115, 101, 116, 115, 34, 58, 91,
  50, 52, 44, 50, 56, 93, 125, 44, 34, 119, 34, 58, 123, 34, 100, 116, 121, 112,
  101, 34, 58, 34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58, 91,
  50, 93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102, 115, 101, 116, 115, 34, 58,
  91, 50, 56, 44, 51, 54, 93, 125, 44, 34, 105, 100, 120, 34, 58, 123, 34, 100,
  116, 121, 112, 101, 34, 58, 34, 73, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101,
  34, 58, 91, 50, 93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102, 115, 101, 116,
  115, 34, 58, 91, 51, 54, 44, 52, 52, 93, 125, 44, 34, 98, 114, 97, 105, 110,
  34, 58, 123, 34, 100, 116, 121, 112, 101, 34, 58, 34, 66, 70, 49, 54, 34, 44,
  34, 115, 104, 97, 112, 101, 34, 58, 91, 50, 93, 44, 34, 100, 97, 116, 97, 95,
  111, 102, 102, 115, 101, 116, 115, 34, 58, 91, 52, 52, 44, 52, 56, 93, 125, 44,
  34, 104, 97, 108, 102, 34, 58, 123, 34, 100, 116, 121, 112, 101, 34, 58, 34, 70,
  49, 54, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58, 91, 50, 93, 44, 34, 100,
  97, 116, 97, 95, 111, 102, 102, 115, 101, 116, 115, 34, 58, 91, 52, 56, 44, 53,
  50, 93, 125, 44, 34, 112, 105, 120, 34, 58, 123, 34, 100, 116, 121, 112, 101, 34,
  58, 34, 85, 56, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58, 91, 50, 44, 50,
  93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102, 115, 101, 116, 115, 34, 58, 91,
  53, 50, 44, 53, 54, 93, 125, 44, 34, 102, 108, 97, 103, 34, 58, 123, 34, 100,
  116, 121, 112, 101, 34, 58, 34, 66, 79, 79, 76, 34, 44, 34, 115, 104, 97, 112,
  101, 34, 58, 91, 51, 93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102, 115, 101,
  116, 115, 34, 58, 91, 53, 54, 44, 53, 57, 93, 125, 125, 32, 251, 255, 255, 255,
  255, 255, 255, 255, 1, 0, 0, 0, 0, 1, 0, 0, 154, 153, 153, 153, 153, 153,
  185, 63, 0, 0, 40, 66, 0, 0, 0, 63, 0, 0, 80, 192, 255, 255, 255, 255,
  7, 0, 0, 0, 128, 63, 0, 191, 0, 62, 0, 192, 0, 255, 7, 128, 1, 0,
  1,
]);

function freeAllIn(ts: Record<string, Tensor>): void {
  for (const t of Object.values(ts)) t.free();
}

function isTorchError(re: RegExp): (e: unknown) => boolean {
  return (e) => {
    assert.ok(e instanceof TorchError, `expected a TorchError, got ${e}`);
    assert.match(e.message, re);
    return true;
  };
}

/** A file with the given header text (padded with spaces to a multiple of 8) and data. */
function file(header: string, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const json = enc.encode(header);
  const len = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + len + data.length).fill(0x20, 8, 8 + len);
  new DataView(out.buffer).setBigUint64(0, BigInt(len), true);
  out.set(json, 8);
  out.set(data, 8 + len);
  return out;
}

function headerText(bytes: Uint8Array): string {
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true));
  return dec.decode(bytes.subarray(8, 8 + n));
}

/** Tensor names in the order the header text lists them (JSON.parse would reorder "0", "1"). */
function headerOrder(bytes: Uint8Array): string[] {
  const names: string[] = [];
  for (const m of headerText(bytes).matchAll(/("(?:[^"\\]|\\.)*"):\{"dtype"/g)) {
    names.push(JSON.parse(m[1]));
  }
  return names;
}

/** The tensors of MULTI, created in an order unrelated to the file's. */
function multiTensors(): Record<string, Tensor> {
  return {
    flag: tensor([true, false, true]),
    w: tensor([0.5, -3.25]),
    pix: tensor([[0, 255], [7, 128]], { dtype: "uint8" }),
    e: zeros([0, 3]),
    half: tensor([1.5, -2], { dtype: "float16" }),
    d: tensor([0.1], { dtype: "float64" }),
    idx: tensor([-1, 7], { dtype: "int32" }),
    s: tensor(42),
    l: fromTypedArray(BigInt64Array.from([-5n, 2n ** 40n + 1n]), [2]),
    brain: tensor([1, -0.5], { dtype: "bfloat16" }),
  };
}

function checkMulti(ts: Record<string, Tensor>): void {
  const want: Record<string, [DType, number[], unknown]> = {
    l: ["int64", [2], [-5n, 2n ** 40n + 1n]],
    d: ["float64", [1], [0.1]],
    e: ["float32", [0, 3], []],
    s: ["float32", [], [42]],
    w: ["float32", [2], [0.5, -3.25]],
    idx: ["int32", [2], [-1, 7]],
    brain: ["bfloat16", [2], [1, -0.5]],
    half: ["float16", [2], [1.5, -2]],
    pix: ["uint8", [2, 2], [0, 255, 7, 128]],
    flag: ["bool", [3], [1, 0, 1]],
  };
  assert.deepEqual(Object.keys(ts).sort(), Object.keys(want).sort());
  for (const [name, [dtype, shape, values]] of Object.entries(want)) {
    const t = ts[name];
    assert.equal(t.dtype, dtype, name);
    assert.deepEqual(t.shape, shape, name);
    assert.deepEqual(Array.from(t.toTypedArray() as ArrayLike<unknown>), values, name);
  }
}

Deno.test("safetensors: the reference's published vectors, byte for byte", () => {
  const before = liveTensors();
  const data = fromTypedArray(Float32Array.from([0, 1, 2, 3, 4, 5]), [1, 2, 3]);
  const data4 = data.reshape([1, 1, 2, 3]);
  assert.deepEqual(serializeSafetensors({ "attn.0": data }), ATTN_DOT_0);
  assert.deepEqual(serializeSafetensors({ attn0: data4 }), ATTN0);
  assert.deepEqual(serializeSafetensors({}), EMPTY);
  data.free();
  data4.free();

  for (
    const [bytes, name, shape] of [[ATTN_DOT_0, "attn.0", [1, 2, 3]], [ATTN0, "attn0", [
      1,
      1,
      2,
      3,
    ]]] as const
  ) {
    const { tensors, metadata } = deserializeSafetensors(bytes);
    assert.deepEqual(Object.keys(tensors), [name]);
    assert.deepEqual(metadata, {});
    assert.equal(tensors[name].dtype, "float32");
    assert.deepEqual(tensors[name].shape, shape);
    assert.deepEqual(Array.from(tensors[name].toTypedArray() as Float32Array), [0, 1, 2, 3, 4, 5]);
    freeAllIn(tensors);
  }
  const empty = deserializeSafetensors(EMPTY);
  assert.deepEqual(empty, { tensors: {}, metadata: {} });
  const h = parseSafetensorsHeader(ATTN0);
  assert.equal(h.dataStart, 80);
  assert.deepEqual(h.tensors, [["attn0", {
    dtype: "F32",
    shape: [1, 1, 2, 3],
    data_offsets: [0, 24],
  }]]);
  assert.equal(liveTensors(), before);
});

Deno.test("safetensors: a multi-dtype file with metadata matches the reference bytes", () => {
  const before = liveTensors();
  const ts = multiTensors();
  const bytes = serializeSafetensors(ts, { format: "pt" });
  assert.equal(bytes.length, 667);
  assert.deepEqual(bytes, MULTI);
  freeAllIn(ts);

  const back = deserializeSafetensors(MULTI);
  assert.deepEqual(back.metadata, { format: "pt" });
  checkMulti(back.tensors);
  // and writing what was read gives the same bytes again
  assert.deepEqual(serializeSafetensors(back.tensors, back.metadata), MULTI);
  freeAllIn(back.tensors);
  assert.equal(liveTensors(), before);
});

Deno.test("safetensors: files from other writers (any key order, whitespace) are read", () => {
  const before = liveTensors();
  // __metadata__ last, tensors listed out of offset order, pretty-printed JSON, 0-d tensor
  const header = `{
    "b": {"dtype": "I64", "shape": [], "data_offsets": [8, 16]},
    "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
    "__metadata__": {"epoch": "3", "note": "\u00e9t\u00e9"}
  }`;
  const data = new Uint8Array(16);
  const dv = new DataView(data.buffer);
  dv.setFloat32(0, 1.25, true);
  dv.setFloat32(4, -8, true);
  dv.setBigInt64(8, -42n, true);
  const { tensors, metadata } = deserializeSafetensors(file(header, data));
  assert.deepEqual(metadata, { epoch: "3", note: "été" });
  assert.deepEqual(Array.from(tensors.a.toTypedArray() as Float32Array), [1.25, -8]);
  assert.deepEqual(tensors.b.shape, []);
  assert.equal(tensors.b.dtype, "int64");
  assert.equal(tensors.b.item(), -42);
  freeAllIn(tensors);
  assert.equal(liveTensors(), before);
});

Deno.test("safetensors: header order is dtype rank, then byte-wise name; __metadata__ first", () => {
  const before = liveTensors();
  const f = (v: number) => tensor([v]);
  // integer-like names would jump to the front of a JS object; U+E000 sorts before U+1F600 in
  // UTF-8 (the reference compares bytes) but after it in UTF-16
  const ts: Record<string, Tensor> = {
    "m": tensor([1], { dtype: "uint8" }),
    "b": f(1),
    "\u{1F600}": f(2),
    "2": f(3),
    "a": f(4),
    "\u{E000}": f(5),
    "10": f(6),
    "z": tensor([7], { dtype: "int64" }),
    "k": tensor([8], { dtype: "int8" }),
    "j": tensor([9], { dtype: "int16" }),
    "__proto__x": f(10),
  };
  const bytes = serializeSafetensors(ts, {});
  assert.deepEqual(headerOrder(bytes), [
    "z",
    "10",
    "2",
    "__proto__x",
    "a",
    "b",
    "\u{E000}",
    "\u{1F600}",
    "j",
    "k",
    "m",
  ]);
  // metadata given (even empty) is written first, as the reference does for Some({})
  assert.ok(headerText(bytes).startsWith(`{"__metadata__":{},"z":{"dtype":"I64"`));
  assert.equal(enc.encode(headerText(bytes)).length % 8, 0);
  // no metadata given: no __metadata__ entry
  assert.ok(headerText(serializeSafetensors({ a: ts.a })).startsWith(`{"a":`));

  const back = deserializeSafetensors(bytes);
  assert.deepEqual(Object.keys(back.tensors).sort(), Object.keys(ts).sort());
  for (const [k, t] of Object.entries(ts)) {
    assert.deepEqual(back.tensors[k].toBytes(), t.toBytes(), k);
    assert.equal(back.tensors[k].dtype, t.dtype, k);
  }
  freeAllIn(back.tensors);
  freeAllIn(ts);
  assert.equal(liveTensors(), before);
});

Deno.test("safetensors: save/load round trip of every dtype is exact", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const before = liveTensors();
    const ts = multiTensors();
    // more: int8/int16, a non-contiguous view, a parameter that requires grad, a bigger tensor,
    // special float values
    const base = tensor([[1, 2, 3], [4, 5, 6]]);
    ts["i8"] = tensor([-128, 0, 127], { dtype: "int8" });
    ts["i16"] = tensor([-32768, 1, 32767], { dtype: "int16" });
    ts["t"] = base.transpose(0, 1);
    ts["param.weight"] = tensor([[0.25, -0.5]]).requiresGrad_(true);
    ts["big"] = fromTypedArray(Float32Array.from({ length: 1000 }, (_, i) => Math.sin(i) * 1e3), [
      10,
      100,
    ]);
    ts["special"] = fromTypedArray(
      Float64Array.from([NaN, Infinity, -Infinity, -0, 5e-324, 1.7976931348623157e308]),
      [6],
    );
    const path = `${dir}/state.safetensors`;
    await saveSafetensors(path, ts, { format: "pt", epoch: "7" });

    const { tensors, metadata } = await loadSafetensors(path);
    assert.deepEqual(metadata, { format: "pt", epoch: "7" });
    assert.deepEqual(Object.keys(tensors).sort(), Object.keys(ts).sort());
    for (const [k, t] of Object.entries(ts)) {
      assert.equal(tensors[k].dtype, t.dtype, k);
      assert.deepEqual(tensors[k].shape, t.shape, k);
      assert.deepEqual(tensors[k].toBytes(), t.toBytes(), k);
      assert.equal(tensors[k].requiresGrad, false, k);
    }
    assert.deepEqual(tensors.t.toArray(), [[1, 4], [2, 5], [3, 6]]);
    assert.ok(Object.is((tensors.special.toTypedArray() as Float64Array)[3], -0));
    const multiOnly = Object.fromEntries(
      Object.entries(tensors).filter(([k]) => k in multiTensorsNames),
    );
    checkMulti(multiOnly);

    // the header lists tensors by descending dtype rank, then name
    const header = await readSafetensorsHeader(path);
    assert.deepEqual(header.tensors.map(([n]) => n), [
      "l",
      "d",
      "special",
      "big",
      "e",
      "param.weight",
      "s",
      "t",
      "w",
      "idx",
      "brain",
      "half",
      "i16",
      "i8",
      "pix",
      "flag",
    ]);
    assert.deepEqual(headerOrder(await Deno.readFile(path)), header.tensors.map(([n]) => n));

    // a subset by name
    const some = await loadSafetensors(path, { names: ["half", "l"] });
    assert.deepEqual(Object.keys(some.tensors).sort(), ["half", "l"]);
    assert.deepEqual(some.tensors.half.toBytes(), ts.half.toBytes());
    freeAllIn(some.tensors);

    freeAllIn(tensors);
    freeAllIn(ts);
    base.free();
    assert.equal(liveTensors(), before);
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["state.safetensors"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

const multiTensorsNames: Record<string, true> = {
  l: true,
  d: true,
  e: true,
  s: true,
  w: true,
  idx: true,
  brain: true,
  half: true,
  pix: true,
  flag: true,
};

Deno.test("safetensors: corrupt and invalid inputs give clear TorchErrors and leak nothing", () => {
  const before = liveTensors();
  const f32x2 = new Uint8Array(8);
  const cases: [string, Uint8Array, RegExp][] = [
    ["empty buffer", new Uint8Array(0), /too short \(0 bytes\)/],
    ["7 bytes", MULTI.slice(0, 7), /too short/],
    [
      "truncated data",
      MULTI.slice(0, MULTI.length - 3),
      /cover 59 bytes but the data section has 56/,
    ],
    [
      "trailing bytes",
      new Uint8Array([...ATTN0, 0, 0]),
      /cover 24 bytes but the data section has 26/,
    ],
    [
      "truncated header",
      MULTI.slice(0, 100),
      /header length 600 runs past the end of the file \(100 bytes\)/,
    ],
    [
      "header length past end",
      new Uint8Array([255, 0, 0, 0, 0, 0, 0, 0, 123, 125]),
      /header length 255 runs past the end/,
    ],
    ["header length absurd", new Uint8Array([0, 0, 0, 0, 0, 1, 0, 0, 123, 125]), /exceeds 100 MB/],
    ["not JSON", file("{this is not json}"), /invalid header JSON/],
    ["not an object", file("[1, 2, 3]"), /invalid header JSON.*start with '\{'/],
    [
      "invalid UTF-8",
      (() => {
        const b = file('{"a"}');
        b[10] = 0xff;
        return b;
      })(),
      /invalid header JSON/,
    ],
    ["JSON null", file("{} null"), /invalid header JSON/],
    [
      "hole",
      file(
        '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}',
        new Uint8Array(12),
      ),
      /"b" has offsets \[8, 12\] but the previous tensor ends at 4 \(a hole/,
    ],
    [
      "overlap",
      file(
        '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}',
        new Uint8Array(12),
      ),
      /"b" has offsets \[4, 12\] but the previous tensor ends at 8 \(an overlap/,
    ],
    [
      "not starting at 0",
      file('{"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', new Uint8Array(12)),
      /previous tensor ends at 0/,
    ],
    [
      "end before start",
      file('{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}', new Uint8Array(8)),
      /end before they start/,
    ],
    [
      "size/shape mismatch",
      file('{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', f32x2),
      /"a": shape \[3\] of F32 needs 12 bytes, offsets give 8/,
    ],
    [
      "unknown dtype",
      file('{"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}}', f32x2),
      /"a" has unknown dtype "F33"/,
    ],
    [
      "negative dim",
      file('{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}', f32x2),
      /"a" has a malformed entry/,
    ],
    [
      "missing offsets",
      file('{"a":{"dtype":"F32","shape":[2]}}', f32x2),
      /"a" has a malformed entry/,
    ],
    [
      "metadata not strings",
      file(
        '{"__metadata__":{"epoch":3},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}',
        f32x2,
      ),
      /__metadata__\.epoch is not a string/,
    ],
    [
      "U16 (not supported)",
      file('{"a":{"dtype":"U16","shape":[4],"data_offsets":[0,8]}}', f32x2),
      /"a" has dtype U16, which this toolkit does not support/,
    ],
    [
      "F8_E4M3 (not supported)",
      file('{"a":{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}}', f32x2),
      /"a" has dtype F8_E4M3, which this toolkit does not support/,
    ],
    [
      // the F32 tensor comes first: nothing may be created before the U64 is refused
      "supported then unsupported",
      file(
        '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"U64","shape":[1],"data_offsets":[8,16]}}',
        new Uint8Array(16),
      ),
      /"b" has dtype U64/,
    ],
  ];
  for (const [what, bytes, re] of cases) {
    assert.throws(() => deserializeSafetensors(bytes, {}, "fixture.safetensors"), (e) => {
      assert.ok(e instanceof TorchError, `${what}: expected a TorchError, got ${e}`);
      assert.equal(e.op, "safetensors", what);
      assert.match(e.message, /fixture\.safetensors: /, what);
      assert.match(e.message, re, what);
      return true;
    });
    assert.equal(liveTensors(), before, what);
  }
  // headers of unsupported dtypes still parse (sizes known): only loading them fails
  const u16 = parseSafetensorsHeader(
    file('{"a":{"dtype":"U16","shape":[4],"data_offsets":[0,8]}}', f32x2),
  );
  assert.deepEqual(u16.tensors[0][1].dtype, "U16");
  // selecting a name that is not there, or only supported ones from a mixed file
  assert.throws(
    () => deserializeSafetensors(MULTI, { names: ["w", "nope", "__metadata__"] }),
    isTorchError(/no tensor named "nope", "__metadata__"/),
  );
  const mixed = file(
    '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"U64","shape":[1],"data_offsets":[8,16]}}',
    new Uint8Array(16),
  );
  const onlyA = deserializeSafetensors(mixed, { names: ["a"] });
  assert.deepEqual(Object.keys(onlyA.tensors), ["a"]);
  freeAllIn(onlyA.tensors);
  // writing bad input
  const t = tensor([1]);
  assert.throws(
    () => serializeSafetensors({ __metadata__: t }),
    isTorchError(/"__metadata__" is reserved/),
  );
  assert.throws(
    () => serializeSafetensors({ a: t }, { epoch: 3 as unknown as string }),
    isTorchError(/metadata "epoch" must be a string/),
  );
  assert.throws(
    () => serializeSafetensors({ a: [1, 2] as unknown as Tensor }),
    isTorchError(/"a" is not a Tensor/),
  );
  t.free();
  assert.throws(() => serializeSafetensors({ a: t }), isTorchError(/"a" was already freed/));
  assert.equal(liveTensors(), before);
});

Deno.test("safetensors: missing files, missing names and corrupt files on disk", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const before = liveTensors();
    const missing = `${dir}/nope.safetensors`;
    await assert.rejects(
      loadSafetensors(missing),
      isTorchError(/nope\.safetensors: file not found/),
    );
    await assert.rejects(
      readSafetensorsHeader(missing),
      isTorchError(/nope\.safetensors: file not found/),
    );
    const path = `${dir}/multi.safetensors`;
    await Deno.writeFile(path, MULTI);
    await assert.rejects(
      loadSafetensors(path, { names: ["w", "weight"] }),
      isTorchError(/multi\.safetensors: no tensor named "weight"/),
    );
    const cut = `${dir}/cut.safetensors`;
    await Deno.writeFile(cut, MULTI.slice(0, MULTI.length - 1));
    await assert.rejects(loadSafetensors(cut), isTorchError(/cut\.safetensors: .*truncated/));
    await assert.rejects(readSafetensorsHeader(cut), isTorchError(/cut\.safetensors: .*truncated/));
    await Deno.writeFile(cut, MULTI.slice(0, 5));
    await assert.rejects(readSafetensorsHeader(cut), isTorchError(/too short \(5 bytes\)/));
    await Deno.writeFile(cut, MULTI.slice(0, 300));
    await assert.rejects(readSafetensorsHeader(cut), isTorchError(/runs past the end/));
    await assert.rejects(loadSafetensors(dir), isTorchError(/safetensors/));
    assert.equal(liveTensors(), before);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("safetensors: a failed save leaves the old file intact and no temporary file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const before = liveTensors();
    const path = `${dir}/ckpt.safetensors`;
    const listing = () => [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    await Deno.writeFile(path, MULTI);

    // a freed tensor: refused before anything is written
    const a = tensor([1, 2, 3]);
    const gone = tensor([4]);
    gone.free();
    await assert.rejects(
      saveSafetensors(path, { a, gone }),
      isTorchError(/"gone" was already freed/),
    );
    assert.deepEqual(await Deno.readFile(path), MULTI);
    assert.deepEqual(listing(), ["ckpt.safetensors"]);

    // a tensor freed while the file is being written (after the temporary file was opened)
    const big = zeros([256, 256]);
    const late = tensor([5, 6]);
    const pending = saveSafetensors(path, { a, big, late });
    late.free();
    await assert.rejects(pending, isTorchError(/used after free/));
    assert.deepEqual(await Deno.readFile(path), MULTI);
    assert.deepEqual(listing(), ["ckpt.safetensors"]);

    // a directory that does not exist
    await assert.rejects(
      saveSafetensors(`${dir}/no/such/dir.safetensors`, { a }),
      isTorchError(/could not write/),
    );
    assert.deepEqual(listing(), ["ckpt.safetensors"]);

    // a successful overwrite replaces the file and leaves nothing else behind
    await saveSafetensors(path, { a });
    assert.deepEqual(listing(), ["ckpt.safetensors"]);
    const back = await loadSafetensors(path);
    assert.deepEqual(back.tensors.a.toArray(), [1, 2, 3]);
    freeAllIn(back.tensors);
    a.free();
    big.free();
    assert.equal(liveTensors(), before);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("safetensors: readSafetensorsHeader reads the header without loading tensors", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/multi.safetensors`;
    await Deno.writeFile(path, MULTI);
    const before = liveTensors();
    const h = await readSafetensorsHeader(path);
    assert.equal(liveTensors(), before);
    assert.equal(h.dataStart, 608);
    assert.deepEqual(h.metadata, { format: "pt" });
    assert.deepEqual(
      h.tensors.map(([n, i]) => [n, i.dtype, i.shape, i.data_offsets]),
      [
        ["l", "I64", [2], [0, 16]],
        ["d", "F64", [1], [16, 24]],
        ["e", "F32", [0, 3], [24, 24]],
        ["s", "F32", [], [24, 28]],
        ["w", "F32", [2], [28, 36]],
        ["idx", "I32", [2], [36, 44]],
        ["brain", "BF16", [2], [44, 48]],
        ["half", "F16", [2], [48, 52]],
        ["pix", "U8", [2, 2], [52, 56]],
        ["flag", "BOOL", [3], [56, 59]],
      ],
    );
    // headers of files this toolkit cannot load (U16, F8) are readable too
    const u16 = `${dir}/u16.safetensors`;
    await Deno.writeFile(
      u16,
      file(
        '{"__metadata__":{"k":"v"},"x":{"dtype":"U16","shape":[2,2],"data_offsets":[0,8]},"y":{"dtype":"F8_E5M2","shape":[3],"data_offsets":[8,11]}}',
        new Uint8Array(11),
      ),
    );
    const hu = await readSafetensorsHeader(u16);
    assert.deepEqual(hu.tensors.map(([n, i]) => [n, i.dtype]), [["x", "U16"], ["y", "F8_E5M2"]]);
    assert.deepEqual(hu.metadata, { k: "v" });
    // the data section is not read: a header-only read of a (sparse) 1 GiB file stays cheap
    const large = `${dir}/large.safetensors`;
    const n = 256 * 1024 * 1024;
    const hdr = file(`{"x":{"dtype":"F32","shape":[${n}],"data_offsets":[0,${4 * n}]}}`);
    const fh = await Deno.open(large, { write: true, create: true });
    await fh.write(hdr);
    await fh.truncate(hdr.length + 4 * n);
    fh.close();
    const t0 = performance.now();
    const hl = await readSafetensorsHeader(large);
    const ms = performance.now() - t0;
    assert.deepEqual(hl.tensors[0][1].shape, [n]);
    assert.ok(ms < 250, `header read took ${ms.toFixed(1)} ms`);
    assert.equal(liveTensors(), before);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
