/**
 * The schedules against their closed forms at the first, warm-up-end, middle and last
 * iterations, with the official `utils.cosine_scheduler` indexing (the cosine part restarts at
 * `base` after the warm-up and stops one step short of `final`), against values the official
 * function printed offline (numpy 1.24, /usr/bin/python3), and bad input.
 */
import assert from "node:assert/strict";
import { cosineSchedule, linearScaledLr, teacherTempSchedule } from "../../mod.ts";

function near(a: number, b: number, rel: number, what: string): void {
  const tol = rel * Math.abs(b);
  assert.ok(Math.abs(a - b) <= tol, `${what}: ${a} vs ${b}`);
}

/** numpy.linspace(start, stop, n)[i] with numpy's arithmetic. */
function linspaceAt(start: number, stop: number, n: number, i: number): number {
  return i === n - 1 && n > 1 ? stop : i * ((stop - start) / (n - 1)) + start;
}

/** The cosine part of the official schedule at index i of n. */
function cosineAt(base: number, final: number, i: number, n: number): number {
  return final + 0.5 * (base - final) * (1 + Math.cos(Math.PI * i / n));
}

Deno.test("lr: linear scaling, linear warm-up, cosine to the minimum, per iteration", () => {
  const epochs = 100, ipe = 1251, warm = 10;
  const base = linearScaledLr(5e-4, 64, 16);
  assert.equal(base, 5e-4 * (64 * 16) / 256);
  assert.equal(linearScaledLr(5e-4, 64), 1.25e-4);
  const s = cosineSchedule(base, 1e-6, epochs, ipe, { warmupEpochs: warm });
  const w = warm * ipe, n = epochs * ipe - w;
  assert.equal(s.length, epochs * ipe);
  // first iteration: the warm-up start value (default 0)
  assert.equal(s[0], 0);
  assert.equal(s[1], base / (w - 1));
  // warm-up end: base, reached at the last warm-up iteration (linspace includes its endpoint)
  assert.equal(s[w - 1], base);
  assert.equal(s[w / 2], linspaceAt(0, base, w, w / 2));
  // the cosine part starts again at base (i = 0), so base appears twice
  assert.equal(s[w], base);
  // middle of the cosine part: cos(π/2) — halfway between base and final
  assert.equal(s[w + n / 2], cosineAt(base, 1e-6, n / 2, n));
  near(s[w + n / 2], (base + 1e-6) / 2, 1e-12, "middle");
  // last iteration: i = n − 1, one step short of final
  assert.equal(s[s.length - 1], cosineAt(base, 1e-6, n - 1, n));
  assert.ok(s[s.length - 1] > 1e-6);
  near(s[s.length - 1] - 1e-6, 0.5 * (base - 1e-6) * (1 - Math.cos(Math.PI / n)), 1e-6, "last");
  // indexing as the trainer uses it: global iteration epoch · ipe + it
  assert.equal(s[12 * ipe + 7], cosineAt(base, 1e-6, 12 * ipe + 7 - w, n));
});

Deno.test("weight decay 0.04 → 0.4 and teacher momentum 0.996 → 1: no warm-up", () => {
  const wd = cosineSchedule(0.04, 0.4, 3, 10);
  assert.equal(wd.length, 30);
  assert.equal(wd[0], cosineAt(0.04, 0.4, 0, 30));
  near(wd[0], 0.04, 1e-15, "wd first");
  assert.equal(wd[15], cosineAt(0.04, 0.4, 15, 30));
  near(wd[15], 0.22, 1e-15, "wd middle");
  assert.equal(wd[29], cosineAt(0.04, 0.4, 29, 30));
  const m = cosineSchedule(0.996, 1, 3, 10);
  assert.equal(m[0], 0.996);
  near(m[15], 0.998, 1e-15, "momentum middle");
  assert.equal(m[29], cosineAt(0.996, 1, 29, 30));
  assert.ok(m[29] < 1);
  // a start value for the warm-up, and the warm-up in iterations
  const s = cosineSchedule(1, 0, 2, 5, { warmupIters: 3, startWarmupValue: 0.5 });
  assert.deepEqual(Array.from(s.slice(0, 4)), [0.5, 0.75, 1, 1]);
  assert.equal(s[9], cosineAt(1, 0, 6, 7));
  // zero epochs: an empty schedule, as numpy's
  assert.equal(cosineSchedule(1, 0, 0, 5).length, 0);
  // a warm-up as long as the run: only the linspace
  assert.deepEqual(Array.from(cosineSchedule(1, 0, 1, 3, { warmupEpochs: 1 })), [0, 0.5, 1]);
});

Deno.test("the official cosine_scheduler's values (numpy, offline)", () => {
  // utils.cosine_scheduler(5e-4 * 64 / 256, 1e-6, 5, 4, warmup_epochs=2), printed by numpy 1.24;
  // equal up to the last bits of numpy's SIMD cos (the warm-up exactly)
  const official = [
    0.0,
    1.785714285714286e-05,
    3.571428571428572e-05,
    5.3571428571428575e-05,
    7.142857142857143e-05,
    8.92857142857143e-05,
    0.00010714285714285715,
    0.000125,
    0.000125,
    0.00012288740122992224,
    0.0001166935750346352,
    0.00010684062043356596,
    9.400000000000001e-05,
    7.904678079635628e-05,
    6.3e-05,
    4.695321920364371e-05,
    3.200000000000001e-05,
    1.915937956643406e-05,
    9.306424965364807e-06,
    3.1125987700777577e-06,
  ];
  const s = cosineSchedule(5e-4 * 64 / 256, 1e-6, 5, 4, { warmupEpochs: 2 });
  assert.equal(s.length, official.length);
  for (let i = 0; i < 8; i++) assert.equal(s[i], official[i], `warm-up ${i}`);
  for (let i = 8; i < official.length; i++) near(s[i], official[i], 1e-14, `cosine ${i}`);
  // cosine_scheduler(0.04, 0.4, 5, 4): the first value is 0.03999999999999998, not 0.04
  const wd = cosineSchedule(0.04, 0.4, 5, 4);
  assert.equal(wd[0], 0.03999999999999998);
  near(wd[19], 0.3977839013071248, 1e-15, "wd last");
});

