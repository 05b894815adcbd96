// Renders the OpenAPI document of this service; no third-party code.
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

// Text with `backticked` spans shown as code, never parsed as HTML.
function inline(text) {
  const span = document.createElement("span");
  String(text || "").split("`").forEach((part, index) => {
    span.append(index % 2 ? el("code", {}, part) : part);
  });
  return span;
}

function resolve(doc, schema) {
  if (schema && schema.$ref) {
    const path = schema.$ref.replace(/^#\//, "").split("/");
    return path.reduce((node, key) => node[key], doc);
  }
  return schema || {};
}

function typeOf(schema) {
  const kind = Array.isArray(schema.type) ? schema.type.join(" | ") : schema.type;
  const bounds = [];
  if (schema.minimum !== undefined) bounds.push(`≥ ${schema.minimum}`);
  if (schema.maximum !== undefined) bounds.push(`≤ ${schema.maximum}`);
  if (schema.pattern) bounds.push(schema.pattern);
  if (schema.format) bounds.push(schema.format);
  if (schema.default !== undefined) bounds.push(`default ${schema.default}`);
  return [kind, ...bounds].filter(Boolean).join(", ");
}

function parameterTable(parameters) {
  if (!parameters.length) return el("p", {}, "No parameters.");
  const rows = parameters.map((p) =>
    el("tr", {},
      el("td", {}, el("code", {}, p.name), p.required ? " (required)" : ""),
      el("td", {}, typeOf(p.schema || {})),
      el("td", {}, inline(p.description))));
  return el("table", {},
    el("thead", {}, el("tr", {}, el("th", {}, "parameter"), el("th", {}, "type"), el("th", {}, "meaning"))),
    el("tbody", {}, ...rows));
}

function responseBlock(doc, status, response) {
  const [media, content] = Object.entries(response.content || {})[0] || [];
  const body = [];
  if (content && content.example !== undefined) {
    const text = typeof content.example === "string"
      ? content.example : JSON.stringify(content.example, null, 2);
    body.push(el("pre", {}, text));
  }
  if (content && content.schema) {
    const schema = JSON.stringify(resolve(doc, content.schema), null, 2);
    body.push(el("details", {}, el("summary", {}, "schema"), el("pre", {}, schema)));
  }
  return el("div", {},
    el("p", {}, el("span", { class: "status" }, status), " ",
      inline(response.description), media ? ` (${media})` : ""),
    ...body);
}

function tryForm(path, parameters) {
  const output = el("pre", { hidden: "" });
  const inputs = parameters.map((p) =>
    el("label", {}, ` ${p.name} `, el("input", { name: p.name, value: p.example ?? "" })));
  const button = el("button", { type: "submit" }, "Send");
  const form = el("form", { class: "try" }, ...inputs, " ", button, output);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    for (const input of form.querySelectorAll("input")) {
      if (input.value !== "") query.append(input.name, input.value);
    }
    const url = query.toString() ? `${path}?${query}` : path;
    const response = await fetch(url);
    const text = await response.text();
    output.hidden = false;
    output.textContent = `GET ${url}\n${response.status} ${response.statusText}\n\n${text}`;
  });
  return form;
}

function operationSection(doc, path, operation) {
  const parameters = operation.parameters || [];
  const responses = Object.entries(operation.responses || {}).map(
    ([status, response]) => responseBlock(doc, status, resolve(doc, response)));
  return el("section", { class: "op", id: operation.operationId },
    el("h2", {}, el("span", { class: "method" }, "GET"), el("code", {}, path)),
    el("p", {}, inline(operation.summary)),
    operation.description ? el("p", {}, inline(operation.description)) : null,
    el("h3", {}, "Parameters"), parameterTable(parameters),
    el("h3", {}, "Try it"), tryForm(path, parameters),
    el("h3", {}, "Responses"), ...responses);
}

async function render() {
  const main = document.getElementById("operations");
  try {
    const doc = await (await fetch("/openapi.json")).json();
    document.getElementById("title").textContent = `${doc.info.title} ${doc.info.version}`;
    document.getElementById("description").replaceChildren(inline(doc.info.description));
    const toc = document.getElementById("toc");
    main.replaceChildren();
    for (const [path, item] of Object.entries(doc.paths)) {
      const operation = item.get;
      toc.append(el("a", { href: `#${operation.operationId}` }, path));
      main.append(operationSection(doc, path, operation));
    }
  } catch (error) {
    main.replaceChildren(el("p", {}, `Could not load /openapi.json: ${error}`));
  }
}

render();
