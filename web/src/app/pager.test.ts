import { describe, expect, it } from "vitest";
import { Pager } from "./pager";

describe("Pager", () => {
  it("reads the pages in order, one ask at a time", () => {
    const pager = new Pager();
    const first = pager.begin(false);
    expect(first?.cursor).toBeNull();
    expect(pager.begin(true)).toBeNull(); // scrolling while the first page is on its way
    expect(pager.arrived(first!, "c1")).toBe(true);
    expect(pager.begin(true)?.cursor).toBe("c1");
  });

  it("asks for nothing after the last page (a null cursor would be the first page again)", () => {
    const pager = new Pager();
    pager.arrived(pager.begin(false)!, "c1");
    pager.arrived(pager.begin(true)!, null);
    expect(pager.begin(true)).toBeNull();
    expect(pager.begin(false)).toBeNull();
  });

  it("is not asked again by scrolling after a failure, only by the user", () => {
    const pager = new Pager();
    const turn = pager.begin(false)!;
    expect(pager.failedAt(turn)).toBe(true);
    expect(pager.begin(true)).toBeNull();
    const again = pager.begin(false);
    expect(again?.cursor).toBeNull();
    pager.arrived(again!, "c1");
    expect(pager.begin(true)?.cursor).toBe("c1"); // a success lets scrolling read on
  });

  it("drops an answer to an ask made before a reset", () => {
    const pager = new Pager();
    const stale = pager.begin(false)!;
    pager.reset();
    const fresh = pager.begin(false)!;
    expect(pager.arrived(stale, "old")).toBe(false);
    expect(pager.failedAt(stale)).toBe(false);
    expect(pager.begin(true)).toBeNull(); // the fresh ask is still out
    expect(pager.arrived(fresh, "c1")).toBe(true);
    expect(pager.begin(true)?.cursor).toBe("c1");
  });

  it("starts over from the first page after a reset, even past the end", () => {
    const pager = new Pager();
    pager.arrived(pager.begin(false)!, null);
    pager.reset();
    expect(pager.begin(true)?.cursor).toBeNull();
  });
});
