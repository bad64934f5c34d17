// Plots on a canvas: a line for one axis, an image (with a colour bar) for two.

const MARGIN = { left: 64, right: 16, top: 12, bottom: 28 };
// A perceptually even map, from dark blue through green to yellow (viridis' stops).
const STOPS = [
  [68, 1, 84],
  [59, 82, 139],
  [33, 145, 140],
  [94, 201, 98],
  [253, 231, 37],
];

function range(values) {
  let low = Infinity;
  let high = -Infinity;
  for (const v of values) {
    if (Number.isFinite(v)) {
      if (v < low) low = v;
      if (v > high) high = v;
    }
  }
  if (low === Infinity) return null;
  if (low === high) return [low - 0.5, high + 0.5];
  return [low, high];
}

function label(x) {
  if (Math.abs(x) >= 1e6 || (Math.abs(x) < 1e-3 && x !== 0)) return x.toExponential(3);
  return String(Number(x.toPrecision(6)));
}

function prepare(canvas) {
  const context = canvas.getContext("2d");
  context.fillStyle = "#ffffff";
  context.fillRect(0, 0, canvas.width, canvas.height);
  context.font = "12px sans-serif";
  return context;
}

function message(context, canvas, text) {
  context.fillStyle = "#555555";
  context.fillText(text, MARGIN.left, canvas.height / 2);
}

/** Draw `values` (numbers; NaN and infinities left out) as a line, x from `x0` by `step`. */
export function drawLine(canvas, values, x0 = 0, step = 1) {
  const context = prepare(canvas);
  const span = range(values);
  if (span === null || values.length === 0) {
    message(context, canvas, "nothing finite to plot");
    return;
  }
  const [low, high] = span;
  const width = canvas.width - MARGIN.left - MARGIN.right;
  const height = canvas.height - MARGIN.top - MARGIN.bottom;
  const x = (i) => MARGIN.left + (values.length === 1 ? width / 2 : (i / (values.length - 1)) * width);
  const y = (v) => MARGIN.top + (1 - (v - low) / (high - low)) * height;
  context.strokeStyle = "#999999";
  context.strokeRect(MARGIN.left, MARGIN.top, width, height);
  context.fillStyle = "#333333";
  context.textAlign = "right";
  context.fillText(label(high), MARGIN.left - 4, MARGIN.top + 10);
  context.fillText(label(low), MARGIN.left - 4, MARGIN.top + height);
  context.textAlign = "left";
  context.fillText(String(x0), MARGIN.left, canvas.height - 8);
  context.textAlign = "right";
  context.fillText(String(x0 + (values.length - 1) * step), MARGIN.left + width, canvas.height - 8);
  context.textAlign = "left";
  context.strokeStyle = "#1f5fa8";
  context.lineWidth = 1.5;
  context.beginPath();
  let drawing = false;
  for (let i = 0; i < values.length; i += 1) {
    if (!Number.isFinite(values[i])) {
      drawing = false;
      continue;
    }
    if (drawing) context.lineTo(x(i), y(values[i]));
    else context.moveTo(x(i), y(values[i]));
    drawing = true;
  }
  if (values.length === 1) context.arc(x(0), y(values[0]), 2, 0, 2 * Math.PI);
  context.stroke();
}

function colour(t) {
  const scaled = Math.min(Math.max(t, 0), 1) * (STOPS.length - 1);
  const i = Math.min(Math.floor(scaled), STOPS.length - 2);
  const f = scaled - i;
  return STOPS[i].map((c, k) => Math.round(c + f * (STOPS[i + 1][k] - c)));
}

/** Draw `values` (rows x cols numbers, row-major) as an image with a colour bar. */
export function drawImage(canvas, values, rows, cols) {
  const context = prepare(canvas);
  const span = range(values);
  if (span === null || rows === 0 || cols === 0) {
    message(context, canvas, "nothing finite to plot");
    return;
  }
  const [low, high] = span;
  const pixels = new ImageData(cols, rows);
  for (let i = 0; i < rows * cols; i += 1) {
    const v = values[i];
    const [r, g, b] = Number.isFinite(v) ? colour((v - low) / (high - low)) : [200, 200, 200];
    pixels.data.set([r, g, b, 255], 4 * i);
  }
  const tile = document.createElement("canvas");
  tile.width = cols;
  tile.height = rows;
  tile.getContext("2d").putImageData(pixels, 0, 0);
  const bar = 70;
  const width = canvas.width - MARGIN.left - MARGIN.right - bar;
  const height = canvas.height - MARGIN.top - MARGIN.bottom;
  // Square pixels, unless that would leave a long thin strip: then the whole area.
  let sx = width / cols;
  let sy = height / rows;
  if (Math.max(sx, sy) / Math.min(sx, sy) <= 4) sx = sy = Math.min(sx, sy);
  context.imageSmoothingEnabled = false;
  context.drawImage(tile, MARGIN.left, MARGIN.top, cols * sx, rows * sy);
  const left = MARGIN.left + cols * sx + 16;
  for (let p = 0; p < height; p += 1) {
    const [r, g, b] = colour(1 - p / height);
    context.fillStyle = `rgb(${r}, ${g}, ${b})`;
    context.fillRect(left, MARGIN.top + p, 14, 1);
  }
  context.fillStyle = "#333333";
  context.fillText(label(high), left + 18, MARGIN.top + 10);
  context.fillText(label(low), left + 18, MARGIN.top + height);
}
