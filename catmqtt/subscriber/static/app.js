// The subscriber's web page: roots, a tree of datasets, and a dataset's
// metadata, data (a table and a plot of a bounded slice), text and Markdown,
// download links and how much of it is cached, kept up to date by polling.

import { apiUrl, getJson, post, request, toLogin } from "./api.js";
import { formatBytes, h, replace } from "./dom.js";
import { renderMarkdown } from "./markdown.js";
import { parseLiteral, formatItem, parseNpy, plottable, readItem, toNumber } from "./npy.js";
import { drawImage, drawLine } from "./plot.js";

// How often the shown dataset (its etag, what is cached) and the roots are asked for.
const POLL_MS = 2000;
const LIST_POLL_MS = 4000;
// The most items, and bytes, one view fetches: never a whole large dataset.
const MAX_ITEMS = 100000;
const MAX_BYTES = 16 << 20;
const TABLE_ROWS = 100;
const TABLE_COLS = 20;
// The bytes of a text file (or a .b2frame) shown.
const MAX_TEXT = 256 << 10;
const HEX_BYTES = 4096;

const state = {
  me: { accounts: false, admin: false },
  roots: {},
  lists: {},
  closed: new Set(),
  filter: "",
  current: null,
  generation: 0,
  // Counts the loads of data: only the newest one draws (the controls may be moved faster than it comes).
  loads: 0,
  pollTimer: null,
};

const $ = (id) => document.getElementById(id);

function showMessage(text) {
  const box = $("message");
  box.hidden = !text;
  replace(box, text || "");
}

/** Return a check that says whether a load begun now has been overtaken (another dataset, another load). */
function newLoad(generation) {
  const load = ++state.loads;
  return () => generation !== state.generation || load !== state.loads;
}

function errorBox(exc) {
  return h("p", { className: "error" }, `Error: ${exc.message}`);
}

// Who is logged in

async function loadMe() {
  try {
    state.me = await getJson("auth/me");
  } catch (exc) {
    showMessage(`Cannot tell who you are: ${exc.message}`);
    state.me = { accounts: true, admin: false };
  }
  if (state.me.accounts && state.me.user) {
    replace($("who"), `${state.me.user}${state.me.admin ? " (admin)" : ""}`);
    $("logout").hidden = false;
  }
}

async function logout() {
  try {
    await post("auth/logout");
  } finally {
    toLogin();
  }
}

// Roots and the tree of datasets

async function refreshLists() {
  const roots = await getJson("api/roots");
  const lists = {};
  for (const [name, root] of Object.entries(roots)) {
    if (!root.subscribed) continue;
    try {
      lists[name] = await getJson(apiUrl("list", name));
    } catch (exc) {
      lists[name] = { error: exc.message };
    }
  }
  if (JSON.stringify([roots, lists]) !== JSON.stringify([state.roots, state.lists])) {
    state.roots = roots;
    state.lists = lists;
    renderRoots();
    renderTree();
  }
}

async function keepListsFresh() {
  try {
    await refreshLists();
  } catch (exc) {
    showMessage(`Cannot list the roots: ${exc.message}`);
  }
  setTimeout(keepListsFresh, LIST_POLL_MS);
}

async function toggleSubscription(name, subscribed) {
  try {
    await post(apiUrl(subscribed ? "unsubscribe" : "subscribe", name));
    showMessage("");
    await refreshLists();
  } catch (exc) {
    showMessage(`Cannot ${subscribed ? "unsubscribe from" : "subscribe to"} ${name}: ${exc.message}`);
  }
}

function renderRoots() {
  const names = Object.keys(state.roots).sort();
  const items = names.map((name) => {
    const root = state.roots[name];
    const item = h(
      "li",
      { className: "root", dataset: { root: name } },
      h("span", { className: "root-name" }, name),
      " ",
      h("span", { className: `badge ${root.online ? "online" : "offline"}` }, root.online ? "online" : "offline"),
      " ",
      h("span", { className: `badge ${root.subscribed ? "subscribed" : ""}` }, root.subscribed ? "subscribed" : "not subscribed"),
    );
    if (state.me.admin) {
      item.append(
        " ",
        h(
          "button",
          { type: "button", className: "small", onclick: () => toggleSubscription(name, root.subscribed) },
          root.subscribed ? "Unsubscribe" : "Subscribe",
        ),
      );
    }
    return item;
  });
  replace($("roots"), items.length ? items : h("li", { className: "empty" }, "No roots known yet."));
}

