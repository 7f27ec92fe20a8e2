// Paths in the address bar (the gateway serves the app for each), moved between without a
// page load.
import type { ComponentChildren, JSX } from "preact";
import { useEffect, useState } from "preact/hooks";

export type Route =
  | { name: "feed" }
  | { name: "welcome"; tab: "signup" | "login" | "join" }
  | { name: "import" }
  | { name: "search" }
  | { name: "notifications" }
  | { name: "profile"; handle: string }
  | { name: "people"; handle: string; list: "followers" | "following" }
  | { name: "post"; id: string }
  | { name: "missing" };

export function parse(path: string): Route {
  if (path === "/") return { name: "feed" };
  if (path === "/signup" || path === "/login" || path === "/join") {
    return { name: "welcome", tab: path.slice(1) as "signup" | "login" | "join" };
  }
  if (path === "/import") return { name: "import" };
  if (path === "/search") return { name: "search" };
  if (path === "/notifications") return { name: "notifications" };
  let m = /^\/@([^/]+)$/.exec(path);
  if (m) return { name: "profile", handle: decodeURIComponent(m[1]!) };
  m = /^\/@([^/]+)\/(followers|following)$/.exec(path);
  if (m) {
    const list = m[2] as "followers" | "following";
    return { name: "people", handle: decodeURIComponent(m[1]!), list };
  }
  m = /^\/p\/([^/]+)$/.exec(path);
  if (m) return { name: "post", id: decodeURIComponent(m[1]!) };
  return { name: "missing" };
}

const CHANGED = "mt:navigate";

export function navigate(path: string, replace = false): void {
  if (path === location.pathname + location.search) return;
  if (replace) history.replaceState(null, "", path);
  else history.pushState(null, "", path);
  window.dispatchEvent(new Event(CHANGED));
  window.scrollTo(0, 0);
}

export function useLocation(): string {
  const [path, setPath] = useState(location.pathname);
  useEffect(() => {
    const update = () => setPath(location.pathname);
    window.addEventListener("popstate", update);
    window.addEventListener(CHANGED, update);
    return () => {
      window.removeEventListener("popstate", update);
      window.removeEventListener(CHANGED, update);
    };
  }, []);
  return path;
}

export function Link(props: {
  href: string;
  class?: string;
  children: ComponentChildren;
  "aria-current"?: "page" | undefined;
  "aria-label"?: string;
}): JSX.Element {
  const { href, children, ...rest } = props;
  const onClick = (event: MouseEvent) => {
    if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
    event.preventDefault();
    navigate(href);
  };
  return (
    <a href={href} onClick={onClick} {...rest}>
      {children}
    </a>
  );
}
