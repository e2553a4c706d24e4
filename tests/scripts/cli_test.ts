/**
 * scripts/_cli.ts in-process: the --help rendering (checked against the text written out by
 * hand), strict flag parsing, the value parsers' accept / reject boundaries and messages, the
 * path checks, the error mapping of usageOn (sync and async) and the exit codes and stderr lines
 * of exitCode.
 */
import assert from "node:assert/strict";
import {
  checkArch,
  checkDevice,
  checkOutputDir,
  checkOutputFile,
  checkWhich,
  exitCode,
  type FlagTable,
  helpText,
  integer,
  nonNegativeInt,
  number,
  positiveInt,
  readFlags,
  readImageOrData,
  readSceneFlags,
  UsageError,
  usageOn,
} from "../../scripts/_cli.ts";

const FLAGS = {
  "epochs": { arg: "N", type: "string", default: "3", help: "training epochs" },
  "prefix": { arg: "P", type: "string", default: "", help: "key prefix" },
  "out": { arg: "DIR", type: "string", help: "output", shown: "required" },
  "name": { type: "string", help: "a name", shown: "none" },
  "quiet": { type: "boolean", help: "be quiet", shown: "false" },
  "help": { type: "boolean", help: "print this help and exit", shown: "false" },
} satisfies FlagTable;

/** `fn`'s UsageError message (fails when it throws nothing or something else). */
function usage(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof UsageError, `not a UsageError: ${e}`);
    return e.message;
  }
  assert.fail("no error");
}

Deno.test("helpText: intro, each flag with placeholder and default, exit codes", () => {
  assert.equal(
    helpText(FLAGS, ["Usage: x [flags]", "", "Does x."]),
    [
      "Usage: x [flags]",
      "",
      "Does x.",
      "",
      "Flags:",
      "  --epochs N",
      "      training epochs (default: 3)",
      "  --prefix P",
      '      key prefix (default: "")',
      "  --out DIR",
      "      output (default: required)",
      "  --name VALUE",
      "      a name (default: none)",
      "  --quiet",
      "      be quiet (default: false)",
      "  --help",
      "      print this help and exit (default: false)",
      "",
      "Exit codes: 0 done, 2 bad flags or input, 1 other failures.",
    ].join("\n"),
  );
});

Deno.test("readFlags: values, defaults, --help, strictness", () => {
  const v = readFlags(FLAGS, ["--out", "o", "--quiet", "--name="])!;
  assert.equal(v.str("out"), "o");
  assert.equal(v.str("epochs"), null);
  assert.equal(v.get("epochs"), "3");
  assert.equal(v.get("prefix"), "");
  assert.ok(v.given("out") && v.given("name") && !v.given("epochs"));
  assert.ok(v.bool("quiet"));
  assert.equal(v.path("out"), "o");
  assert.equal(v.path("epochs"), null);
  assert.equal(usage(() => v.path("name", "a file name")), "--name needs a file name");
  const none = readFlags(FLAGS, [])!;
  assert.ok(!none.bool("quiet"));
  assert.throws(() => none.get("out"), /--out has no default/);
  assert.equal(readFlags(FLAGS, ["--out", "o", "--help"]), null);
  assert.match(usage(() => readFlags(FLAGS, ["--bogus"])), /Unknown option '--bogus'/);
  assert.match(usage(() => readFlags(FLAGS, ["x"])), /Unexpected argument 'x'/);
  assert.match(usage(() => readFlags(FLAGS, ["--quiet=1"])), /does not take an argument/);
});

Deno.test("value parsers: accepted values and the messages naming the flag", () => {
  assert.equal(positiveInt("n", "12"), 12);
  for (const bad of ["0", "-1", "1.5", "1e3", " 3", "", "x", "99999999999999999"]) {
    assert.equal(
      usage(() => positiveInt("n", bad)),
      `--n must be a positive integer, got "${bad}"`,
    );
  }
  assert.equal(nonNegativeInt("n", "0"), 0);
  assert.equal(
    usage(() => nonNegativeInt("n", "-1")),
    '--n must be a non-negative integer, got "-1"',
  );
  assert.equal(integer("s", "-7"), -7);
  assert.equal(usage(() => integer("s", "1.0")), '--s must be an integer, got "1.0"');
  assert.equal(integer("s", "8", 8), 8);
  assert.equal(usage(() => integer("s", "7", 8)), '--s must be an integer ≥ 8, got "7"');
  assert.equal(usage(() => integer("s", " 9", 8)), '--s must be an integer ≥ 8, got " 9"');
  assert.equal(number("x", "-0.5"), -0.5);
  assert.equal(number("x", "1e-3", (v) => v > 0, "a positive number"), 0.001);
  for (const bad of ["", " ", "inf", "Infinity", "NaN", "0"]) {
    assert.equal(
      usage(() => number("x", bad, (v) => v > 0, "a positive number")),
      `--x must be a positive number, got "${bad}"`,
    );
  }
  assert.equal(usage(() => number("x", "a")), '--x must be a number, got "a"');
});

