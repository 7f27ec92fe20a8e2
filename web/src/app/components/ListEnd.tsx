// The end of a paged list: loads more when it scrolls into view, or by its button.
import type { JSX } from "preact";
import { useEffect, useRef } from "preact/hooks";
import { describe } from "../../api/client";
import type { Paged } from "../paged";

export function ListEnd<T>(props: { list: Paged<T>; empty: string }): JSX.Element {
  const { list } = props;
  const sentinel = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const node = sentinel.current;
    if (node === null || list.done || list.error !== null) return;
    const observer = new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting)) void list.more(true);
    });
    observer.observe(node);
    return () => observer.disconnect();
  }, [list.done, list.error, list.items.length, list.loading]);

  if (list.error !== null) {
    return (
      <div class="list-end" ref={sentinel}>
        <p class="error-text">{describe(list.error)}</p>
        <button type="button" onClick={() => void list.more()}>
          Try again
        </button>
      </div>
    );
  }
  if (list.done) {
    return (
      <p class="list-end muted" data-list-done="">
        {list.items.length === 0 ? props.empty : "You're all caught up."}
      </p>
    );
  }
  return (
    <div class="list-end" ref={sentinel}>
      <button type="button" disabled={list.loading} onClick={() => void list.more()}>
        {list.loading ? "Loading…" : "Load more"}
      </button>
    </div>
  );
}
