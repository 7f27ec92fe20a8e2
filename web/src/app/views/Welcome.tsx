// Signed out: sign up, log in, or continue with the legacy account in one tap.
import type { JSX } from "preact";
import { useState } from "preact/hooks";
import { describe } from "../../api/client";
import type { LegacyAssertion, SessionOut } from "../../api/types";
import { Link, navigate } from "../router";
import { useApp } from "../state";

type Tab = "signup" | "login" | "join";

function Field(props: {
  name: string;
  label: string;
  type?: "text" | "password";
  autocomplete: string;
  required?: boolean;
  hint?: string;
  value: string;
  onInput: (value: string) => void;
}): JSX.Element {
  const id = `f-${props.name}`;
  const attrs = {
    id,
    name: props.name,
    autocomplete: props.autocomplete,
    required: props.required ?? true,
    value: props.value,
    "aria-describedby": props.hint ? `${id}-hint` : undefined,
    onInput: (e: Event) => props.onInput((e.target as HTMLInputElement).value),
  };
  return (
    <div class="field">
      <label for={id}>{props.label}</label>
      {props.type === "password" ? (
        <input type="password" {...attrs} />
      ) : (
        <input type="text" {...attrs} />
      )}
      {props.hint && (
        <small id={`${id}-hint`} class="muted">
          {props.hint}
        </small>
      )}
    </div>
  );
}

export function Welcome(props: { tab: Tab }): JSX.Element {
  const { api, signIn } = useApp();
  const [handle, setHandle] = useState("");
  const [password, setPassword] = useState("");
  const [name, setName] = useState("");
  const [legacyId, setLegacyId] = useState("");
  const [credential, setCredential] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const run = async (work: () => Promise<SessionOut>, then: string) => {
    setBusy(true);
    setError(null);
    try {
      const session = await work();
      signIn(session);
      navigate(then, true);
    } catch (err) {
      setError(describe(err));
    } finally {
      setBusy(false);
    }
  };

  const signup = () =>
    run(
      () =>
        api.request<SessionOut>("POST", "/v1/accounts", {
          body: { handle, password, ...(name ? { display_name: name } : {}) },
        }),
      "/",
    );
  const login = () =>
    run(() => api.request<SessionOut>("POST", "/v1/sessions", { body: { handle, password } }), "/");
  const join = () =>
    run(async () => {
      sessionStorage.setItem("mt.legacy", legacyId);
      const proof = await api.request<LegacyAssertion>("POST", "/v1/legacy/assertions", {
        body: { legacy_id: legacyId, credential },
      });
      const body = { legacy_assertion: proof.assertion, ...(name ? { display_name: name } : {}) };
      try {
        return await api.request<SessionOut>("POST", "/v1/accounts", { body });
      } catch (err) {
        // Joined before: the same proof logs in.
        if ((err as { code?: string }).code !== "legacy_taken") throw err;
        const again = await api.request<LegacyAssertion>("POST", "/v1/legacy/assertions", {
          body: { legacy_id: legacyId, credential },
        });
        return api.request<SessionOut>("POST", "/v1/sessions", {
          body: { legacy_assertion: again.assertion },
        });
      }
    }, "/import");

  const submit = (event: Event) => {
    event.preventDefault();
    void (props.tab === "signup" ? signup() : props.tab === "login" ? login() : join());
  };
  const titles: Record<Tab, string> = {
    signup: "Create your account",
    login: "Log in",
    join: "Continue with your legacy account",
  };
  const actions: Record<Tab, string> = { signup: "Sign up", login: "Log in", join: "Continue" };

  return (
    <section class="welcome" aria-labelledby="welcome-title">
      <p class="brand" aria-hidden="true">
        @
      </p>
      <h1 id="welcome-title">{titles[props.tab]}</h1>
      <nav class="tabs" aria-label="Ways in">
        <Link href="/signup" aria-current={props.tab === "signup" ? "page" : undefined}>
          Sign up
        </Link>
        <Link href="/login" aria-current={props.tab === "login" ? "page" : undefined}>
          Log in
        </Link>
        <Link href="/join" aria-current={props.tab === "join" ? "page" : undefined}>
          Legacy account
        </Link>
      </nav>
      <form onSubmit={submit} aria-describedby={error ? "welcome-error" : undefined}>
        {props.tab === "join" ? (
          <>
            <Field name="legacy_id" label="Legacy account id" autocomplete="username" value={legacyId} onInput={setLegacyId} />
            <Field
              name="credential"
              label="Legacy password"
              type="password"
              autocomplete="current-password"
              value={credential}
              onInput={setCredential}
              hint="Your handle and the people you follow come with you."
            />
          </>
        ) : (
          <>
            <Field name="handle" label="Handle" autocomplete="username" value={handle} onInput={setHandle} hint={props.tab === "signup" ? "Letters, digits, _ and . (up to 30)" : undefined} />
            <Field
              name="password"
              label="Password"
              type="password"
              autocomplete={props.tab === "signup" ? "new-password" : "current-password"}
              value={password}
              onInput={setPassword}
              hint={props.tab === "signup" ? "At least 8 characters" : undefined}
            />
          </>
        )}
        {props.tab !== "login" && (
          <Field name="display_name" label="Name (optional)" autocomplete="name" required={false} value={name} onInput={setName} />
        )}
        {error && (
          <p id="welcome-error" class="error-text" role="alert">
            {error}
          </p>
        )}
        <button type="submit" class="primary wide" disabled={busy}>
          {busy ? "Please wait…" : actions[props.tab]}
        </button>
      </form>
    </section>
  );
}
