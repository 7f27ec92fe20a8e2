// Who followed you, liked or replied to your posts; polls while open.
import type { JSX } from "preact";
import type { Notification, Page } from "../../api/types";
import { ListEnd } from "../components/ListEnd";
import { pageUrl, usePaged } from "../paged";
import { usePoll } from "../poll";
import { Link } from "../router";
import { useApp } from "../state";
import { ago } from "../time";

const POLL_MS = 15_000;
const key = (n: Notification): string => n.id;

export function Notifications(): JSX.Element {
  const { api } = useApp();
  const list = usePaged<Notification>(
    (cursor) => api.get<Page<Notification>>(pageUrl("/v1/notifications", cursor)),
    key,
    "notifications",
  );
  usePoll(async () => {
    const page = await api.get<Page<Notification>>(pageUrl("/v1/notifications", null));
    list.setItems((shown) => {
      const known = new Set(shown.map(key));
      return [...page.items.filter((n) => !known.has(n.id)), ...shown];
    });
  }, POLL_MS);

  return (
    <section aria-labelledby="notifications-title">
      <h1 id="notifications-title">Notifications</h1>
      <ul class="notifications" aria-live="polite">
        {list.items.map((n) => (
          <li key={n.id} class="notification" data-notification={n.type}>
            <Link href={`/@${n.actor.handle}`}>@{n.actor.handle}</Link>{" "}
            {n.type === "follow" && "followed you"}
            {n.type === "like" && n.post_id && (
              <>
                liked <Link href={`/p/${n.post_id}`}>your post</Link>
              </>
            )}
            {n.type === "reply" && n.post_id && (
              <>
                replied: <Link href={`/p/${n.post_id}`}>see the reply</Link>
              </>
            )}{" "}
            <time class="muted" dateTime={n.created_at}>
              {ago(n.created_at)}
            </time>
          </li>
        ))}
      </ul>
      <ListEnd list={list} empty="Nothing yet." />
    </section>
  );
}
