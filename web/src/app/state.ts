// What every view may reach: the API, the session, and the one message banner.
import { createContext } from "preact";
import { useContext } from "preact/hooks";
import type { Api } from "../api/client";
import type { Session } from "../api/session";

export interface AppState {
  api: Api;
  session: Session | null;
  signIn(session: Session): void;
  signOut(): void;
  // A message for everyone to see (role=alert); null clears it.
  tell(message: string | null): void;
  // The error of a failed action, in words (see describe()).
  fail(err: unknown): void;
}

export const AppContext = createContext<AppState | null>(null);

export function useApp(): AppState {
  const state = useContext(AppContext);
  if (state === null) throw new Error("useApp outside the app");
  return state;
}
