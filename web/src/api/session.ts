// Where the session lives: the bearer token in memory, persisted in localStorage as a phone
// app keeps its session (README "Web client": why not a cookie, and what that costs).
import type { SessionOut, User } from "./types";

const KEY = "mt.session";

export interface Session {
  token: string;
  user: User;
}

export function loadSession(): Session | null {
  try {
    const raw = localStorage.getItem(KEY);
    if (!raw) return null;
    const parsed = JSON.parse(raw) as Partial<Session>;
    if (typeof parsed.token !== "string" || typeof parsed.user?.handle !== "string") return null;
    return parsed as Session;
  } catch {
    return null;
  }
}

export function saveSession(session: SessionOut | Session | null): void {
  if (session === null) localStorage.removeItem(KEY);
  else localStorage.setItem(KEY, JSON.stringify({ token: session.token, user: session.user }));
}

// How often lists poll for what is new; tests shorten it (localStorage mt.pollMs).
export function pollMs(base: number): number {
  const override = Number(localStorage.getItem("mt.pollMs"));
  return Number.isFinite(override) && override >= 200 ? override : base;
}
