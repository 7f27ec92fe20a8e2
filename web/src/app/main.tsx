// The web client: the shell (header, message banner, bottom navigation) and the router.
import { render } from "preact";
import type { JSX } from "preact";
import { useEffect, useMemo, useState } from "preact/hooks";
import { Api, ApiError, describe } from "../api/client";
import { loadSession, saveSession, type Session } from "../api/session";
import { Link, navigate, parse, useLocation } from "./router";
import { AppContext, type AppState } from "./state";
import { Feed } from "./views/Feed";
import { Import } from "./views/Import";
import { Notifications } from "./views/Notifications";
import { People, Search } from "./views/People";
import { Profile } from "./views/Profile";
import { Thread } from "./views/Thread";
import { Welcome } from "./views/Welcome";
import "./app.css";

// What a visitor without an account may open; the rest sends them to sign up.
const PUBLIC = new Set(["welcome", "profile", "people", "post", "missing"]);

function App(): JSX.Element {
  const [session, setSession] = useState<Session | null>(loadSession);
  const [message, setMessage] = useState<string | null>(null);
  const path = useLocation();
  const route = parse(path);

  const state = useMemo<AppState>(() => {
    let current = session;
    const signOut = () => {
      current = null;
      saveSession(null);
      setSession(null);
      navigate("/login", true);
    };
    const api = new Api(() => current?.token ?? null, () => {
      signOut();
      setMessage("Your session has ended. Please log in again.");
    });
    return {
      api,
      get session() {
        return current;
      },
      signIn(next) {
        current = next;
        saveSession(next);
        setSession(next);
      },
      signOut,
      tell: setMessage,
      fail: (err) => setMessage(describe(err)),
    };
  }, []);

  useEffect(() => setMessage(null), [path]);
  useEffect(() => {
    const offline = () => setMessage(describe(new ApiError(0, "offline", "")));
    const online = () => setMessage(null);
    window.addEventListener("offline", offline);
    window.addEventListener("online", online);
    return () => {
      window.removeEventListener("offline", offline);
      window.removeEventListener("online", online);
    };
  }, []);

  const signedOut = session === null;
  const barred = signedOut && !PUBLIC.has(route.name);
  useEffect(() => {
    if (barred) navigate("/signup", true);
    if (!signedOut && route.name === "welcome" && route.tab !== "join") navigate("/", true);
  }, [signedOut, path]);

  const logOut = async () => {
    try {
      await state.api.request("DELETE", "/v1/sessions/current");
    } catch {
      // The token is dropped here anyway; the server forgets it when it can.
    }
    state.signOut();
  };

  return (
    <AppContext.Provider value={state}>
      <a class="skip" href="#main">
        Skip to content
      </a>
      <header class="top">
        <Link href="/" class="logo" aria-label="minithreads home">
          minithreads
        </Link>
        {session !== null && (
          <button type="button" class="quiet" onClick={() => void logOut()}>
            Log out
          </button>
        )}
      </header>
      <div class="banner" role="alert" aria-live="assertive">
        {message && (
          <p>
            {message}{" "}
            <button type="button" class="quiet" aria-label="Dismiss" onClick={() => setMessage(null)}>
              ✕
            </button>
          </p>
        )}
      </div>
      <main id="main" tabIndex={-1}>
        {barred ? null : <View route={route} />}
      </main>
      {session !== null && (
        <nav class="tabbar" aria-label="Main">
          <Link href="/" aria-current={route.name === "feed" ? "page" : undefined}>
            Home
          </Link>
          <Link href="/search" aria-current={route.name === "search" ? "page" : undefined}>
            Search
          </Link>
          <Link href="/notifications" aria-current={route.name === "notifications" ? "page" : undefined}>
            Notifications
          </Link>
          <Link href={`/@${session.user.handle}`} aria-current={route.name === "profile" && route.handle === session.user.handle ? "page" : undefined}>
            Profile
          </Link>
        </nav>
      )}
    </AppContext.Provider>
  );
}

function View(props: { route: ReturnType<typeof parse> }): JSX.Element {
  const { route } = props;
  switch (route.name) {
    case "feed":
      return <Feed />;
    case "welcome":
      return <Welcome tab={route.tab} />;
    case "import":
      return <Import />;
    case "search":
      return <Search />;
    case "notifications":
      return <Notifications />;
    case "profile":
      return <Profile key={route.handle} handle={route.handle} />;
    case "people":
      return <People handle={route.handle} list={route.list} />;
    case "post":
      return <Thread key={route.id} id={route.id} />;
    case "missing":
      return (
        <p>
          Nothing here. <Link href="/">Go home</Link>
        </p>
      );
  }
}

const root = document.getElementById("app");
if (root !== null) {
  root.textContent = "";
  render(<App />, root);
}
