// Reading .npy answers (what /api/fetch sends with Accept: application/x-npy)
// into values to show and numbers to plot.

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY

/** Parse the Python literal of a .npy header: dicts, tuples, lists, strings, numbers, True, False, None. */
export function parseLiteral(text) {
  let pos = 0;
  const fail = (what) => {
    throw new Error(`bad .npy header: ${what} at ${pos}`);
  };
  const skip = () => {
    while (pos < text.length && " \t\n\r".includes(text[pos])) pos += 1;
  };
  const value = (depth) => {
    if (depth > 32) fail("nested too deeply");
    skip();
    const c = text[pos];
    if (c === "{" || c === "(" || c === "[") {
      const close = { "{": "}", "(": ")", "[": "]" }[c];
      pos += 1;
      const items = [];
      const dict = c === "{" ? {} : null;
      for (;;) {
        skip();
        if (text[pos] === close) break;
        const item = value(depth + 1);
        skip();
        if (dict) {
          if (text[pos] !== ":") fail("':' expected");
          pos += 1;
          dict[item] = value(depth + 1);
          skip();
        } else {
          items.push(item);
        }
        if (text[pos] === ",") pos += 1;
        else if (text[pos] !== close) fail(`'${close}' expected`);
      }
      pos += 1;
      return dict || items;
    }
    if (c === "'" || c === '"') {
      let out = "";
      pos += 1;
      while (pos < text.length && text[pos] !== c) {
        if (text[pos] === "\\") {
          pos += 1;
          const e = text[pos];
          if (e === "x") {
            out += String.fromCharCode(parseInt(text.slice(pos + 1, pos + 3), 16));
            pos += 2;
          } else {
            out += { n: "\n", t: "\t", r: "\r", 0: "\0" }[e] ?? e;
          }
        } else {
          out += text[pos];
        }
        pos += 1;
      }
      if (pos >= text.length) fail("unterminated string");
      pos += 1;
      return out;
    }
    const word = /^[-+\w.]+/.exec(text.slice(pos));
    if (!word) fail("value expected");
    pos += word[0].length;
    if (word[0] === "True") return true;
    if (word[0] === "False") return false;
    if (word[0] === "None") return null;
    const number = Number(word[0].replace(/L$/, ""));
    if (Number.isNaN(number)) fail(`unknown word ${word[0]}`);
    return number;
  };
  return value(0);
}

/**
 * Return the dtype that numpy's `descr` describes:
 * {kind: "scalar", code, size, little, unit} (code one of b i u f c S U M m V),
 * {kind: "record", fields: [{name, offset, dtype}]}, or {kind: "subarray", base, shape};
 * each with its `itemsize`.
 */
export function parseDescr(descr, depth = 0) {
  if (depth > 16) throw new Error("a record dtype nested too deeply");
  if (typeof descr === "string") {
    const match = /^([<>|=]?)([biufcSUMmVa])(\d*)(?:\[(\w+)\])?$/.exec(descr);
    if (!match) throw new Error(`unsupported dtype ${descr}`);
    const code = match[2] === "a" ? "S" : match[2];
    const count = Number(match[3] || (code === "b" ? 1 : 0));
    const size = code === "U" ? 4 * count : count;
    return { kind: "scalar", code, size, itemsize: size, little: match[1] !== ">", unit: match[4] || "" };
  }
  if (!Array.isArray(descr)) throw new Error("unsupported dtype");
  const fields = [];
  let offset = 0;
  for (const entry of descr) {
    const name = Array.isArray(entry[0]) ? entry[0][1] : entry[0];
    let dtype = parseDescr(entry[1], depth + 1);
    if (entry.length > 2) {
      const shape = entry[2];
      const count = shape.reduce((a, b) => a * b, 1);
      dtype = { kind: "subarray", base: dtype, shape, itemsize: dtype.itemsize * count };
    }
    fields.push({ name, offset, dtype });
    offset += dtype.itemsize;
  }
  return { kind: "record", fields, itemsize: offset };
}

/** Parse a .npy file: return {shape, dtype, view (a DataView of the data), fortran}. */
export function parseNpy(buffer) {
  const bytes = new Uint8Array(buffer);
  if (bytes.length < 10 || MAGIC.some((b, i) => bytes[i] !== b)) throw new Error("not a .npy answer");
  const major = bytes[6];
  const view = new DataView(buffer);
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const decoder = new TextDecoder(major >= 3 ? "utf-8" : "latin1");
  const header = parseLiteral(decoder.decode(bytes.subarray(start, start + headerLength)));
  const dtype = parseDescr(header.descr);
  const shape = header.shape;
  const count = shape.reduce((a, b) => a * b, 1);
  const offset = start + headerLength;
  if (offset + count * dtype.itemsize > buffer.byteLength) throw new Error("a .npy answer cut short");
  return { shape, dtype, fortran: Boolean(header.fortran_order), view: new DataView(buffer, offset) };
}

