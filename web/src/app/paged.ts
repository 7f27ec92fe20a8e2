// A list read page by page (?cursor=), each item once, however pages overlap.
import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import type { Page } from "../api/types";
import { Pager } from "./pager";

export const PAGE_SIZE = 20;

// ``path`` (which may have a query already) asking for the page after ``cursor``.
export function pageUrl(path: string, cursor: string | null): string {
  const sep = path.includes("?") ? "&" : "?";
  return `${path}${sep}limit=${PAGE_SIZE}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`;
}

export interface Paged<T> {
  items: T[];
  done: boolean;
  loading: boolean;
  error: unknown;
  // ``auto``: asked by scrolling, not by the user — not after a failure (the user's "Try
  // again" is: a shed read is not sent again behind Retry-After's back).
  more(auto?: boolean): Promise<void>;
  setItems(update: (items: T[]) => T[]): void;
}

export function usePaged<T>(
  load: (cursor: string | null) => Promise<Page<T>>,
  keyOf: (item: T) => string,
  resetKey: unknown,
): Paged<T> {
  const [items, setItems] = useState<T[]>([]);
  const [loading, setLoading] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [done, setDone] = useState(false);
  const [pager] = useState(() => new Pager());
  const loader = useRef(load);
  loader.current = load;

  const more = useCallback(async (auto = false) => {
    const turn = pager.begin(auto);
    if (turn === null) return;
    setLoading(true);
    try {
      const page = await loader.current(turn.cursor);
      if (!pager.arrived(turn, page.next_cursor)) return;
      setItems((old) => {
        const seen = new Set(old.map(keyOf));
        return [...old, ...page.items.filter((item) => !seen.has(keyOf(item)))];
      });
      setDone(page.next_cursor === null);
      setError(null);
      setLoading(false);
    } catch (err) {
      if (!pager.failedAt(turn)) return;
      setError(err);
      setLoading(false);
    }
  }, [keyOf]);

  useEffect(() => {
    pager.reset();
    setItems([]);
    setDone(false);
    setError(null);
    void more();
  }, [resetKey]);

  return { items, done, loading, error, more, setItems };
}
