// A small Markdown renderer that builds DOM nodes: every piece of the text
// becomes a text node, so no HTML in it is ever parsed (raw HTML shows as
// text), and links are made only to http and https URLs.
//
// It knows headings, paragraphs, emphasis, strong, code spans and fenced or
// indented code, block quotes, lists (nested by indentation), rules, links
// and autolinks; images become links. Nesting is bounded, and so is how far
// a closing mark is looked for, so that hostile text cannot make it slow.

import { h } from "./dom.js";

const MAX_DEPTH = 12;
// How far (characters) a closing mark or bracket is looked for.
const REACH = 2000;
const FENCE = /^ {0,3}(`{3,}|~{3,})(.*)$/;
const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const ITEM = /^( {0,12})([-*+]|\d{1,9}[.)])(?:[ \t]+(.*))?$/;
const WORD = /[\p{L}\p{N}]/u;
const PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/** Return `url` if it is an absolute http or https URL, else null. */
export function safeUrl(url) {
  try {
    const parsed = new URL(url.trim());
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch {
    return null;
  }
}

function link(label, url) {
  const href = safeUrl(url);
  if (href === null) return h("span", {}, ...label);
  return h("a", { href, rel: "noopener noreferrer nofollow", target: "_blank" }, ...label);
}

/** Return the nodes of a line of inline Markdown. */
export function renderInline(text, depth = 0) {
  const nodes = [];
  let plain = "";
  const flush = () => {
    if (plain) nodes.push(document.createTextNode(plain));
    plain = "";
  };
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (c === "\\" && i + 1 < text.length && PUNCTUATION.includes(text[i + 1])) {
      plain += text[i + 1];
      i += 2;
      continue;
    }
    if (c === "\\" && text[i + 1] === "\n") {
      flush();
      nodes.push(h("br"));
      i += 2;
      continue;
    }
    if (c === "`") {
      const run = /^`+/.exec(text.slice(i))[0];
      const end = text.indexOf(run, i + run.length);
      if (end !== -1 && end - i < REACH) {
        flush();
        const code = text.slice(i + run.length, end).replace(/\n/g, " ");
        nodes.push(h("code", {}, code.length > 1 && code.startsWith(" ") && code.endsWith(" ") ? code.slice(1, -1) : code));
        i = end + run.length;
        continue;
      }
      plain += run;
      i += run.length;
      continue;
    }
    if ((c === "*" || c === "_") && depth < MAX_DEPTH) {
      const strong = text[i + 1] === c;
      const mark = strong ? c + c : c;
      const start = i + mark.length;
      let end = text.indexOf(mark, start + 1);
      // A single mark does not close on half of a double one.
      while (!strong && end !== -1 && text[end + 1] === c && end - i < REACH) end = text.indexOf(mark, end + 2);
      const opens = start < text.length && !/\s/.test(text[start]);
      // Underscores inside a word (snake_case) are not emphasis.
      const inWord = c === "_" && (WORD.test(text[i - 1] || "") || WORD.test(text[end + mark.length] || ""));
      if (opens && !inWord && end !== -1 && end - i < REACH && !/\s/.test(text[end - 1])) {
        flush();
        nodes.push(h(strong ? "strong" : "em", {}, ...renderInline(text.slice(start, end), depth + 1)));
        i = end + mark.length;
        continue;
      }
      plain += mark;
      i += mark.length;
      continue;
    }
    if ((c === "[" || (c === "!" && text[i + 1] === "[")) && depth < MAX_DEPTH && text.includes("](", i)) {
      const open = c === "!" ? i + 1 : i;
      const parsed = linkAt(text, open);
      if (parsed) {
        flush();
        const label = renderInline(parsed.label, depth + 1);
        if (c === "!") label.unshift("image: ");
        nodes.push(link(label, parsed.url));
        i = parsed.end;
        continue;
      }
    }
    if (c === "<") {
      const end = text.indexOf(">", i);
      const inside = end === -1 || end - i > REACH ? "" : text.slice(i + 1, end);
      if (/^https?:\/\/[^\s<>]+$/i.test(inside)) {
        flush();
        nodes.push(link([inside], inside));
        i = end + 1;
        continue;
      }
    }
    if (c === " " && text.startsWith("  \n", i)) {
      flush();
      nodes.push(h("br"));
      i += 3;
      continue;
    }
    plain += c;
    i += 1;
  }
  flush();
  return nodes;
}

/** Return {label, url, end} of a link [label](url "title") whose '[' is at `open`, or null. */
function linkAt(text, open) {
  let level = 0;
  let close = -1;
  for (let j = open; j < text.length && j - open < REACH; j += 1) {
    if (text[j] === "\\") j += 1;
    else if (text[j] === "[") level += 1;
    else if (text[j] === "]" && --level === 0) {
      close = j;
      break;
    }
  }
  if (close === -1 || text[close + 1] !== "(") return null;
  // The target ends at the parenthesis that closes its own (balanced inside).
  let end = -1;
  level = 0;
  for (let j = close + 1; j < text.length && j - close < REACH; j += 1) {
    if (text[j] === "\\") j += 1;
    else if (text[j] === "(") level += 1;
    else if (text[j] === ")" && --level === 0) {
      end = j;
      break;
    }
  }
  if (end === -1) return null;
  let target = text.slice(close + 2, end).trim();
  const titled = /^(\S+)\s+(["'(]).*$/.exec(target);
  if (titled) target = titled[1];
  if (target.startsWith("<") && target.endsWith(">")) target = target.slice(1, -1);
  return { label: text.slice(open + 1, close), url: target, end: end + 1 };
}

function indentOf(line) {
  return /^ */.exec(line.replace(/\t/g, "    "))[0].length;
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line);
}

/** Render block-level Markdown `lines` into `parent`. */
function renderBlocks(lines, parent, depth) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i += 1;
      continue;
    }
    if (depth >= MAX_DEPTH) {
      // Nested too deeply: the rest as it is.
      parent.append(h("pre", {}, lines.slice(i).join("\n")));
      return;
    }
    let match;
    if ((match = FENCE.exec(line))) {
      const fence = match[1];
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trim().startsWith(fence)) body.push(lines[i++]);
      i += 1;
      parent.append(h("pre", {}, h("code", {}, body.join("\n"))));
    } else if ((match = HEADING.exec(line))) {
      parent.append(h(`h${match[1].length}`, {}, ...renderInline(match[2] || "", depth)));
      i += 1;
    } else if (RULE.test(line)) {
      parent.append(h("hr"));
      i += 1;
    } else if (QUOTE.test(line)) {
      const body = [];
      while (i < lines.length && lines[i].trim() && (match = QUOTE.exec(lines[i]) || [null, lines[i]])) {
        body.push(match[1]);
        i += 1;
      }
      const quote = h("blockquote");
      renderBlocks(body, quote, depth + 1);
      parent.append(quote);
    } else if (ITEM.test(line)) {
      i = renderList(lines, i, parent, depth);
    } else if (indentOf(line) >= 4) {
      const body = [];
      while (i < lines.length && (indentOf(lines[i]) >= 4 || !lines[i].trim())) body.push(lines[i++].replace(/^ {4}/, ""));
      while (body.length && !body[body.length - 1].trim()) body.pop();
      parent.append(h("pre", {}, h("code", {}, body.join("\n"))));
    } else {
      const body = [];
      while (i < lines.length && lines[i].trim() && !(body.length && startsBlock(lines[i]))) body.push(lines[i++]);
      parent.append(h("p", {}, ...renderInline(body.map((l) => l.replace(/^\s+/, "")).join("\n"), depth)));
    }
  }
}

/** Render the list that starts at line `i`; return the index of the line after it. */
function renderList(lines, i, parent, depth) {
  const first = ITEM.exec(lines[i]);
  const ordered = /\d/.test(first[2]);
  const list = ordered ? h("ol") : h("ul");
  if (ordered && parseInt(first[2], 10) !== 1) list.start = parseInt(first[2], 10);
  const base = first[1].length;
  const items = [];
  let loose = false;
  while (i < lines.length) {
    const match = ITEM.exec(lines[i]);
    if (match && match[1].length <= base + 1 && /\d/.test(match[2]) === ordered) {
      items.push({ lines: [match[3] || ""], indent: match[1].length + match[2].length + 1 });
      i += 1;
      continue;
    }
    const item = items[items.length - 1];
    if (!lines[i].trim()) {
      // A blank line ends the list unless the item goes on (indented) after it.
      const next = lines[i + 1];
      if (next === undefined || (indentOf(next) < item.indent && !(ITEM.test(next) && indentOf(next) <= base + 1))) break;
      loose = true;
      item.lines.push("");
      i += 1;
      continue;
    }
    if (indentOf(lines[i]) >= item.indent || !startsBlock(lines[i])) {
      item.lines.push(lines[i].replace(/\t/g, "    ").slice(Math.min(item.indent, indentOf(lines[i]))));
      i += 1;
      continue;
    }
    break;
  }
  for (const item of items) {
    const li = h("li");
    const simple = !loose && item.lines.every((l) => !startsBlock(l) || l === item.lines[0]);
    if (simple && !startsBlock(item.lines[0])) {
      li.append(...renderInline(item.lines.map((l) => l.trim()).join("\n"), depth + 1));
    } else {
      renderBlocks(item.lines, li, depth + 1);
    }
    list.append(li);
  }
  parent.append(list);
  return i;
}

/** Return a fragment of DOM nodes rendering Markdown `text`. */
export function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  renderBlocks(text.replace(/\r\n?/g, "\n").split("\n"), fragment, 0);
  return fragment;
}
