// The web client's unit tests: its pure rules (paging, polling back-off, routes, feed merge),
// in Node, no browser; the browser tests (tests/browser) drive the built app in Chromium.
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["src/**/*.test.ts"],
    environment: "node",
  },
});