function treeOf(paths) {
  const top = { dirs: new Map(), files: [] };
  for (const path of paths) {
    const parts = path.split("/");
    let node = top;
    for (const part of parts.slice(0, -1)) {
      if (!node.dirs.has(part)) node.dirs.set(part, { dirs: new Map(), files: [] });
      node = node.dirs.get(part);
    }
    node.files.push({ name: parts[parts.length - 1], path });
  }
  return top;
}

/** The fragment of the page's URL that names a dataset: its path, each part escaped. */
function hashOf(fullpath) {
  return "#" + fullpath.split("/").map(encodeURIComponent).join("/");
}

function renderDir(root, label, key, node, filtering) {
  const details = h("details", { className: "dir", open: filtering || !state.closed.has(key) }, h("summary", {}, label));
  details.addEventListener("toggle", () => {
    if (filtering) return;
    if (details.open) state.closed.delete(key);
    else state.closed.add(key);
  });
  const list = h("ul");
  for (const name of [...node.dirs.keys()].sort()) {
    list.append(h("li", {}, renderDir(root, name, `${key}/${name}`, node.dirs.get(name), filtering)));
  }
  for (const file of node.files.sort((a, b) => (a.name < b.name ? -1 : 1))) {
    const full = `${root}/${file.path}`;
    const current = state.current && state.current.path === full;
    list.append(
      h("li", {}, h("a", { href: hashOf(full), className: current ? "dataset current" : "dataset", dataset: { path: full } }, file.name)),
    );
  }
  details.append(list);
  return details;
}

function renderTree() {
  const filter = state.filter.trim().toLowerCase();
  const nodes = [];
  for (const root of Object.keys(state.lists).sort()) {
    const listing = state.lists[root];
    if (!Array.isArray(listing)) {
      nodes.push(h("p", { className: "error" }, `${root}: ${listing.error}`));
      continue;
    }
    const matching = listing.filter((path) => !filter || `${root}/${path}`.toLowerCase().includes(filter));
    if (filter && !matching.length) continue;
    nodes.push(renderDir(root, root, root, treeOf(matching), Boolean(filter)));
  }
  const empty = filter ? "No dataset matches the filter." : "Subscribe to a root to see its datasets.";
  replace($("tree"), nodes.length ? nodes : h("p", { className: "empty" }, empty));
}

// The dataset shown

function route() {
  const hash = window.location.hash.slice(1);
  if (!hash) return;
  let path;
  try {
    path = hash.split("/").map(decodeURIComponent).join("/");
  } catch {
    showMessage("The address names no dataset.");
    return;
  }
  if (!state.current || state.current.path !== path) selectDataset(path);
}

async function selectDataset(fullpath) {
  const generation = ++state.generation;
  clearTimeout(state.pollTimer);
  state.current = { path: fullpath, etag: null, meta: null, view: null, gone: false };
  for (const link of document.querySelectorAll("a.dataset")) {
    link.classList.toggle("current", link.dataset.path === fullpath);
  }
  replace($("view"), h("h2", { className: "path" }, fullpath), h("p", { className: "loading" }, "Loading…"));
  try {
    const response = await request(apiUrl("info", fullpath));
    const meta = await response.json();
    if (generation !== state.generation) return;
    Object.assign(state.current, { meta, etag: response.headers.get("ETag") });
    renderDataset(generation, null);
  } catch (exc) {
    if (generation !== state.generation) return;
    replace($("view"), h("h2", { className: "path" }, fullpath), errorBox(exc));
  }
  state.pollTimer = setTimeout(() => poll(generation), POLL_MS);
}

