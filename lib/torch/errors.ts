/**
 * Errors raised by the tensor layer.
 *
 * @module
 */

/** A failed tensor operation: names the operation and carries libtorch's message. */
export class TorchError extends Error {
  /** the operation that failed, e.g. "matmul" */
  readonly op: string;
  /** libtorch's (or the binding's) own message */
  readonly detail: string;

  /** An error of `op` with libtorch's `detail`, optionally describing the `inputs`. */
  constructor(op: string, detail: string, inputs?: string) {
    super(`${op}: ${detail}${inputs ? ` [inputs: ${inputs}]` : ""}`);
    this.name = "TorchError";
    this.op = op;
    this.detail = detail;
  }
}
