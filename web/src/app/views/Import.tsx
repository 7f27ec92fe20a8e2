// Bring the people you follow on the legacy app, in one tap, with its progress.
import type { JSX } from "preact";
import { useEffect, useState } from "preact/hooks";
import { ApiError, describe } from "../../api/client";
import type { Import as ImportT, LegacyAccount } from "../../api/types";
import { usePoll } from "../poll";
import { Link } from "../router";
import { useApp } from "../state";

export function Import(): JSX.Element {
  const { api, session } = useApp();
  const [account, setAccount] = useState<LegacyAccount | null>(null);
  const [job, setJob] = useState<ImportT | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  // The legacy id is not part of the user: the join form leaves it here.
  const legacyId = session === null ? null : sessionStorage.getItem("mt.legacy");

  // Reads the page needs ride out a shed (they are sheddable) and say so if they fail.
  const fail = (err: unknown) => setError(describe(err));
  useEffect(() => {
    const saved = sessionStorage.getItem("mt.import");
    if (saved) api.read<ImportT>(`/v1/me/imports/${encodeURIComponent(saved)}`).then(setJob, fail);
  }, []);
  useEffect(() => {
    if (legacyId) api.read<LegacyAccount>(`/v1/legacy/accounts/${encodeURIComponent(legacyId)}`).then(setAccount, fail);
  }, [legacyId]);

  const running = job !== null && (job.state === "queued" || job.state === "running");
  usePoll(
    async () => {
      if (!running || job === null) return;
      setJob(await api.get<ImportT>(`/v1/me/imports/${encodeURIComponent(job.id)}`));
    },
    1000,
    running ? job?.id : null,
  );

  const start = async () => {
    setBusy(true);
    setError(null);
    try {
      const started = await api.request<ImportT>("POST", "/v1/me/imports", { body: {}, retryShed: true });
      sessionStorage.setItem("mt.import", started.id);
      setJob(started);
    } catch (err) {
      setError(err instanceof ApiError && err.code === "no_legacy_account" ? "This account is not linked to a legacy account." : describe(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <section aria-labelledby="import-title">
      <h1 id="import-title">Follow the same people</h1>
      {account && <p>You follow {account.following_count} accounts on the legacy app.</p>}
      {job === null ? (
        <button type="button" class="primary wide" disabled={busy} onClick={() => void start()}>
          {busy ? "Starting…" : "Follow them here too"}
        </button>
      ) : (
        <div class="import-progress">
          <p role="status" data-import-state={job.state}>
            {job.state === "done" ? "Done." : job.state === "failed" ? "The import failed." : "Importing…"} {job.done} of {job.total} followed
            {job.pending > 0 && `, ${job.pending} will be followed when they join`}.
          </p>
          <progress max={Math.max(job.total, 1)} value={job.done + job.pending} aria-label="Import progress" />
        </div>
      )}
      {error && (
        <p class="error-text" role="alert">
          {error}
        </p>
      )}
      <p>
        <Link href="/">Go to your feed</Link>
      </p>
    </section>
  );
}
