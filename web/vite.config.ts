// The web client (index.html), the control room (control/) and the API explorer (docs/), built
// into dist/ and served by the gateway at /, /control and /docs.
import { defineConfig } from "vite";

export default defineConfig({
  build: {
    outDir: "dist",
    emptyOutDir: true,
    assetsInlineLimit: 0, // no data: URIs: the CSP allows only our own files
    modulePreload: { polyfill: false }, // the polyfill is an inline script
    chunkSizeWarningLimit: 1700, // Swagger UI (/docs only) is 1.6 MB as shipped; the app is ~40 kB
    rollupOptions: {
      input: { app: "index.html", control: "control/index.html", docs: "docs/index.html" },
    },
  },
});