function half(bits) {
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  const sign = bits & 0x8000 ? -1 : 1;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

function integer(view, offset, size, signed, little) {
  switch (size) {
    case 1:
      return signed ? view.getInt8(offset) : view.getUint8(offset);
    case 2:
      return signed ? view.getInt16(offset, little) : view.getUint16(offset, little);
    case 4:
      return signed ? view.getInt32(offset, little) : view.getUint32(offset, little);
    case 8: {
      const big = signed ? view.getBigInt64(offset, little) : view.getBigUint64(offset, little);
      const n = Number(big);
      return Number.isSafeInteger(n) ? n : big;
    }
    default:
      throw new Error(`unsupported integer size ${size}`);
  }
}

function float(view, offset, size, little) {
  if (size === 2) return half(view.getUint16(offset, little));
  if (size === 4) return view.getFloat32(offset, little);
  if (size === 8) return view.getFloat64(offset, little);
  return NaN; // long double: not readable here
}

/** Return the value of the item of `dtype` at byte `offset` of `view`, as JS holds it. */
export function readItem(view, offset, dtype) {
  if (dtype.kind === "record") {
    return Object.fromEntries(dtype.fields.map((f) => [f.name, readItem(view, offset + f.offset, f.dtype)]));
  }
  if (dtype.kind === "subarray") {
    const count = dtype.shape.reduce((a, b) => a * b, 1);
    return Array.from({ length: count }, (_, i) => readItem(view, offset + i * dtype.base.itemsize, dtype.base));
  }
  const { code, size, little } = dtype;
  switch (code) {
    case "b":
      return view.getUint8(offset) !== 0;
    case "i":
    case "u":
      return integer(view, offset, size, code === "i", little);
    case "f":
      return float(view, offset, size, little);
    case "c":
      return { re: float(view, offset, size / 2, little), im: float(view, offset + size / 2, size / 2, little) };
    case "M":
    case "m":
      return { time: view.getBigInt64(offset, little), unit: dtype.unit };
    case "S":
      return new Uint8Array(view.buffer, view.byteOffset + offset, size);
    case "U": {
      let text = "";
      for (let i = 0; i < size; i += 4) {
        const point = view.getUint32(offset + i, little);
        if (point > 0x10ffff) text += "\ufffd";
        else text += String.fromCodePoint(point);
      }
      return text.replace(/\0+$/, "");
    }
    default:
      return { raw: new Uint8Array(view.buffer, view.byteOffset + offset, size) };
  }
}

function formatFloat(x, size) {
  if (Number.isNaN(x)) return "nan";
  if (!Number.isFinite(x)) return x > 0 ? "inf" : "-inf";
  // Shortest digits that tell a float32 (or float16) apart, as numpy prints them.
  return size >= 8 ? String(x) : String(Number(x.toPrecision(size === 4 ? 8 : 4)));
}

function bytesRepr(bytes) {
  let end = bytes.length;
  while (end > 0 && bytes[end - 1] === 0) end -= 1;
  let out = "";
  for (const b of bytes.subarray(0, end)) {
    if (b === 0x5c) out += "\\\\";
    else if (b === 0x27) out += "\\'";
    else if (b >= 0x20 && b < 0x7f) out += String.fromCharCode(b);
    else out += "\\x" + b.toString(16).padStart(2, "0");
  }
  return `b'${out}'`;
}

/** Return `value` (an item of `dtype`) as text, much as numpy prints it. */
export function formatItem(value, dtype) {
  if (dtype.kind === "record") {
    return "(" + dtype.fields.map((f) => formatItem(value[f.name], f.dtype)).join(", ") + ")";
  }
  if (dtype.kind === "subarray") {
    return "[" + value.map((v) => formatItem(v, dtype.base)).join(", ") + "]";
  }
  switch (dtype.code) {
    case "b":
      return value ? "True" : "False";
    case "f":
      return formatFloat(value, dtype.size);
    case "c": {
      const im = formatFloat(Math.abs(value.im), dtype.size / 2);
      return `${formatFloat(value.re, dtype.size / 2)}${value.im < 0 || Object.is(value.im, -0) ? "-" : "+"}${im}j`;
    }
    case "M":
    case "m":
      return value.time === -(2n ** 63n) ? "NaT" : `${value.time} ${value.unit}`.trim();
    case "S":
      return bytesRepr(value);
    case "U":
      return value;
    case "V":
      return Array.from(value.raw, (b) => b.toString(16).padStart(2, "0")).join("");
    default:
      return String(value);
  }
}

/** Return `value` (an item of scalar `dtype`) as a number to plot, NaN if it has none. */
export function toNumber(value, dtype) {
  if (dtype.kind !== "scalar") return NaN;
  switch (dtype.code) {
    case "b":
      return value ? 1 : 0;
    case "i":
    case "u":
    case "f":
      return Number(value);
    case "c":
      return Math.hypot(value.re, value.im);
    case "M":
    case "m":
      return Number(value.time);
    default:
      return NaN;
  }
}

/** Whether items of `dtype` can be plotted. */
export function plottable(dtype) {
  return dtype.kind === "scalar" && "biufcMm".includes(dtype.code);
}
