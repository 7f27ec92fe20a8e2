// The web client (index.html) and the control room (control/index.html), built into dist/ and
// served by the gateway at / and /control.
import { defineConfig } from "vite";

export default defineConfig({
  build: {
    outDir: "dist",
    emptyOutDir: true,
    assetsInlineLimit: 0, // no data: URIs: the CSP allows only our own files
    modulePreload: { polyfill: false }, // the polyfill is an inline script
    rollupOptions: {
      input: { app: "index.html", control: "control/index.html" },
    },
  },
});
