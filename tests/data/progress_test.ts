/**
 * Progress lines and JSONL logs (lib/data/progress.ts): with a fake stream and an injected
 * clock — in-place redraws on a terminal (at most every minIntervalMs), full lines at most every
 * plainIntervalMs elsewhere, the EMA rate and ETA arithmetic, field formatting, the final line;
 * formatDuration and formatNumber cases; JsonlLog writes one valid line per record and appends
 * across instances; readJsonl skips a cut-off last line.
 */
import assert from "node:assert/strict";
import {
  formatDuration,
  formatNumber,
  JsonlLog,
  parseDuration,
  Progress,
  type ProgressOptions,
  readJsonl,
} from "../../mod.ts";

/** A stream that records what is written, a terminal or not. */
class FakeStream {
  text = "";
  writes = 0;
  constructor(readonly terminal: boolean) {}
  writeSync(p: Uint8Array): number {
    this.text += new TextDecoder().decode(p);
    this.writes++;
    return p.length;
  }
  isTerminal(): boolean {
    return this.terminal;
  }
}

/** A Progress over a fake stream and a hand-driven clock (milliseconds). */
function setup(terminal: boolean, opts: Partial<ProgressOptions> = {}) {
  const stream = new FakeStream(terminal);
  const clock = { now: 0 };
  const p = new Progress({ label: "train", stream, clock: () => clock.now, ...opts });
  return { p, stream, clock };
}

const CLEAR = "\r\x1b[2K";

