// Runs a function of ferkeras/service/web/vision.mjs under Node for tests/service/test_vision.py:
// reads {"function": name, "args": [...]} as JSON on stdin, writes the result as JSON on stdout.
// Typed arrays travel as plain lists; {"u8": [...]} / {"f32": [...]} arguments become typed arrays.
import * as vision from "../../ferkeras/service/web/vision.mjs";

const typed = (value) => {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    if ("u8" in value) return Uint8Array.from(value.u8);
    if ("f32" in value) return Float32Array.from(value.f32);
    return Object.fromEntries(Object.entries(value).map(([key, item]) => [key, typed(item)]));
  }
  return value;
};
const plain = (value) => (ArrayBuffer.isView(value) ? Array.from(value) :
  Array.isArray(value) ? value.map(plain) :
  value && typeof value === "object" ? Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plain(v)])) : value);

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => { input += chunk; });
process.stdin.on("end", () => {
  const calls = JSON.parse(input);
  const results = calls.map(({ function: name, args }) => plain(vision[name](...args.map(typed))));
  process.stdout.write(JSON.stringify(results));
});
