/** The refusal codes of host protocol v2, section 6.1: the contract; the messages are not. */
export type RefusalCode =
  | "fetch"
  | "timeout"
  | "too-large"
  | "length"
  | "hash"
  | "malformed"
  | "not-canonical"
  | "schema-version"
  | "signature"
  | "mismatch"
  | "expired"
  | "rollback"
  | "root"
  | "stale-root"
  | "not-found";

/** Why a file was not accepted: one code, the origin path (relative to the index folder), one sentence. */
export interface Refusal {
  code: RefusalCode;
  file: string;
  message: string;
}

/**
 * A refusal travelling as an exception inside a refresh (and out of `load()`).
 * It is an Error so that `load()` callers get a stack; a refresh never lets it escape.
 */
export class RefusalError extends Error implements Refusal {
  readonly code: RefusalCode;
  readonly file: string;

  constructor(code: RefusalCode, file: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "RefusalError";
    this.code = code;
    this.file = file;
  }

  toJSON(): Refusal {
    return { code: this.code, file: this.file, message: this.message };
  }
}

export function refuse(code: RefusalCode, file: string, message: string): never {
  throw new RefusalError(code, file, message);
}

export function asRefusal(error: RefusalError): Refusal {
  return Object.freeze({ code: error.code, file: error.file, message: error.message });
}