Deno.test("terminal: one line redrawn in place, at most every minIntervalMs", () => {
  const { p, stream, clock } = setup(true, { total: 10, unit: "img", columns: 200 });
  assert.equal(p.tty, true);
  p.tick(); // the first tick draws at once
  assert.equal(stream.writes, 1);
  assert.ok(stream.text.startsWith(CLEAR));
  assert.ok(!stream.text.includes("\n"));
  clock.now = 100;
  p.tick();
  assert.equal(stream.writes, 1, "within 200 ms: no redraw");
  clock.now = 250;
  p.tick(3, { loss: 0.123456 });
  assert.equal(stream.writes, 2);
  const last = stream.text.slice(stream.text.lastIndexOf(CLEAR) + CLEAR.length);
  assert.match(
    last,
    /^train {2}\[#{10}-{10}\] {2}5\/10 img {2}50% {2}20\.0 img\/s {2}elapsed 0\.3s {2}ETA 0\.3s {2}/,
  );
  assert.match(last, /loss=0\.1235$/);
  clock.now = 300;
  p.tick(5); // reaching the total always draws
  assert.equal(stream.writes, 3);
  assert.match(stream.text, /10\/10 img {2}100%/);
  p.log("a message");
  assert.ok(stream.text.endsWith(`${CLEAR}a message\n${CLEAR}${p.line()}`));
  clock.now = 2000;
  p.done({ acc: 0.5 });
  assert.ok(stream.text.endsWith("\n"));
  const final = stream.text.slice(stream.text.lastIndexOf(CLEAR) + CLEAR.length);
  assert.equal(final, "train  10/10 img  5.00 img/s  done in 2.0s  loss=0.1235  acc=0.5\n");
  const n = stream.writes;
  p.done();
  p.tick();
  assert.equal(stream.writes, n, "after done: silent");
});

Deno.test("terminal lines are cut to the console width", () => {
  const { p, stream } = setup(true, { total: 100, columns: 30 });
  p.tick(1, { a_long_field_name: 1, another: 2 });
  assert.equal(stream.text.length, CLEAR.length + 30);
});

Deno.test("not a terminal: full lines at most every plainIntervalMs, no carriage returns", () => {
  const { p, stream, clock } = setup(false, { total: 100, unit: "it" });
  assert.equal(p.tty, false);
  for (let s = 1; s <= 25; s++) {
    clock.now = s * 1000;
    p.tick(2);
  }
  const lines = stream.text.split("\n").filter((l) => l !== "");
  assert.equal(lines.length, 2, stream.text); // at 10 s and 20 s
  assert.ok(!stream.text.includes("\r") && !stream.text.includes("\x1b"));
  assert.equal(lines[0], "train  20/100 it  20%  2.00 it/s  elapsed 10.0s  ETA 40.0s");
  assert.equal(lines[1], "train  40/100 it  40%  2.00 it/s  elapsed 20.0s  ETA 30.0s");
  p.done();
  assert.match(stream.text, /train {2}50\/100 it {2}2\.00 it\/s {2}done in 25\.0s\n$/);
  // a shorter interval, and the tty override
  const b = setup(false, { plainIntervalMs: 1000 });
  for (let s = 1; s <= 5; s++) {
    b.clock.now = s * 1000;
    b.p.tick();
  }
  assert.equal(b.stream.text.split("\n").length - 1, 5);
  assert.equal(setup(false, { tty: true }).p.tty, true);
  // disabled: nothing at all
  const q = setup(true, { enabled: false });
  q.p.tick();
  q.p.log("x");
  q.p.done();
  assert.equal(q.stream.writes, 0);
});

Deno.test("rate: average until the first interval, then an EMA of interval rates; ETA", () => {
  const { p, clock } = setup(false, { total: 100, smoothing: 0.5, minIntervalMs: 1000 });
  assert.equal(p.rate, null, "no time has passed");
  assert.equal(p.eta, null);
  clock.now = 500;
  p.tick(4);
  assert.equal(p.rate, 8, "4 in 0.5 s, before the first interval");
  clock.now = 1000;
  p.tick(6); // first sample: 10 in 1 s
  assert.equal(p.rate, 10);
  assert.equal(p.eta, 9); // 90 left at 10/s
  clock.now = 2000;
  p.tick(30); // 30/s in this interval: 0.5·30 + 0.5·10
  assert.equal(p.rate, 20);
  assert.equal(p.eta, 3); // 60 left at 20/s
  assert.equal(p.count, 40);
  assert.equal(p.elapsed, 2);
  clock.now = 2500;
  p.tick(100); // past the total, within the interval: no new sample, ETA 0
  assert.equal(p.rate, 20);
  assert.equal(p.eta, 0);
  // without a total: no ETA; slow work shows seconds per unit
  const slow = setup(false, { unit: "epoch" });
  slow.clock.now = 4000;
  slow.p.tick();
  assert.equal(slow.p.eta, null);
  assert.match(slow.p.line(), /^train {2}1 epoch {2}4\.0s\/epoch {2}elapsed 4\.0s$/);
  // resuming from `initial` counts only the new units in the rate
  const resumed = setup(false, { total: 100, initial: 50 });
  resumed.clock.now = 5000;
  resumed.p.tick(10);
  assert.equal(resumed.p.rate, 2);
  assert.equal(resumed.p.eta, 20);
});

Deno.test("fields: numbers in 4 significant digits, strings as they are", () => {
  const { p } = setup(false);
  p.tick(1, { loss: 1.234567, lr: 0.0000123, step: 1200, phase: "warmup", acc: 99.876 });
  assert.ok(p.line().endsWith("loss=1.235 lr=1.23e-5 step=1200 phase=warmup acc=99.88"));
});

Deno.test("formatDuration", () => {
  const cases: [number, string][] = [
    [0, "0.0s"],
    [0.04, "0.0s"],
    [12.34, "12.3s"],
    [59.94, "59.9s"],
    [59.96, "1m00s"],
    [185, "3m05s"],
    [3599.4, "59m59s"],
    [3599.6, "1h00m"],
    [3720, "1h02m"],
    [3 * 86400 + 61, "72h01m"],
    [NaN, "?"],
    [Infinity, "?"],
    [-1, "?"],
  ];
  for (const [s, want] of cases) assert.equal(formatDuration(s), want, `${s}`);
});

Deno.test("parseDuration reads formatDuration's output back", () => {
  for (const s of [0, 12.3, 59.9, 60, 185, 3599, 3600, 3720, 3 * 86400 + 60]) {
    const text = formatDuration(s);
    const back = parseDuration(text);
    // formatDuration rounds to 0.1 s below a minute, 1 s below an hour, 1 minute above
    const step = s < 59.95 ? 0.1 : s < 3599.5 ? 1 : 60;
    assert.ok(back !== null && Math.abs(back - s) <= step / 2 + 1e-9, `${s} → ${text} → ${back}`);
  }
  assert.equal(parseDuration("4m05s"), 245);
  assert.equal(parseDuration("1h02m"), 3720);
  for (const bad of ["?", "", "5", "4m5s", "1h", "m05s", "-3.0s", "1.5m00s"]) {
    assert.equal(parseDuration(bad), null, bad);
  }
});

Deno.test("formatNumber", () => {
  const cases: [number, string][] = [
    [0, "0"],
    [42, "42"],
    [-7, "-7"],
    [123456, "123456"],
    [0.5, "0.5"],
    [0.123456, "0.1235"],
    [12.3456, "12.35"],
    [-3.14159, "-3.142"],
    [9999.7, "10000"],
    [12345.6, "12346"],
    [0.001, "0.001"],
    [0.0000123, "1.23e-5"],
    [1.2e-5, "1.2e-5"],
    [5e-8, "5e-8"],
    [2.5e7, "2.5e7"],
    [1234567.8, "1.235e6"],
    [NaN, "nan"],
    [Infinity, "inf"],
    [-Infinity, "-inf"],
  ];
  for (const [v, want] of cases) assert.equal(formatNumber(v), want, `${v}`);
});

Deno.test("JsonlLog: one valid line per record, appended across instances", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/run/sub/log.jsonl`; // the directory is created
    const a = new JsonlLog(path);
    a.write({ step: 1, loss: 0.5 });
    // visible at once, before close
    assert.equal(await Deno.readTextFile(path), '{"step":1,"loss":0.5}\n');
    a.write({ step: 2, loss: NaN, note: "a\nb" });
    a.close();
    a.close();
    assert.throws(() => a.write({ step: 3 }), /closed/);
    {
      using b = new JsonlLog(path, { timestamp: true });
      b.write({ step: 3 });
    }
    const text = await Deno.readTextFile(path);
    const lines = text.split("\n");
    assert.equal(lines.length, 4);
    assert.equal(lines[3], "");
    const recs = lines.slice(0, 3).map((l) => JSON.parse(l));
    assert.deepEqual(recs[0], { step: 1, loss: 0.5 });
    assert.deepEqual(recs[1], { step: 2, loss: null, note: "a\nb" });
    assert.equal(Object.keys(recs[2])[0], "time");
    assert.ok(!Number.isNaN(Date.parse(recs[2].time)));
    assert.equal(recs[2].step, 3);
    assert.deepEqual(await readJsonl(path), recs);
    // a write cut off by a crash: the last line is skipped; a bad line elsewhere throws
    await Deno.writeTextFile(path, '{"step":4,"lo', { append: true });
    assert.equal((await readJsonl(path)).length, 3);
    await Deno.writeTextFile(path, '\n{"step":5}\n', { append: true });
    await assert.rejects(
      () => readJsonl(path),
      (e) => e instanceof SyntaxError && /:4:/.test(e.message),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