/** Ask whether the dataset shown changed (If-None-Match: a 304 when not), and what is cached of it. */
async function poll(generation) {
  const current = state.current;
  if (generation !== state.generation) return;
  if (document.hidden) {
    // A tab in the background asks nothing; it catches up when shown again.
    state.pollTimer = setTimeout(() => poll(generation), POLL_MS);
    return;
  }
  try {
    const headers = current.etag ? { "If-None-Match": current.etag } : {};
    const response = await request(apiUrl("info", current.path), { headers });
    if (generation !== state.generation) return;
    if (response.status === 200) {
      const meta = await response.json();
      const etag = response.headers.get("ETag");
      if (etag !== current.etag || current.gone || !current.meta) {
        Object.assign(current, { meta, etag, gone: false });
        renderDataset(generation, new Date());
      }
    }
    await refreshCached(generation);
  } catch (exc) {
    if (generation !== state.generation) return;
    if (!current.gone && current.meta) {
      current.gone = true;
      const status = $("dataset-status");
      if (status) replace(status, `No longer available: ${exc.message}`);
    }
  }
  if (generation === state.generation) state.pollTimer = setTimeout(() => poll(generation), POLL_MS);
}

async function refreshCached(generation) {
  const current = state.current;
  let cached;
  try {
    cached = await getJson(apiUrl("cached", current.path));
  } catch {
    return;
  }
  const box = $("cached");
  if (generation !== state.generation || !box) return;
  replace(
    box,
    "Cached here: ",
    h("progress", { max: Math.max(cached.nchunks, 1), value: cached.cached_chunks }),
    ` ${cached.cached_chunks} of ${cached.nchunks} chunks (${formatBytes(cached.cached_bytes)} of ${formatBytes(cached.cbytes)})`,
  );
}

function valueText(value) {
  return typeof value === "string" ? value : JSON.stringify(value);
}

function keyValueTable(entries, className) {
  if (!entries.length) return h("p", { className: "empty" }, "None.");
  return h(
    "table",
    { className },
    h("tbody", {}, ...entries.map(([key, value]) => h("tr", {}, h("th", {}, key), h("td", {}, valueText(value))))),
  );
}

// Caterva2's copy of the same fields (see README, Blosc2's own remote arrays).
const HIDDEN = new Set(["vlmeta", "schunk", "mtime", "accept_ranges"]);

function renderDataset(generation, updated) {
  const { path, meta } = state.current;
  const name = path.split("/").pop();
  const links = h(
    "p",
    { className: "links" },
    h("a", { href: apiUrl("download", path), download: name, className: "download" }, "Download"),
    " · ",
    h("a", { href: apiUrl("info", path), target: "_blank", rel: "noopener" }, "Metadata as JSON"),
  );
  const status = h(
    "p",
    { id: "dataset-status", className: "status" },
    updated ? `Updated at ${updated.toLocaleTimeString()} (version ${meta.etag}).` : "",
  );
  const data = h("section", { id: "data" }, h("h3", {}, "Data"));
  const entries = Object.entries(meta).filter(([key]) => !HIDDEN.has(key));
  const vlmeta = meta.vlmeta && typeof meta.vlmeta === "object" ? Object.entries(meta.vlmeta) : [];
  replace(
    $("view"),
    h("h2", { className: "path" }, path),
    links,
    status,
    h("div", { id: "cached", className: "cached" }),
    data,
    h("section", { id: "meta" }, h("h3", {}, "Metadata"), keyValueTable(entries, "meta")),
    h("section", { id: "vlmeta" }, h("h3", {}, "Variable-length metadata (vlmeta)"), keyValueTable(vlmeta, "vlmeta")),
  );
  refreshCached(generation);
  if (meta.kind === "ndarray") renderArray(data, generation);
  else renderBytes(data, generation);
}

// Arrays: a table and a plot of a bounded window

function fieldsOf(meta) {
  if (typeof meta.dtype !== "string" || !meta.dtype.startsWith("[")) return null;
  try {
    const parsed = parseLiteral(meta.dtype);
    return parsed.map((entry) => (Array.isArray(entry[0]) ? entry[0][1] : entry[0])).filter(Boolean);
  } catch {
    return null;
  }
}

