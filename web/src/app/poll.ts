// Polling that gives way under load: one request at a time, paused while the page is hidden
// or offline, and after a 429/503 it waits the Retry-After (or longer) and backs off.
import { useEffect, useRef } from "preact/hooks";
import { ApiError } from "../api/client";
import { pollMs } from "../api/session";

const MAX_MS = 5 * 60 * 1000;

export function nextDelay(base: number, current: number, err: unknown): number {
  if (err === null) return base;
  const doubled = Math.min(current * 2, MAX_MS);
  const retryAfter = err instanceof ApiError && err.retryAfterS !== null ? err.retryAfterS * 1000 : 0;
  return Math.max(retryAfter, doubled) * (1 + Math.random() / 2);
}

export function usePoll(work: () => Promise<void>, baseMs: number, key: unknown = null): void {
  const latest = useRef(work);
  latest.current = work;
  useEffect(() => {
    const base = pollMs(baseMs);
    let delay = base;
    let timer: number | undefined;
    let stopped = false;
    let running = false;
    const schedule = () => {
      if (!stopped) timer = window.setTimeout(tick, delay);
    };
    const tick = async () => {
      timer = undefined;
      if (stopped || running) return;
      if (document.hidden || !navigator.onLine) return; // resumed by the listeners below
      running = true;
      let error: unknown = null;
      try {
        await latest.current();
      } catch (err) {
        error = err;
      }
      running = false;
      delay = nextDelay(base, delay, error);
      schedule();
    };
    const resume = () => {
      if (timer === undefined && !running && !document.hidden && navigator.onLine) {
        delay = base;
        schedule();
      }
    };
    schedule();
    document.addEventListener("visibilitychange", resume);
    window.addEventListener("online", resume);
    return () => {
      stopped = true;
      window.clearTimeout(timer);
      document.removeEventListener("visibilitychange", resume);
      window.removeEventListener("online", resume);
    };
  }, [baseMs, key]);
}
