// Building the page's elements. Everything a publisher sent (names, metadata,
// file contents) goes into the page as text nodes, never as HTML: nothing in
// this page parses HTML out of data.

/**
 * Return a new element `tag` with `props` set as properties (className, type,
 * value...) and `children` appended: strings as text, null and false skipped.
 */
export function h(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "dataset") {
      Object.assign(element.dataset, value);
    } else if (name.startsWith("on")) {
      element.addEventListener(name.slice(2), value);
    } else {
      element[name] = value;
    }
  }
  append(element, ...children);
  return element;
}

/** Append `children` to `element`: strings and numbers as text. */
export function append(element, ...children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** Replace the children of `element` with `children`. */
export function replace(element, ...children) {
  element.replaceChildren();
  return append(element, ...children);
}

/** Return `n` bytes as a short human-readable size: 1.2 MB. */
export function formatBytes(n) {
  const units = ["B", "kB", "MB", "GB", "TB", "PB"];
  let value = Number(n);
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}