function defaultView(meta) {
  const ndim = meta.shape.length;
  return {
    rowAxis: Math.max(ndim - 2, 0),
    colAxis: ndim >= 2 ? ndim - 1 : null,
    index: meta.shape.map(() => 0),
    fields: fieldsOf(meta),
    field: "",
  };
}

/** Whether the table has columns along an axis (else fields, or one column of values). */
function twoDimensional(meta, view) {
  return meta.shape.length >= 2 && !(view.fields && view.field === "");
}

/** Return the window of `view` to fetch: its slice and the ranges along the row and column axes. */
function windowOf(meta, view) {
  const shape = meta.shape;
  const itemsize = Math.max(1, meta.typesize || 1);
  const budget = Math.max(1, Math.min(MAX_ITEMS, Math.floor(MAX_BYTES / itemsize)));
  const rows = view.rowAxis;
  const cols = twoDimensional(meta, view) ? view.colAxis : null;
  const r0 = view.index[rows];
  const c0 = cols === null ? 0 : view.index[cols];
  let nr;
  let nc = 1;
  if (cols !== null) {
    const side = Math.floor(Math.sqrt(budget));
    nr = Math.min(shape[rows] - r0, side);
    nc = Math.min(shape[cols] - c0, Math.max(side, Math.floor(budget / Math.max(nr, 1))));
    nr = Math.min(shape[rows] - r0, Math.max(nr, Math.floor(budget / Math.max(nc, 1))));
  } else {
    nr = Math.min(shape[rows] - r0, budget);
  }
  const parts = shape.map((n, axis) => {
    if (axis === rows) return `${r0}:${r0 + nr}`;
    if (axis === cols) return `${c0}:${c0 + nc}`;
    return String(view.index[axis]);
  });
  return { slice: parts.join(","), rows, cols, r0, c0, nr, nc };
}

function clampView(meta, view) {
  const shape = meta.shape;
  if (view.index.length !== shape.length || view.rowAxis >= Math.max(shape.length, 1)) {
    return defaultView(meta);
  }
  view.index = view.index.map((i, axis) => Math.min(Math.max(0, i), Math.max(shape[axis] - 1, 0)));
  view.fields = fieldsOf(meta);
  if (!view.fields || !view.fields.includes(view.field)) view.field = "";
  return view;
}

function numberInput(value, max, onchange, label) {
  return h("input", {
    type: "number",
    min: 0,
    max: Math.max(max, 0),
    step: 1,
    value,
    className: "index",
    ariaLabel: label,
    onchange: (event) => {
      const n = Math.floor(Number(event.target.value));
      if (Number.isFinite(n)) onchange(Math.min(Math.max(0, n), Math.max(max, 0)));
    },
  });
}

