// The canonical-form verdicts of section 3.1: what parseCanonical accepts and refuses.
import assert from "node:assert/strict";
import { test } from "node:test";
import { jcs, parseCanonical } from "../dist/canonical.js";

test("jcs refuses what JCS cannot encode", () => {
  for (const value of ["lone \ud800", "lone \udc00 low", { "\ud800": 1 }, { a: "\ud800" }, [NaN], { x: Infinity }, { a: 1, b: NaN }, -Infinity]) {
    assert.throws(() => jcs(value));
  }
});

const enc = (text) => new TextEncoder().encode(text);
const verdict = (text) => {
  try {
    parseCanonical(enc(text), "f.json");
    return "canonical";
  } catch (error) {
    return error.code;
  }
};

test("canonical form: member order by UTF-16 code units (integer-like names too), no whitespace, shortest numbers, JCS escapes", () => {
  const cases = {
    '{"10":1,"9":2,"a":3}': "canonical",
    '{"9":2,"10":1,"a":3}': "not-canonical",
    '{"a":1,"a":1}': "not-canonical",
    '{"a": 1}': "not-canonical",
    '{"a":1.0}': "not-canonical",
    '{"a":1e2}': "not-canonical",
    '{"a":100}': "canonical",
    '{"a":1e999}': "not-canonical",
    '{"a":"\\u0041"}': "not-canonical",
    '{"a":"\\u001f"}': "canonical",
    '{"a":"\\ud800"}': "not-canonical",
    '{"a":"\\\\ud800"}': "canonical",
    '{"a":"\\/"}': "not-canonical",
    '\ufeff{"a":1}': "malformed",
    '["a"]': "malformed",
    '{"a":1': "malformed",
  };
  for (const [text, expected] of Object.entries(cases)) assert.equal(verdict(text), expected, text);
});