Deno.test("teacher temperature: per epoch by default (official), per iteration on request", () => {
  const s = teacherTempSchedule({ epochs: 100, warmupTemp: 0.04, temp: 0.07, warmupEpochs: 30 });
  assert.equal(s.perIteration, false);
  assert.equal(s.values.length, 100);
  assert.equal(s.at(0), 0.04);
  assert.equal(s.at(1), 0.04103448275862069); // numpy.linspace(0.04, 0.07, 30)[1]
  assert.equal(s.at(15), linspaceAt(0.04, 0.07, 30, 15));
  assert.equal(s.at(29), 0.07); // warm-up end
  assert.equal(s.at(30), 0.07);
  assert.equal(s.at(99), 0.07);
  assert.equal(s.at(15, 12345), s.at(15)); // constant within an epoch
  // defaults: the official --warmup_teacher_temp 0.04, --teacher_temp 0.04, no warm-up
  assert.deepEqual(Array.from(teacherTempSchedule({ epochs: 3 }).values), [0.04, 0.04, 0.04]);
  // one warm-up epoch: numpy.linspace(a, b, 1) = [a]
  const one = teacherTempSchedule({ epochs: 3, warmupTemp: 0.04, temp: 0.07, warmupEpochs: 1 });
  assert.deepEqual(Array.from(one.values), [0.04, 0.07, 0.07]);
  // per iteration: linear over warmupEpochs · itersPerEpoch iterations
  const p = teacherTempSchedule({
    epochs: 4,
    warmupTemp: 0.04,
    temp: 0.07,
    warmupEpochs: 2,
    perIteration: true,
    itersPerEpoch: 5,
  });
  assert.equal(p.values.length, 20);
  assert.equal(p.at(0, 0), 0.04);
  assert.equal(p.at(0, 4), linspaceAt(0.04, 0.07, 10, 4));
  assert.equal(p.at(1, 9), 0.07);
  assert.equal(p.at(1), p.values[5]); // start of epoch 1
  assert.equal(p.at(3, 19), 0.07);
  assert.throws(() => p.at(3, 20), /iteration 20 is past/);
  assert.throws(() => s.at(100), /epoch 100 is past the schedule's 100 epochs/);
  assert.throws(() => s.at(-1), /epoch must be an integer ≥ 0/);
});

Deno.test("bad input: a RangeError naming the argument", () => {
  const bad = (fn: () => unknown, re: RegExp) =>
    assert.throws(fn, (e: unknown) => {
      assert.ok(e instanceof RangeError, String(e));
      assert.match(e.message, re);
      return true;
    });
  bad(() => cosineSchedule(1, 0, -1, 10), /cosineSchedule: epochs must be an integer ≥ 0/);
  bad(() => cosineSchedule(1, 0, 1.5, 10), /epochs/);
  bad(() => cosineSchedule(1, 0, 10, 0), /itersPerEpoch must be an integer ≥ 1/);
  bad(() => cosineSchedule(NaN, 0, 10, 10), /base must be a finite number/);
  bad(() => cosineSchedule(1, Infinity, 10, 10), /final must be a finite number/);
  bad(() => cosineSchedule(1, 0, 10, 10, { startWarmupValue: NaN }), /startWarmupValue/);
  bad(() => cosineSchedule(1, 0, 10, 10, { warmupEpochs: -1 }), /warmupEpochs/);
  bad(
    () => cosineSchedule(1, 0, 10, 10, { warmupEpochs: 11 }),
    /warm-up .* is longer than the run/,
  );
  bad(() => cosineSchedule(1, 0, 10, 10, { warmupIters: 101 }), /longer than the run/);
  bad(
    () => cosineSchedule(1, 0, 10, 10, { warmupIters: 20, warmupEpochs: 1 }),
    /warmupIters \(20\) disagrees with warmupEpochs/,
  );
  bad(() => linearScaledLr(Infinity, 64), /linearScaledLr: lr must be a finite number/);
  bad(() => linearScaledLr(-1, 64), /lr must be ≥ 0/);
  bad(() => linearScaledLr(5e-4, 0), /batchSize/);
  bad(() => linearScaledLr(5e-4, 64, 0.5), /worldSize/);
  bad(() => teacherTempSchedule({ epochs: 10, warmupEpochs: 11 }), /warmupEpochs \(11\) is longer/);
  bad(() => teacherTempSchedule({ epochs: -2 }), /epochs must be an integer ≥ 1/);
  bad(() => teacherTempSchedule({ epochs: 10, temp: 0 }), /temp must be > 0/);
  bad(() => teacherTempSchedule({ epochs: 10, warmupTemp: NaN }), /warmupTemp must be a finite/);
  bad(() => teacherTempSchedule({ epochs: 10, perIteration: true }), /itersPerEpoch/);
});
