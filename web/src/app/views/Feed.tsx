// Home: the composer, then the feed, newest first; polls for new posts while it is open.
import type { JSX } from "preact";
import { useState } from "preact/hooks";
import type { Page, Post } from "../../api/types";
import { Composer } from "../components/Composer";
import { ListEnd } from "../components/ListEnd";
import { PostItem } from "../components/PostItem";
import { pageUrl, usePaged } from "../paged";
import { usePoll } from "../poll";
import { useApp } from "../state";

const POLL_MS = 10_000;
export const postKey = (post: Post): string => post.id;

export function replaceItem(posts: Post[], changed: Post): Post[] {
  return posts.map((p) => (p.id === changed.id ? changed : p));
}

// Posts of the first page not shown yet go in their place (ids sort by time: a followed
// author's backfilled posts may be older than the top); those shown take the page's counts.
export function merge(shown: Post[], page: Post[]): Post[] {
  const fresh = new Map(page.map((p) => [p.id, p]));
  const known = new Set(shown.map((p) => p.id));
  const added = page.filter((p) => !known.has(p.id));
  const updated = shown.map((p) => fresh.get(p.id) ?? p);
  if (added.length === 0) return updated;
  return [...added, ...updated].sort((a, b) => (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));
}

export function Feed(): JSX.Element {
  const { api } = useApp();
  const list = usePaged<Post>(
    (cursor) => api.get<Page<Post>>(pageUrl("/v1/feed", cursor)),
    postKey,
    "feed",
  );
  const [waiting, setWaiting] = useState<Post[]>([]);

  usePoll(async () => {
    const page = await api.get<Page<Post>>(pageUrl("/v1/feed", null));
    if (window.scrollY > 200) {
      // Reading further down: new posts wait behind a button instead of moving the page.
      const known = new Set(list.items.map(postKey));
      setWaiting(page.items.filter((p) => !known.has(p.id)));
      list.setItems((shown) => merge(shown, page.items.filter((p) => known.has(p.id))));
    } else {
      list.setItems((shown) => merge(shown, page.items));
      setWaiting([]);
    }
  }, POLL_MS);

  const showWaiting = () => {
    list.setItems((shown) => merge(shown, waiting));
    setWaiting([]);
    window.scrollTo(0, 0);
  };

  return (
    <section aria-labelledby="feed-title">
      <h1 id="feed-title">Home</h1>
      <Composer label="What's new?" onPosted={(post) => list.setItems((shown) => merge(shown, [post]))} />
      <div aria-live="polite" class="new-posts">
        {waiting.length > 0 && (
          <button type="button" class="pill" onClick={showWaiting}>
            {waiting.length} new {waiting.length === 1 ? "post" : "posts"}
          </button>
        )}
      </div>
      <div class="posts" data-feed="">
        {list.items.map((post) => (
          <PostItem key={post.id} post={post} onChange={(p) => list.setItems((all) => replaceItem(all, p))} />
        ))}
      </div>
      <ListEnd list={list} empty="Nothing here yet: follow people, or write the first post." />
    </section>
  );
}
