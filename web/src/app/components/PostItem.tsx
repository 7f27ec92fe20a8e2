// One post: who, when, the text (always as text), its like and reply counts.
import type { JSX } from "preact";
import { useState } from "preact/hooks";
import type { Post } from "../../api/types";
import { Link } from "../router";
import { useApp } from "../state";
import { ago } from "../time";

export function PostItem(props: { post: Post; onChange?: (post: Post) => void }): JSX.Element {
  const { post } = props;
  const { api, session, fail, tell } = useApp();
  const [pending, setPending] = useState(false);

  const toggleLike = async () => {
    if (session === null) return tell("Log in to like posts.");
    const liked = !post.liked_by_me;
    const before = post;
    // Shown at once; put back if the server says no.
    props.onChange?.({ ...post, liked_by_me: liked, like_count: post.like_count + (liked ? 1 : -1) });
    setPending(true);
    try {
      await api.request(liked ? "PUT" : "DELETE", `/v1/posts/${encodeURIComponent(post.id)}/like`, {
        retryShed: true,
      });
    } catch (err) {
      props.onChange?.(before);
      fail(err);
    } finally {
      setPending(false);
    }
  };

  return (
    <article class="post" data-post-id={post.id} aria-label={`Post by @${post.author.handle}`}>
      <header class="post-head">
        <Link href={`/@${post.author.handle}`} class="author">
          <span class="name">{post.author.display_name || post.author.handle}</span>{" "}
          <span class="handle">@{post.author.handle}</span>
        </Link>
        <Link href={`/p/${post.id}`} class="when">
          <time dateTime={post.created_at}>{ago(post.created_at)}</time>
          <span class="sr"> · open the thread</span>
        </Link>
      </header>
      <p class="text">{post.text}</p>
      <footer class="post-actions">
        <button
          type="button"
          class="like"
          aria-pressed={post.liked_by_me}
          disabled={pending}
          onClick={() => void toggleLike()}
        >
          <span aria-hidden="true">{post.liked_by_me ? "♥" : "♡"}</span>
          <span class="sr">Like, </span>{" "}
          <span class="count" data-like-count="">
            {post.like_count}
          </span>
          <span class="sr"> {post.like_count === 1 ? "like" : "likes"}</span>
        </button>
        <Link href={`/p/${post.id}`} class="replies">
          Reply · {post.reply_count}
        </Link>
      </footer>
    </article>
  );
}
