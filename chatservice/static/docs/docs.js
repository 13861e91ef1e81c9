// Renders ../openapi.json (OpenAPI 3.1) as a page: operations by tag with their parameters,
// request bodies, responses and security, then the component schemas. Plain JavaScript, no
// dependencies; every text from the document goes into the page as text, never as HTML.
"use strict";

(function () {
  const METHODS = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
  const MAX_DEPTH = 5;
  let doc = null;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined && value !== false) {
        node.setAttribute(name, value === true ? "" : String(value));
      }
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // The document's descriptions use only `code` spans of Markdown.
  function prose(text) {
    const fragment = document.createDocumentFragment();
    String(text || "").split(/(`[^`]*`)/).forEach(function (part) {
      if (part.length > 1 && part.startsWith("`") && part.endsWith("`")) {
        fragment.append(el("code", {}, part.slice(1, -1)));
      } else if (part) {
        fragment.append(document.createTextNode(part));
      }
    });
    return fragment;
  }

  function refName(ref) {
    return ref.split("/").pop();
  }

  function lookup(ref) {
    // Local references only ("#/components/..."), which is all this document uses.
    let node = doc;
    for (const key of ref.replace(/^#\//, "").split("/")) {
      node = node && node[key.replace(/~1/g, "/").replace(/~0/g, "~")];
    }
    return node || {};
  }

  function slug(text) {
    return String(text).replace(/[^A-Za-z0-9_-]+/g, "-");
  }

  function schemaLink(ref) {
    const name = refName(ref);
    return el("a", { href: "#schema-" + slug(name), class: "ref" }, name);
  }

  function json(value) {
    return JSON.stringify(value);
  }

  // A one-line label for a schema's type: "string | null", "array of Message", "= 200"...
  function typeLabel(schema) {
    if (!schema || typeof schema !== "object") return document.createTextNode("any");
    if (schema.$ref) return schemaLink(schema.$ref);
    if ("const" in schema) return el("code", {}, "= " + json(schema.const));
    if (schema.enum) return el("span", {}, "one of ", el("code", {}, schema.enum.map(json).join(", ")));
    const types = Array.isArray(schema.type) ? schema.type : schema.type ? [schema.type] : [];
    const span = el("span", { class: "type" });
    if (!types.length) {
      span.append(schema.anyOf ? "any of" : schema.oneOf ? "one of" : schema.allOf ? "all of" : "any");
      return span;
    }
    types.forEach(function (type, index) {
      if (index) span.append(" | ");
      if (type === "array" && schema.items) {
        span.append("array of ", typeLabel(schema.items));
      } else {
        span.append(type);
      }
    });
    return span;
  }

  const CONSTRAINTS = [
    ["minimum", "≥ "], ["maximum", "≤ "], ["exclusiveMinimum", "> "], ["exclusiveMaximum", "< "],
    ["minLength", "min length "], ["maxLength", "max length "], ["minItems", "min items "],
    ["maxItems", "max items "], ["pattern", "pattern "], ["format", "format "],
    ["default", "default "],
  ];

  function constraintList(schema) {
    const items = [];
    if (!schema || typeof schema !== "object") return items;
    for (const [key, label] of CONSTRAINTS) {
      if (key in schema) {
        const value = key === "pattern" || key === "format" ? schema[key] : json(schema[key]);
        if (value.length > 40) {
          // Long patterns (spelled-out character classes) stay folded.
          items.push(el("details", { class: "constraint" }, el("summary", {}, label.trim()), el("code", {}, value)));
        } else {
          items.push(el("span", { class: "constraint" }, label, el("code", {}, value)));
        }
      }
    }
    if (schema.writeOnly) items.push(el("span", { class: "constraint" }, "write-only"));
    if (schema.examples) {
      items.push(el("span", { class: "constraint" }, "e.g. ",
        el("code", {}, schema.examples.map(json).join(", "))));
    }
    return items;
  }

  function details(schema) {
    const cell = el("div", { class: "details" });
    const constraints = constraintList(schema);
    if (constraints.length) cell.append(el("div", { class: "constraints" }, constraints));
    if (schema && schema.description) cell.append(el("div", {}, prose(schema.description)));
    return cell;
  }

  // Whether a schema has structure worth a nested table (refs are links instead).
  function isStructured(schema) {
    if (!schema || typeof schema !== "object" || schema.$ref) return false;
    if (schema.properties || schema.anyOf || schema.oneOf || schema.allOf) return true;
    if (schema.contentSchema || (schema.else && schema.else.contentSchema)) return true;
    return isStructured(schema.items);
  }

  // `bare`: the caller already showed the type and details (a property's table row).
  function renderSchema(schema, depth, bare) {
    const box = el("div", { class: "schema" });
    if (!schema || typeof schema !== "object") return box;
    if (depth > MAX_DEPTH) {
      box.append("…");
      return box;
    }
    if (schema.$ref) {
      box.append(schemaLink(schema.$ref));
      return box;
    }
    if (!bare) {
      // A bare combinator says "any of:" below; its type label would say it twice.
      const combinatorOnly = !schema.type && !schema.enum && !("const" in schema) &&
        (schema.anyOf || schema.oneOf || schema.allOf);
      if (!combinatorOnly) box.append(el("div", { class: "schema-head" }, typeLabel(schema)));
      box.append(details(schema));
    }
    for (const key of ["allOf", "anyOf", "oneOf"]) {
      // Conditions (if/then/else) are spelled out in the properties' descriptions.
      const parts = (Array.isArray(schema[key]) ? schema[key] : []).filter(function (part) {
        return !(part && typeof part === "object" && Object.keys(part).every(function (k) {
          return k === "if" || k === "then" || k === "else";
        }));
      });
      if (parts.length) {
        const list = el("ul", { class: "alternatives" });
        parts.forEach(function (part) { list.append(el("li", {}, renderSchema(part, depth + 1))); });
        box.append(el("div", { class: "combinator" }, key.replace("Of", " of") + ":"), list);
      }
    }
    if (schema.properties) box.append(propertyTable(schema, depth));
    // An event's data: JSON of a given schema (`[DONE]` being the exception, under "if").
    const content = schema.contentSchema ? schema : schema.else;
    if (content && content.contentSchema) {
      box.append(el("div", { class: "combinator" }, "content (" + (content.contentMediaType || "") + "):"),
        renderSchema(content.contentSchema, depth + 1));
    }
    if (schema.items && isStructured(schema.items)) {
      box.append(el("div", { class: "combinator" }, "items:"), renderSchema(schema.items, depth + 1));
    }
    return box;
  }

  function propertyTable(schema, depth) {
    const required = new Set(schema.required || []);
    const table = el("table", { class: "props" },
      el("thead", {}, el("tr", {}, el("th", {}, "field"), el("th", {}, "type"), el("th", {}, "details"))));
    const body = el("tbody");
    for (const [name, prop] of Object.entries(schema.properties)) {
      const detail = details(prop);
      if (isStructured(prop)) detail.append(renderSchema(prop, depth + 1, true));
      body.append(el("tr", {},
        el("td", {}, el("code", {}, name), required.has(name) ? el("span", { class: "required" }, " required") : null),
        el("td", {}, typeLabel(prop)),
        el("td", {}, detail)));
    }
    table.append(body);
    return table;
  }

  // An operation's body or response schema: a reference is shown expanded one level, since
  // that is what a reader of the operation wants to see.
  function renderPayload(schema) {
    if (schema && schema.$ref) {
      const target = lookup(schema.$ref);
      return el("div", {}, el("div", { class: "schema-head" }, schemaLink(schema.$ref)),
        renderSchema(Object.assign({}, target, { description: target.description }), 1));
    }
    return renderSchema(schema, 0);
  }

  function renderContent(content) {
    const box = el("div", { class: "content" });
    for (const [media, entry] of Object.entries(content || {})) {
      box.append(el("div", { class: "media" }, el("code", {}, media)));
      box.append(renderPayload(entry.schema));
      if ("example" in entry) {
        box.append(el("pre", { class: "example" }, JSON.stringify(entry.example, null, 2)));
      }
    }
    return box;
  }

  function securityLabel(requirements) {
    if (!requirements) return null;
    if (!requirements.length) return "none (open)";
    return requirements.map(function (requirement) {
      const names = Object.keys(requirement);
      return names.length ? names.join(" + ") : "none";
    }).join("  or  ");
  }

  function renderParameters(parameters) {
    const table = el("table", { class: "params" },
      el("thead", {}, el("tr", {}, el("th", {}, "name"), el("th", {}, "in"), el("th", {}, "type"), el("th", {}, "details"))));
    const body = el("tbody");
    for (const raw of parameters) {
      const parameter = raw.$ref ? lookup(raw.$ref) : raw;
      const detail = details(parameter.schema);
      if (parameter.description) detail.append(el("div", {}, prose(parameter.description)));
      body.append(el("tr", {},
        el("td", {}, el("code", {}, parameter.name),
          parameter.required ? el("span", { class: "required" }, " required") : null),
        el("td", {}, parameter.in),
        el("td", {}, typeLabel(parameter.schema)),
        el("td", {}, detail)));
    }
    table.append(body);
    return table;
  }

  function renderOperation(method, path, operation) {
    const id = "op-" + slug(operation.operationId || method + path);
    const summary = el("summary", {},
      el("span", { class: "method method-" + method }, method.toUpperCase()),
      el("code", { class: "path" }, path),
      el("span", { class: "op-summary" }, operation.summary || ""));
    const body = el("div", { class: "op-body" });
    if (operation.description) body.append(el("p", {}, prose(operation.description)));
    const security = securityLabel(operation.security || doc.security);
    if (security) body.append(el("p", { class: "security" }, "Security: ", el("code", {}, security)));
    if (operation.parameters && operation.parameters.length) {
      body.append(el("h4", {}, "Parameters"), renderParameters(operation.parameters));
    }
    if (operation.requestBody) {
      const request = operation.requestBody;
      body.append(el("h4", {}, "Request body", request.required ? " (required)" : ""));
      if (request.description) body.append(el("p", {}, prose(request.description)));
      body.append(renderContent(request.content));
    }
    body.append(el("h4", {}, "Responses"));
    for (const [status, raw] of Object.entries(operation.responses || {})) {
      const response = raw.$ref ? lookup(raw.$ref) : raw;
      const block = el("div", { class: "response" },
        el("div", { class: "status status-" + String(status)[0] }, el("strong", {}, status), " ",
          prose(response.description)));
      for (const [name, header] of Object.entries(response.headers || {})) {
        const resolved = header.$ref ? lookup(header.$ref) : header;
        block.append(el("div", { class: "header" }, "Header ", el("code", {}, name), ": ",
          prose(resolved.description || "")));
      }
      if (response.content) block.append(renderContent(response.content));
      body.append(block);
    }
    return el("details", { class: "op", id: id, "data-search": (method + " " + path + " " + (operation.summary || "")).toLowerCase() },
      summary, body);
  }

  function render(document_) {
    doc = document_;
    const info = doc.info || {};
    document.title = (info.title || "API") + " " + (info.version || "");
    document.getElementById("title").textContent = (info.title || "API") + " " + (info.version || "");
    document.getElementById("summary").replaceChildren(prose(info.summary || ""));

    const content = document.getElementById("content");
    const toc = document.getElementById("toc");
    content.replaceChildren();
    toc.replaceChildren();
    if (info.description) content.append(el("p", { class: "intro" }, prose(info.description)));

    const filter = el("input", { type: "search", placeholder: "Filter operations", "aria-label": "Filter operations" });
    toc.append(filter);

    const groups = new Map((doc.tags || []).map(function (tag) { return [tag.name, []]; }));
    for (const [path, item] of Object.entries(doc.paths || {})) {
      for (const method of METHODS) {
        if (!item[method]) continue;
        const tag = (item[method].tags || ["Other"])[0];
        if (!groups.has(tag)) groups.set(tag, []);
        groups.get(tag).push(renderOperation(method, path, item[method]));
      }
    }
    const tagInfo = new Map((doc.tags || []).map(function (tag) { return [tag.name, tag]; }));
    for (const [name, operations] of groups) {
      if (!operations.length) continue;
      const section = el("section", { class: "tag", id: "tag-" + slug(name) }, el("h2", {}, name));
      const description = tagInfo.get(name) && tagInfo.get(name).description;
      if (description) section.append(el("p", {}, prose(description)));
      const links = el("ul");
      for (const operation of operations) {
        section.append(operation);
        const label = operation.querySelector("summary");
        links.append(el("li", {}, el("a", { href: "#" + operation.id },
          label.querySelector(".method").textContent + " " + label.querySelector(".path").textContent)));
      }
      content.append(section);
      toc.append(el("div", { class: "toc-tag" }, el("a", { href: "#" + section.id }, name)), links);
    }

    const components = doc.components || {};
    const schemes = components.securitySchemes || {};
    if (Object.keys(schemes).length) {
      const section = el("section", { id: "security" }, el("h2", {}, "Security schemes"));
      for (const [name, scheme] of Object.entries(schemes)) {
        const how = scheme.type === "apiKey" ? "header " + scheme.name : scheme.type + " " + (scheme.scheme || "");
        section.append(el("div", { class: "scheme" }, el("code", {}, name), " (", how, "): ", prose(scheme.description)));
      }
      content.append(section);
      toc.append(el("div", { class: "toc-tag" }, el("a", { href: "#security" }, "Security schemes")));
    }
    const schemas = components.schemas || {};
    const section = el("section", { id: "schemas" }, el("h2", {}, "Schemas"));
    for (const [name, schema] of Object.entries(schemas)) {
      section.append(el("div", { class: "component", id: "schema-" + slug(name) }, el("h3", {}, name), renderSchema(schema, 0)));
    }
    content.append(section);
    toc.append(el("div", { class: "toc-tag" }, el("a", { href: "#schemas" }, "Schemas")));

    filter.addEventListener("input", function () {
      const needle = filter.value.trim().toLowerCase();
      for (const operation of content.querySelectorAll("details.op")) {
        operation.hidden = Boolean(needle) && !operation.dataset.search.includes(needle);
      }
    });
    // Open the operation a link points at (anchors into closed <details> show nothing).
    // The page was empty when the browser looked for the #anchor: look again now.
    function openTarget() {
      let id = location.hash.slice(1);
      try {
        id = decodeURIComponent(id);
      } catch (error) {
        // A malformed %-escape: look the hash up as it is.
      }
      const target = id && document.getElementById(id);
      if (!target) return;
      if (target.tagName === "DETAILS") target.open = true;
      target.scrollIntoView();
    }
    window.addEventListener("hashchange", openTarget);
    openTarget();
    document.body.dataset.ready = "";
  }

  function fail(error) {
    document.getElementById("content").replaceChildren(
      el("p", { class: "error" }, "Could not load openapi.json: " + error));
  }

  document.addEventListener("DOMContentLoaded", function () {
    fetch("openapi.json", { headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(render)
      .catch(fail);
  });
})();