Deno.test("checkArch, checkDevice, checkWhich", () => {
  assert.equal(checkArch("vit_small"), "vit_small");
  assert.match(usage(() => checkArch("vit_huge")), /^--arch: unknown architecture "vit_huge"; /);
  for (const d of ["cpu", "cuda", "cuda:1"]) assert.equal(checkDevice(d), d);
  assert.equal(
    usage(() => checkDevice("gpu")),
    '--device must be cpu, cuda or cuda:N, got "gpu"',
  );
  assert.equal(checkWhich("student"), "student");
  assert.equal(usage(() => checkWhich("both")), '--which must be teacher or student, got "both"');
});

Deno.test("readImageOrData and readSceneFlags", () => {
  const F = {
    "image": { type: "string", help: "" },
    "data": { type: "string", help: "" },
    "index": { type: "string", help: "" },
    "split": { type: "string", default: "train", help: "" },
    "count": { type: "string", help: "" },
    "scene-seed": { type: "string", default: "0", help: "" },
    "scene-size": { type: "string", default: "96", help: "" },
  } satisfies FlagTable;
  const pick = (...args: string[]) => readImageOrData(readFlags(F, args)!, ["index"] as const);
  assert.deepEqual(pick("--image", "a.png"), { image: "a.png" });
  assert.deepEqual(pick("--data", "fashion-scenes"), { data: "fashion-scenes" });
  assert.match(usage(() => pick()), /--image PATH .* is required/);
  assert.match(usage(() => pick("--image", "")), /--image PATH .* is required/);
  assert.equal(usage(() => pick("--image", "a", "--index", "0")), "--index needs --data");
  assert.equal(
    usage(() => pick("--image", "a", "--data", "d")),
    "give --image or --data, not both",
  );

  const scenes = (...args: string[]) => readSceneFlags(readFlags(F, args)!);
  assert.deepEqual(scenes(), { split: "train", seed: 0, size: 96 });
  assert.deepEqual(scenes("--split", "val", "--count", "4", "--scene-size", "8"), {
    split: "val",
    seed: 0,
    size: 8,
    count: 4,
  });
  assert.equal(usage(() => scenes("--split", "test")), '--split must be train or val, got "test"');
  assert.equal(
    usage(() => scenes("--scene-size", "7")),
    '--scene-size must be an integer ≥ 8, got "7"',
  );
  assert.equal(usage(() => scenes("--count", "0")), '--count must be an integer ≥ 1, got "0"');
});

Deno.test("checkOutputFile and checkOutputDir", async () => {
  const dir = await Deno.makeTempDir({ prefix: "dd-cli-" });
  try {
    await Deno.writeTextFile(`${dir}/f.txt`, "x");
    await checkOutputFile("report", `${dir}/new.md`);
    await checkOutputFile("report", `${dir}/f.txt`);
    await assert.rejects(
      () => checkOutputFile("report", dir),
      (e) => e instanceof UsageError && e.message === `--report: ${dir} is a directory`,
    );
    await assert.rejects(
      () => checkOutputFile("out", `${dir}/no/x.md`),
      (e) => e instanceof UsageError && e.message === `--out: directory ${dir}/no does not exist`,
    );
    await checkOutputDir("cache", dir);
    await checkOutputDir("cache", `${dir}/later`);
    await assert.rejects(
      () => checkOutputDir("cache", `${dir}/f.txt`),
      (e) =>
        e instanceof UsageError &&
        e.message === `--cache: ${dir}/f.txt exists and is not a directory`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("usageOn maps the listed errors (sync and async), passes the rest", async () => {
  assert.equal(usageOn([RangeError], "--x: ", () => 5), 5);
  assert.equal(
    usage(() =>
      usageOn([RangeError], "--x: ", () => {
        throw new RangeError("too big");
      })
    ),
    "--x: too big",
  );
  assert.throws(
    () =>
      usageOn([RangeError], "--x: ", () => {
        throw new TypeError("other");
      }),
    (e) => e instanceof TypeError,
  );
  assert.equal(await usageOn([RangeError], "", () => Promise.resolve(7)), 7);
  await assert.rejects(
    () => usageOn([RangeError], "--y: ", () => Promise.reject(new RangeError("late"))),
    (e) => e instanceof UsageError && e.message === "--y: late",
  );
  await assert.rejects(
    () => usageOn([RangeError], "--y: ", () => Promise.reject(new TypeError("late"))),
    (e) => e instanceof TypeError,
  );
});

Deno.test("exitCode: main's code, 2 for usage errors, 1 for failures, with the stderr lines", async () => {
  const lines: string[] = [];
  const error = console.error;
  console.error = (...a: unknown[]) => lines.push(a.join(" "));
  try {
    assert.equal(await exitCode("tool", (args) => Promise.resolve(args.length), ["a", "b"]), 2);
    assert.deepEqual(lines, []);
    const fail = (e: Error) => () => Promise.reject(e);
    assert.equal(await exitCode("tool", fail(new UsageError("--n is bad")), []), 2);
    assert.equal(lines.pop(), "tool: error: --n is bad\nRun with --help to list the flags.");
    const isRange = (e: unknown) => e instanceof RangeError;
    assert.equal(await exitCode("tool", fail(new RangeError("out")), [], isRange), 2);
    assert.equal(lines.pop(), "tool: error: out\nRun with --help to list the flags.");
    assert.equal(await exitCode("tool", fail(new TypeError("boom")), [], isRange), 1);
    assert.match(lines.pop()!, /^tool: failed: TypeError: boom\n\s+at /);
  } finally {
    console.error = error;
  }
});