function renderArray(section, generation) {
  const { meta } = state.current;
  const shape = meta.shape;
  if (shape.length === 0) {
    loadScalar(section, generation);
    return;
  }
  const view = (state.current.view = clampView(meta, state.current.view || defaultView(meta)));
  const reload = () => renderArray(section, generation);
  const controls = h("div", { className: "controls" });
  if (shape.length >= 2) {
    const axisSelect = (value, onchange, label) =>
      h(
        "select",
        { ariaLabel: label, onchange: (event) => onchange(Number(event.target.value)) },
        ...shape.map((n, axis) => h("option", { value: axis, selected: axis === value }, `axis ${axis} (${n})`)),
      );
    controls.append(
      h(
        "label",
        {},
        "Rows: ",
        axisSelect(view.rowAxis, (axis) => {
          if (axis === view.colAxis) view.colAxis = view.rowAxis;
          view.rowAxis = axis;
          reload();
        }, "rows axis"),
      ),
      " ",
      h(
        "label",
        {},
        "Columns: ",
        axisSelect(view.colAxis, (axis) => {
          if (axis === view.rowAxis) view.rowAxis = view.colAxis;
          view.colAxis = axis;
          reload();
        }, "columns axis"),
      ),
    );
  }
  if (view.fields) {
    controls.append(
      " ",
      h(
        "label",
        {},
        "Field: ",
        h(
          "select",
          {
            className: "field",
            onchange: (event) => {
              view.field = event.target.value;
              reload();
            },
          },
          h("option", { value: "", selected: view.field === "" }, "all fields, as columns"),
          ...view.fields.map((name) => h("option", { value: name, selected: view.field === name }, name)),
        ),
      ),
    );
  }
  const twoD = twoDimensional(meta, view);
  const axes = h("div", { className: "axes" });
  shape.forEach((n, axis) => {
    const role =
      axis === view.rowAxis ? "first row" : twoD && axis === view.colAxis ? "first column" : "index";
    const set = (value) => {
      view.index[axis] = value;
      reload();
    };
    const slider = h("input", {
      type: "range",
      min: 0,
      max: Math.max(n - 1, 0),
      value: view.index[axis],
      ariaLabel: `axis ${axis} slider`,
      onchange: (event) => set(Number(event.target.value)),
    });
    axes.append(
      h(
        "div",
        { className: "axis", dataset: { axis: String(axis) } },
        h("span", { className: "axis-name" }, `axis ${axis} (${n}), ${role}: `),
        numberInput(view.index[axis], n - 1, set, `axis ${axis}`),
        " ",
        slider,
      ),
    );
  });
  const win = windowOf(meta, view);
  const page = (axis, size, direction) =>
    h(
      "button",
      {
        type: "button",
        className: "small",
        disabled: direction < 0 ? view.index[axis] === 0 : view.index[axis] + size >= shape[axis],
        onclick: () => {
          view.index[axis] = Math.min(Math.max(0, view.index[axis] + direction * size), Math.max(shape[axis] - 1, 0));
          reload();
        },
      },
      direction < 0 ? `◀ ${axis === view.rowAxis ? "rows" : "columns"}` : `${axis === view.rowAxis ? "rows" : "columns"} ▶`,
    );
  const paging = h("div", { className: "paging" }, page(view.rowAxis, TABLE_ROWS, -1), " ", page(view.rowAxis, TABLE_ROWS, 1));
  if (twoD) paging.append(" ", page(view.colAxis, TABLE_COLS, -1), " ", page(view.colAxis, TABLE_COLS, 1));
  const selection = h("p", { className: "selection" }, "Selection: ", h("code", { className: "slice" }, `[${win.slice}]`));
  const table = h("div", { className: "table-box" }, h("p", { className: "loading" }, "Loading…"));
  const plot = h("div", { className: "plot-box" });
  replace(section, h("h3", {}, "Data"), controls, axes, paging, selection, table, plot);
  loadWindow(win, view, table, plot, generation);
}

async function fetchNpy(path, slice) {
  const response = await request(apiUrl("fetch", path, { slice }), { headers: { Accept: "application/x-npy" } });
  return parseNpy(await response.arrayBuffer());
}

async function loadScalar(section, generation) {
  const { path } = state.current;
  const box = h("div", { className: "table-box" }, h("p", { className: "loading" }, "Loading…"));
  replace(section, h("h3", {}, "Data"), box);
  const stale = newLoad(generation);
  try {
    const npy = await fetchNpy(path, "");
    if (stale()) return;
    replace(box, h("p", { className: "scalar" }, "Value: ", h("code", {}, formatItem(readItem(npy.view, 0, npy.dtype), npy.dtype))));
    refreshCached(generation);
  } catch (exc) {
    if (!stale()) replace(box, errorBox(exc));
  }
}

/** Return the flat position in `npy` of the item at (row i, column j) of window `win`. */
function positioner(npy, win) {
  if (win.cols === null) return (i) => i;
  // The answer keeps the dataset's axis order: rows first unless the row axis comes later.
  const [a, b] = win.rows < win.cols ? [win.nr, win.nc] : [win.nc, win.nr];
  const strides = npy.fortran ? [1, a] : [b, 1];
  return win.rows < win.cols ? (i, j) => i * strides[0] + j * strides[1] : (i, j) => j * strides[0] + i * strides[1];
}

