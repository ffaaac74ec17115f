// Copies the pinned front-end libraries from node_modules into static/vendor,
// the only place templates load them from (no CDN: the dashboard works offline).
const fs = require("fs");
const path = require("path");

const root = path.resolve(__dirname, "..");
const vendor = path.join(root, "static", "vendor");
const files = {
  "htmx.min.js": "node_modules/htmx.org/dist/htmx.min.js",
};

fs.mkdirSync(vendor, { recursive: true });
for (const [target, source] of Object.entries(files)) {
  fs.copyFileSync(path.join(root, source), path.join(vendor, target));
}
console.log(`copied ${Object.keys(files).length} files to static/vendor`);
