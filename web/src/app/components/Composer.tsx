// Writing a post or a reply. One Idempotency-Key per draft: a resend after a 503 or a lost
// answer makes the post once.
import type { JSX } from "preact";
import { useId, useState } from "preact/hooks";
import type { Post } from "../../api/types";
import { useApp } from "../state";

const LIMIT = 500;

export function Composer(props: {
  replyTo?: string;
  label: string;
  onPosted: (post: Post) => void;
}): JSX.Element {
  const { api, fail, tell } = useApp();
  const [text, setText] = useState("");
  const [key, setKey] = useState(() => crypto.randomUUID());
  const [sending, setSending] = useState(false);
  const id = useId();
  const left = LIMIT - text.trim().length;

  const submit = async (event: Event) => {
    event.preventDefault();
    if (text.trim().length === 0 || left < 0) return;
    setSending(true);
    try {
      const body = props.replyTo ? { text, reply_to: props.replyTo } : { text };
      const post = await api.request<Post>("POST", "/v1/posts", {
        body,
        headers: { "Idempotency-Key": key },
        retryShed: true,
      });
      setText("");
      setKey(crypto.randomUUID());
      tell(null);
      props.onPosted(post);
    } catch (err) {
      fail(err);
    } finally {
      setSending(false);
    }
  };

  return (
    <form class="composer" onSubmit={(e) => void submit(e)}>
      <label for={id}>{props.label}</label>
      <textarea
        id={id}
        name="text"
        rows={3}
        value={text}
        maxLength={2000}
        onInput={(e) => setText((e.target as HTMLTextAreaElement).value)}
        aria-describedby={`${id}-left`}
      />
      <div class="composer-bar">
        <span id={`${id}-left`} class={left < 0 ? "over" : "muted"}>
          {left} characters left
        </span>
        <button type="submit" class="primary" disabled={sending || text.trim().length === 0 || left < 0}>
          {sending ? "Posting…" : props.replyTo ? "Reply" : "Post"}
        </button>
      </div>
    </form>
  );
}
