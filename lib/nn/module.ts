/**
 * `Module`: the base of every layer and model — named parameters with dotted names,
 * sub-modules, train / eval mode, state dicts (strict loading lists every offending key),
 * parameter counting, device moves and deterministic freeing.
 *
 * @module
 */
import { type Device, type DType, keep, noGrad, type Tensor, TorchError } from "../torch/mod.ts";

/** Raised by {@link Module.loadStateDict} when keys or shapes do not match. */
export class StateDictError extends Error {
  /** model keys absent from the state dict */
  readonly missing: string[];
  /** state-dict keys the model does not have */
  readonly unexpected: string[];
  /** keys present on both sides with different shapes: `key: [file] vs [model]` */
  readonly mismatched: string[];

  /** An error with its message and the offending keys. */
  constructor(message: string, missing: string[], unexpected: string[], mismatched: string[]) {
    super(message);
    this.name = "StateDictError";
    this.missing = missing;
    this.unexpected = unexpected;
    this.mismatched = mismatched;
  }
}

/** What {@link Module.loadStateDict} did in non-strict mode. */
export interface LoadResult {
  /** model keys that were not in the state dict (left as they were) */
  missing: string[];
  /** state-dict keys the model does not have (ignored) */
  unexpected: string[];
}

/** Options of {@link Module.loadStateDict}. */
export interface LoadStateDictOptions {
  /** fail on missing or unexpected keys (default true); shape mismatches always fail */
  strict?: boolean;
}

const shapeStr = (s: readonly number[]) => `[${s.join(", ")}]`;

/** Base class of layers and models. */
export abstract class Module {
  /** true in training mode (dropout, drop-path active); see {@link train} / {@link eval} */
  training = true;
  readonly #params = new Map<string, Tensor>();
  readonly #modules = new Map<string, Module>();

  /**
   * Registers a parameter under `name` and returns it. The tensor is excluded from scopes (it
   * lives until {@link free}) and set to require gradients unless `requiresGrad` is false.
   */
  protected registerParameter(name: string, t: Tensor, requiresGrad = true): Tensor {
    if (name.includes(".") || this.#params.has(name) || this.#modules.has(name)) {
      throw new TorchError("Module", `invalid or duplicate parameter name "${name}"`);
    }
    keep(t);
    if (requiresGrad !== t.requiresGrad) t.requiresGrad_(requiresGrad);
    this.#params.set(name, t);
    return t;
  }

  /** Registers a sub-module under `name` (its parameters become `name.*`) and returns it. */
  protected registerModule<M extends Module>(name: string, m: M): M {
    if (name.includes(".") || this.#params.has(name) || this.#modules.has(name)) {
      throw new TorchError("Module", `invalid or duplicate sub-module name "${name}"`);
    }
    this.#modules.set(name, m);
    return m;
  }

  /** Every parameter with its dotted name, in registration order (as PyTorch's). */
  namedParameters(prefix = ""): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    for (const [n, t] of this.#params) out.push([prefix + n, t]);
    for (const [n, m] of this.#modules) out.push(...m.namedParameters(`${prefix}${n}.`));
    return out;
  }

  /** The parameters (only those requiring gradients with `trainableOnly`). */
  parameters(opts: { trainableOnly?: boolean } = {}): Tensor[] {
    const ps = this.namedParameters().map(([, t]) => t);
    return opts.trainableOnly ? ps.filter((t) => t.requiresGrad) : ps;
  }

  /** Every sub-module with its dotted name, this module first (name ""). */
  namedModules(prefix = ""): [string, Module][] {
    const out: [string, Module][] = [[prefix.replace(/\.$/, ""), this]];
    for (const [n, m] of this.#modules) out.push(...m.namedModules(`${prefix}${n}.`));
    return out;
  }

  /** Number of parameter elements (only trainable ones with `trainableOnly`). */
  numParameters(opts: { trainableOnly?: boolean } = {}): number {
    return this.parameters(opts).reduce((n, t) => n + t.numel, 0);
  }

  /** Sets training mode on this module and every sub-module. */
  train(mode = true): this {
    for (const [, m] of this.namedModules()) m.training = mode;
    return this;
  }

  /** Sets evaluation mode (no dropout / drop-path). */
  eval(): this {
    return this.train(false);
  }

  /**
   * The parameters by dotted name. The tensors are the live parameters themselves (not
   * copies): read or save them, do not free them.
   */
  stateDict(): Record<string, Tensor> {
    return Object.fromEntries(this.namedParameters());
  }

  /**
   * Copies values from `sd` into the parameters (cast to each parameter's dtype and device).
   * Strict by default: missing and unexpected keys throw a {@link StateDictError} listing them;
   * shape mismatches always throw, listing each key with both shapes. Nothing is copied unless
   * every check passes.
   */
  loadStateDict(sd: Record<string, Tensor>, opts: LoadStateDictOptions = {}): LoadResult {
    const strict = opts.strict ?? true;
    const own = this.namedParameters();
    const ownKeys = new Set(own.map(([k]) => k));
    const missing = own.map(([k]) => k).filter((k) => !(k in sd));
    const unexpected = Object.keys(sd).filter((k) => !ownKeys.has(k));
    const mismatched: string[] = [];
    for (const [k, p] of own) {
      const src = sd[k];
      if (!src) continue;
      const a = src.shape, b = p.shape;
      if (a.length !== b.length || a.some((s, i) => s !== b[i])) {
        mismatched.push(`${k}: ${shapeStr(a)} in the state dict vs ${shapeStr(b)} in the model`);
      }
    }
    if (mismatched.length > 0 || (strict && (missing.length > 0 || unexpected.length > 0))) {
      const parts: string[] = [];
      if (mismatched.length) {
        parts.push(`shape mismatch (${mismatched.length}):\n  ${mismatched.join("\n  ")}`);
      }
      if (strict && missing.length) {
        parts.push(`missing keys (${missing.length}):\n  ${missing.join("\n  ")}`);
      }
      if (strict && unexpected.length) {
        parts.push(`unexpected keys (${unexpected.length}):\n  ${unexpected.join("\n  ")}`);
      }
      throw new StateDictError(
        `loadStateDict(${this.constructor.name}) failed:\n${parts.join("\n")}`,
        missing,
        unexpected,
        mismatched,
      );
    }
    noGrad(() => {
      for (const [k, p] of own) if (sd[k]) p.copy_(sd[k]);
    });
    return { missing, unexpected };
  }

  /**
   * Moves (and/or casts) every parameter in place; references to the parameters stay valid
   * (their data is replaced, as PyTorch's `module.to`). Create optimisers after moving.
   */
  to(target: Device | DType): this {
    noGrad(() => {
      for (const [, p] of this.namedParameters()) {
        const moved = p.to(target);
        try {
          p.setData_(moved);
        } finally {
          moved.free();
        }
      }
    });
    return this;
  }

  /** Frees every parameter of this module and its sub-modules. */
  free(): void {
    for (const [, t] of this.namedParameters()) t.free();
  }
}
