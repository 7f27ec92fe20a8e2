// A list of users: someone's followers or following, or search results.
import type { JSX } from "preact";
import { useState } from "preact/hooks";
import type { Page, User } from "../../api/types";
import { ListEnd } from "../components/ListEnd";
import { pageUrl, usePaged } from "../paged";
import { Link } from "../router";
import { useApp } from "../state";

const userKey = (user: User): string => user.id;

function UserRow(props: { user: User }): JSX.Element {
  const { user } = props;
  return (
    <li class="user-row">
      <Link href={`/@${user.handle}`}>
        <span class="name">{user.display_name || user.handle}</span>{" "}
        <span class="handle">@{user.handle}</span>
      </Link>
      <span class="muted">{user.followers_count} followers</span>
    </li>
  );
}

function UserList(props: { path: string; resetKey: unknown; empty: string }): JSX.Element {
  const { api } = useApp();
  const list = usePaged<User>(
    (cursor) => api.get<Page<User>>(pageUrl(props.path, cursor)),
    userKey,
    props.resetKey,
  );
  return (
    <>
      <ul class="users">
        {list.items.map((user) => (
          <UserRow key={user.id} user={user} />
        ))}
      </ul>
      <ListEnd list={list} empty={props.empty} />
    </>
  );
}

export function People(props: { handle: string; list: "followers" | "following" }): JSX.Element {
  const path = `/v1/users/${encodeURIComponent(props.handle)}/${props.list}`;
  return (
    <section aria-labelledby="people-title">
      <h1 id="people-title">
        <Link href={`/@${props.handle}`}>@{props.handle}</Link>
        {props.list === "followers" ? "'s followers" : " follows"}
      </h1>
      <UserList path={path} resetKey={path} empty={props.list === "followers" ? "No followers yet." : "Follows nobody yet."} />
    </section>
  );
}

export function Search(): JSX.Element {
  const [query, setQuery] = useState("");
  const [asked, setAsked] = useState("");
  const submit = (event: Event) => {
    event.preventDefault();
    setAsked(query.trim().toLowerCase());
  };
  return (
    <section aria-labelledby="search-title">
      <h1 id="search-title">Search</h1>
      <form role="search" class="search" onSubmit={submit}>
        <label for="search-q">Handle starts with</label>
        <input id="search-q" type="search" value={query} autocomplete="off" onInput={(e) => setQuery((e.target as HTMLInputElement).value)} />
        <button type="submit" class="primary">
          Search
        </button>
      </form>
      {asked && <UserList path={`/v1/search/users?q=${encodeURIComponent(asked)}`} resetKey={asked} empty={`Nobody's handle starts with "${asked}".`} />}
    </section>
  );
}