async function loadWindow(win, view, tableBox, plotBox, generation) {
  const { path } = state.current;
  const stale = newLoad(generation);
  let npy;
  try {
    npy = await fetchNpy(path, win.slice);
  } catch (exc) {
    if (!stale()) replace(tableBox, errorBox(exc));
    return;
  }
  if (stale()) return;
  const { dtype } = npy;
  const at = positioner(npy, win);
  const field = view.field && dtype.kind === "record" ? dtype.fields.find((f) => f.name === view.field) : null;
  const valueType = field ? field.dtype : dtype;
  const read = (i, j = 0) => readItem(npy.view, at(i, j) * dtype.itemsize + (field ? field.offset : 0), valueType);
  const rowsShown = Math.min(win.nr, TABLE_ROWS);
  let columns;
  if (dtype.kind === "record" && !field) {
    columns = dtype.fields
      .filter((f) => f.name)
      .map((f) => ({ label: f.name, cell: (i) => formatItem(readItem(npy.view, at(i) * dtype.itemsize + f.offset, f.dtype), f.dtype) }));
  } else if (win.cols !== null) {
    columns = Array.from({ length: Math.min(win.nc, TABLE_COLS) }, (_, j) => ({
      label: String(win.c0 + j),
      cell: (i) => formatItem(read(i, j), valueType),
    }));
  } else {
    columns = [{ label: "value", cell: (i) => formatItem(read(i), valueType) }];
  }
  const head = h("tr", {}, h("th", { className: "corner" }, win.cols === null ? `axis ${win.rows}` : `${win.rows} \\ ${win.cols}`), ...columns.map((c) => h("th", {}, c.label)));
  const body = [];
  for (let i = 0; i < rowsShown; i += 1) {
    body.push(h("tr", {}, h("th", {}, String(win.r0 + i)), ...columns.map((c) => h("td", {}, c.cell(i)))));
  }
  const shownCols = win.cols === null ? "" : `, columns ${win.c0}–${win.c0 + Math.min(win.nc, TABLE_COLS) - 1}`;
  replace(
    tableBox,
    rowsShown === 0
      ? h("p", { className: "empty" }, "The selection is empty.")
      : h("table", { className: "data" }, h("thead", {}, head), h("tbody", {}, ...body)),
    h("p", { className: "note" }, rowsShown ? `Rows ${win.r0}–${win.r0 + rowsShown - 1}${shownCols} of the selection.` : ""),
  );
  renderPlot(plotBox, npy, win, read, valueType, dtype, field);
  refreshCached(generation);
}

function renderPlot(box, npy, win, read, valueType, dtype, field) {
  let values;
  let what = field ? `field ${field.name}` : "values";
  let get = read;
  let type = valueType;
  if (dtype.kind === "record" && !field) {
    const first = dtype.fields.find((f) => f.name && plottable(f.dtype));
    if (!first) {
      replace(box, h("p", { className: "note" }, "Not plotted: no field holds numbers."));
      return;
    }
    const at = positioner(npy, win);
    get = (i) => readItem(npy.view, at(i) * dtype.itemsize + first.offset, first.dtype);
    type = first.dtype;
    what = `field ${first.name}`;
  }
  if (!plottable(type)) {
    replace(box, h("p", { className: "note" }, "Not plotted: the values are not numbers."));
    return;
  }
  if (type.code === "c") what = `|${what}| (magnitude)`;
  const canvas = h("canvas", { className: "plot", width: 720, height: 360 });
  const image = win.cols !== null && win.nr > 1 && win.nc > 1 && !(dtype.kind === "record" && !field);
  if (image) {
    values = new Float64Array(win.nr * win.nc);
    for (let i = 0; i < win.nr; i += 1) {
      for (let j = 0; j < win.nc; j += 1) values[i * win.nc + j] = toNumber(get(i, j), type);
    }
    drawImage(canvas, values, win.nr, win.nc);
  } else if (win.cols !== null && win.nr === 1) {
    values = Float64Array.from({ length: win.nc }, (_, j) => toNumber(get(0, j), type));
    drawLine(canvas, values, win.c0);
  } else {
    values = Float64Array.from({ length: win.nr }, (_, i) => toNumber(get(i, 0), type));
    drawLine(canvas, values, win.r0);
  }
  const shown = image
    ? `an image of rows ${win.r0}–${win.r0 + win.nr - 1} (axis ${win.rows}) by columns ${win.c0}–${win.c0 + win.nc - 1} (axis ${win.cols})`
    : `a line of ${values.length} items from ${win.nr === 1 && win.cols !== null ? win.c0 : win.r0}`;
  replace(box, h("p", { className: "note" }, `Plot of ${what}: ${shown}.`), canvas);
}

