import { describe, expect, it } from "vitest";
import { ApiError } from "../api/client";
import type { Post } from "../api/types";
import { pageUrl } from "./paged";
import { nextDelay } from "./poll";
import { parse } from "./router";
import { ago } from "./time";
import { merge } from "./views/Feed";

const post = (id: string, likes = 0): Post => ({ id, like_count: likes }) as unknown as Post;

describe("pageUrl", () => {
  it("adds the page size, and the cursor escaped when there is one", () => {
    expect(pageUrl("/v1/feed", null)).toBe("/v1/feed?limit=20");
    expect(pageUrl("/v1/search?q=a", "a+b/c=")).toBe("/v1/search?q=a&limit=20&cursor=a%2Bb%2Fc%3D");
  });
});

describe("merge (the feed's poll)", () => {
  it("puts new posts in their place by id and takes the page's counts for those shown", () => {
    const shown = [post("05"), post("03", 1), post("01")];
    const merged = merge(shown, [post("04"), post("03", 7), post("02")]);
    expect(merged.map((p) => p.id)).toEqual(["05", "04", "03", "02", "01"]);
    expect(merged.find((p) => p.id === "03")?.like_count).toBe(7);
  });

  it("shows a post once however often it comes", () => {
    const merged = merge(merge([post("02")], [post("02"), post("01")]), [post("01")]);
    expect(merged.map((p) => p.id)).toEqual(["02", "01"]);
  });
});

describe("nextDelay (polling under load)", () => {
  it("goes back to the base after a success", () => {
    expect(nextDelay(1000, 64_000, null)).toBe(1000);
  });

  it("backs off, and never polls before a 503's Retry-After", () => {
    const shed = new ApiError(503, "overloaded", "busy", 30);
    for (let i = 0; i < 20; i++) {
      const delay = nextDelay(1000, 1000, shed);
      expect(delay).toBeGreaterThanOrEqual(30_000);
      expect(delay).toBeLessThanOrEqual(45_000);
    }
    expect(nextDelay(1000, 4000, new Error("net"))).toBeGreaterThanOrEqual(8000);
    expect(nextDelay(1000, 10 * 60_000, new Error("net"))).toBeLessThanOrEqual(1.5 * 5 * 60_000);
  });
});

describe("parse (routes)", () => {
  it("knows every screen and decodes what it takes from the path", () => {
    expect(parse("/")).toEqual({ name: "feed" });
    expect(parse("/join")).toEqual({ name: "welcome", tab: "join" });
    expect(parse("/@ann%20b")).toEqual({ name: "profile", handle: "ann b" });
    expect(parse("/@ann/followers")).toEqual({ name: "people", handle: "ann", list: "followers" });
    expect(parse("/p/abc")).toEqual({ name: "post", id: "abc" });
    expect(parse("/@ann/likes")).toEqual({ name: "missing" });
    expect(parse("/admin")).toEqual({ name: "missing" });
  });
});

describe("ago", () => {
  it("says how long ago in the largest whole unit", () => {
    const now = Date.parse("2026-12-07T12:00:00Z");
    expect(ago("2026-12-07T11:59:30Z", now)).toBe("now");
    expect(ago("2026-12-07T11:55:00Z", now)).toBe("5 m");
    expect(ago("2026-12-07T09:00:00Z", now)).toBe("3 h");
    expect(ago("2026-12-08T12:00:00Z", now)).toBe("now"); // a clock ahead is not the future
  });
});
