// One post and its replies, oldest first, with a reply box.
import type { JSX } from "preact";
import { useEffect, useState } from "preact/hooks";
import { ApiError, describe } from "../../api/client";
import type { Page, Post } from "../../api/types";
import { Composer } from "../components/Composer";
import { ListEnd } from "../components/ListEnd";
import { PostItem } from "../components/PostItem";
import { pageUrl, usePaged } from "../paged";
import { Link } from "../router";
import { useApp } from "../state";
import { postKey, replaceItem } from "./Feed";

export function Thread(props: { id: string }): JSX.Element {
  const { api, session } = useApp();
  const [post, setPost] = useState<Post | null>(null);
  const [error, setError] = useState<unknown>(null);
  const path = `/v1/posts/${encodeURIComponent(props.id)}`;
  const replies = usePaged<Post>(
    (cursor) => api.get<Page<Post>>(pageUrl(`${path}/replies`, cursor)),
    postKey,
    props.id,
  );
  useEffect(() => {
    setPost(null);
    setError(null);
    api.read<Post>(path).then(setPost, setError);
  }, [props.id]);

  if (error !== null) {
    const gone = error instanceof ApiError && error.status === 404;
    return <p class="error-text">{gone ? "This post does not exist (or was deleted)." : describe(error)}</p>;
  }
  if (post === null) return <p class="muted">Loading the post…</p>;
  return (
    <section aria-labelledby="thread-title">
      <h1 id="thread-title">Thread</h1>
      {post.reply_to && (
        <p>
          <Link href={`/p/${post.reply_to}`}>↑ In reply to a post</Link>
        </p>
      )}
      <PostItem post={post} onChange={setPost} />
      {session !== null && (
        <Composer
          label={`Reply to @${post.author.handle}`}
          replyTo={post.id}
          onPosted={(reply) => {
            replies.setItems((all) => (all.some((p) => p.id === reply.id) ? all : [...all, reply]));
            setPost({ ...post, reply_count: post.reply_count + 1 });
          }}
        />
      )}
      <h2 class="section-title">Replies</h2>
      <div class="posts">
        {replies.items.map((reply) => (
          <PostItem key={reply.id} post={reply} onChange={(p) => replies.setItems((all) => replaceItem(all, p))} />
        ))}
      </div>
      <ListEnd list={replies} empty="No replies yet." />
    </section>
  );
}
