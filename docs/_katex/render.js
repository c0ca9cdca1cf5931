// Render TeX to HTML with KaTeX, for docs/hooks/katex.py (build time, no browser).
// stdin:  JSON {"items": [{"tex": "...", "display": true|false}, ...], "macros": {...}}
// stdout: JSON {"html": ["...", ...], "errors": ["...", ...]}   (errors: one line per failed item)
"use strict";
const katex = require("katex");

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => { input += chunk; });
process.stdin.on("end", () => {
  const request = JSON.parse(input);
  const html = [];
  const errors = [];
  for (const item of request.items) {
    try {
      html.push(katex.renderToString(item.tex, {
        displayMode: item.display,
        throwOnError: true,
        // Unknown commands and LaTeX-incompatible input are build errors, not silent red text.
        strict: (code, msg) => { errors.push(`${code}: ${msg} in ${JSON.stringify(item.tex)}`); return "ignore"; },
        macros: Object.assign({}, request.macros || {}),
        output: "htmlAndMathml",
      }));
    } catch (e) {
      errors.push(`${e.message} in ${JSON.stringify(item.tex)}`);
      html.push("");
    }
  }
  process.stdout.write(JSON.stringify({ html, errors }));
});
