// A user's page: who they are, follow/unfollow, their posts; one's own can be edited.
import type { JSX } from "preact";
import { useEffect, useState } from "preact/hooks";
import { ApiError, describe } from "../../api/client";
import type { Page, Post, User } from "../../api/types";
import { ListEnd } from "../components/ListEnd";
import { PostItem } from "../components/PostItem";
import { pageUrl, usePaged } from "../paged";
import { Link } from "../router";
import { useApp } from "../state";
import { postKey, replaceItem } from "./Feed";

export function Profile(props: { handle: string }): JSX.Element {
  const { api, session, fail, signIn } = useApp();
  const [user, setUser] = useState<User | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [following, setFollowing] = useState<boolean | null>(null);
  const [editing, setEditing] = useState(false);
  const path = encodeURIComponent(props.handle);
  const mine = session?.user.handle === props.handle.toLowerCase();
  const posts = usePaged<Post>(
    (cursor) => api.get<Page<Post>>(pageUrl(`/v1/users/${path}/posts`, cursor)),
    postKey,
    props.handle,
  );

  useEffect(() => {
    setUser(null);
    setError(null);
    setFollowing(null);
    // What the user came to see: read again after a 503's Retry-After, unseen.
    api.read<User>(`/v1/users/${path}`).then(setUser, setError);
    if (session !== null && !mine) {
      api.read(`/v1/me/following/${path}`).then(
        () => setFollowing(true),
        // Not following (404), or not known: Follow is offered either way (PUT is idempotent).
        () => setFollowing(false),
      );
    }
  }, [props.handle]);

  const toggleFollow = async () => {
    if (user === null || following === null) return;
    const next = !following;
    setFollowing(next);
    setUser({ ...user, followers_count: user.followers_count + (next ? 1 : -1) });
    try {
      await api.request(next ? "PUT" : "DELETE", `/v1/me/following/${path}`, { retryShed: true });
    } catch (err) {
      setFollowing(!next);
      setUser(user);
      fail(err);
    }
  };

  if (error !== null) {
    const gone = error instanceof ApiError && error.status === 404;
    return <p class="error-text">{gone ? `There is no @${props.handle}.` : describe(error)}</p>;
  }
  if (user === null) return <p class="muted">Loading @{props.handle}…</p>;
  return (
    <section aria-labelledby="profile-title">
      <header class="profile">
        <h1 id="profile-title">
          {user.display_name || user.handle} <span class="handle">@{user.handle}</span>
        </h1>
        {user.bio && <p class="bio">{user.bio}</p>}
        <p class="counts">
          <Link href={`/@${user.handle}/followers`}>
            <strong>{user.followers_count}</strong> followers
          </Link>{" "}
          <Link href={`/@${user.handle}/following`}>
            <strong>{user.following_count}</strong> following
          </Link>{" "}
          <span>
            <strong>{user.posts_count}</strong> posts
          </span>
        </p>
        {session !== null && !mine && following !== null && (
          <button
            type="button"
            class={following ? "" : "primary"}
            aria-pressed={following}
            onClick={() => void toggleFollow()}
          >
            {following ? "Following" : "Follow"}
          </button>
        )}
        {mine && !editing && (
          <button type="button" onClick={() => setEditing(true)}>
            Edit profile
          </button>
        )}
        {mine && editing && (
          <EditProfile
            user={user}
            onDone={(updated) => {
              setEditing(false);
              if (updated && session) {
                setUser(updated);
                signIn({ token: session.token, user: updated });
              }
            }}
          />
        )}
      </header>
      <h2 class="section-title">Posts</h2>
      <div class="posts">
        {posts.items.map((post) => (
          <PostItem key={post.id} post={post} onChange={(p) => posts.setItems((all) => replaceItem(all, p))} />
        ))}
      </div>
      <ListEnd list={posts} empty="No posts yet." />
    </section>
  );
}

function EditProfile(props: { user: User; onDone: (user: User | null) => void }): JSX.Element {
  const { api } = useApp();
  const [name, setName] = useState(props.user.display_name);
  const [bio, setBio] = useState(props.user.bio);
  const [error, setError] = useState<string | null>(null);
  const save = async (event: Event) => {
    event.preventDefault();
    try {
      props.onDone(await api.request<User>("PATCH", "/v1/me", { body: { display_name: name, bio }, retryShed: true }));
    } catch (err) {
      setError(describe(err));
    }
  };
  return (
    <form class="edit" onSubmit={(e) => void save(e)}>
      <div class="field">
        <label for="edit-name">Name</label>
        <input id="edit-name" value={name} maxLength={64} onInput={(e) => setName((e.target as HTMLInputElement).value)} />
      </div>
      <div class="field">
        <label for="edit-bio">Bio</label>
        <textarea id="edit-bio" value={bio} maxLength={160} onInput={(e) => setBio((e.target as HTMLTextAreaElement).value)} />
      </div>
      {error && (
        <p class="error-text" role="alert">
          {error}
        </p>
      )}
      <button type="submit" class="primary">
        Save
      </button>{" "}
      <button type="button" onClick={() => props.onDone(null)}>
        Cancel
      </button>
    </form>
  );
}