// Files and .b2frame: text, Markdown, or bytes

function decodeText(bytes, truncated) {
  if (bytes.includes(0)) return null;
  const decoder = new TextDecoder("utf-8", { fatal: true });
  // A cut may fall inside a character: up to 3 bytes of it are left out.
  for (let cut = 0; cut <= (truncated ? 3 : 0); cut += 1) {
    try {
      return decoder.decode(bytes.subarray(0, bytes.length - cut));
    } catch {
      // Try one byte less.
    }
  }
  return null;
}

function hexDump(bytes) {
  const lines = [];
  for (let offset = 0; offset < bytes.length; offset += 16) {
    const row = bytes.subarray(offset, offset + 16);
    const hex = Array.from(row, (b) => b.toString(16).padStart(2, "0")).join(" ");
    const text = Array.from(row, (b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : ".")).join("");
    lines.push(`${offset.toString(16).padStart(8, "0")}  ${hex.padEnd(47)}  ${text}`);
  }
  return lines.join("\n");
}

async function renderBytes(section, generation) {
  const { path, meta } = state.current;
  const box = h("div", { className: "text-box" }, h("p", { className: "loading" }, "Loading…"));
  replace(section, h("h3", {}, "Content"), box);
  const typesize = Math.max(1, meta.typesize || 1);
  const items = Math.ceil(MAX_TEXT / typesize);
  const stale = newLoad(generation);
  let bytes;
  try {
    const response = await request(apiUrl("fetch", path, { slice: `0:${items}` }));
    bytes = new Uint8Array(await response.arrayBuffer());
  } catch (exc) {
    if (!stale()) replace(box, errorBox(exc));
    return;
  }
  if (stale()) return;
  const total = meta.nbytes ?? bytes.length;
  const truncated = bytes.length < total;
  const note = truncated ? h("p", { className: "note" }, `The first ${formatBytes(bytes.length)} of ${formatBytes(total)}; download it for the rest.`) : null;
  const text = decodeText(bytes, truncated);
  if (text === null) {
    const shown = bytes.subarray(0, HEX_BYTES);
    replace(
      box,
      h("p", { className: "note" }, `Binary content: the first ${shown.length} bytes of ${formatBytes(total)}.`),
      h("pre", { className: "hex" }, hexDump(shown)),
    );
  } else if (/\.(md|markdown)$/i.test(path)) {
    const rendered = h("div", { className: "markdown" }, renderMarkdown(text));
    const source = h("pre", { className: "text", hidden: true }, text);
    const toggle = h("input", {
      type: "checkbox",
      onchange: (event) => {
        rendered.hidden = event.target.checked;
        source.hidden = !event.target.checked;
      },
    });
    replace(box, h("label", { className: "source-toggle" }, toggle, " Show the Markdown source"), note, rendered, source);
  } else {
    replace(box, note, h("pre", { className: "text" }, text));
  }
  refreshCached(generation);
}

async function main() {
  $("filter").addEventListener("input", (event) => {
    state.filter = event.target.value;
    renderTree();
  });
  $("logout").addEventListener("click", logout);
  window.addEventListener("hashchange", route);
  await loadMe();
  await keepListsFresh();
  route();
  document.body.dataset.ready = "true";
}

main();
