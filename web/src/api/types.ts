// The REST contract's shapes (DESIGN.md §3; /openapi.json is their machine-readable form).

export interface User {
  id: string;
  handle: string;
  display_name: string;
  bio: string;
  followers_count: number;
  following_count: number;
  posts_count: number;
  created_at: string;
}

export interface UserSummary {
  id: string;
  handle: string;
  display_name: string;
}

export interface Post {
  id: string;
  author: UserSummary;
  text: string;
  reply_to: string | null;
  created_at: string;
  like_count: number;
  reply_count: number;
  liked_by_me: boolean;
}

export interface Page<T> {
  items: T[];
  next_cursor: string | null;
}

export interface SessionOut {
  user: User;
  token: string;
}

export interface Import {
  id: string;
  state: "queued" | "running" | "done" | "failed";
  total: number;
  done: number;
  pending: number;
}

export interface Notification {
  id: string;
  type: "follow" | "like" | "reply";
  actor: User;
  post_id?: string | null;
  created_at: string;
}

export interface LegacyAccount {
  legacy_id: string;
  handle: string;
  following_count: number;
}

export interface LegacyAssertion {
  assertion: string;
  legacy_id: string;
  expires_at: string;
}
