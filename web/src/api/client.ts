// The one way the app talks to the server: fetch /v1, the error body as ApiError, and the
// one place that decides whether a request is sent again.

export class ApiError extends Error {
  constructor(
    readonly status: number, // 0: the request never got an answer (offline, network)
    readonly code: string,
    message: string,
    readonly retryAfterS: number | null = null,
  ) {
    super(message);
  }

  get shed(): boolean {
    return this.status === 503 || this.status === 429;
  }
}

export interface RequestOptions {
  body?: unknown;
  headers?: Record<string, string>;
  // Resend after a 503's Retry-After (what the user waits for; never reads that poll).
  retryShed?: boolean;
}

const MAX_RESENDS = 2;
const MAX_WAIT_S = 10; // longer than this, the user is told instead

export class Api {
  constructor(
    private readonly token: () => string | null,
    private readonly onUnauthorized: () => void,
  ) {}

  // A read that polls: a 503 is left to the poller's back-off.
  get<T>(path: string): Promise<T> {
    return this.request<T>("GET", path);
  }

  // A read the user is waiting for: it rides out a 503's Retry-After (see request).
  read<T>(path: string): Promise<T> {
    return this.request<T>("GET", path, { retryShed: true });
  }

  async request<T>(method: string, path: string, options: RequestOptions = {}): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.once<T>(method, path, options);
      } catch (err) {
        const wait = err instanceof ApiError && err.status === 503 ? err.retryAfterS ?? 1 : null;
        if (!options.retryShed || wait === null || wait > MAX_WAIT_S || attempt >= MAX_RESENDS) {
          throw err;
        }
        await sleep(wait * 1000 * (1 + Math.random() / 2)); // spread: no synchronized wave
      }
    }
  }

  private async once<T>(method: string, path: string, options: RequestOptions): Promise<T> {
    const headers: Record<string, string> = { Accept: "application/json", ...options.headers };
    const token = this.token();
    if (token) headers.Authorization = `Bearer ${token}`;
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    let response: Response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: options.body === undefined ? undefined : JSON.stringify(options.body),
      });
    } catch {
      throw new ApiError(0, "offline", "No connection to the server.");
    }
    if (response.status === 204) return undefined as T;
    const data: unknown = await response.json().catch(() => null);
    if (response.ok) return data as T;
    const error = errorOf(response, data);
    if (error.status === 401 && token && error.code === "invalid_token") this.onUnauthorized();
    throw error;
  }
}

function errorOf(response: Response, data: unknown): ApiError {
  const body = (data as { error?: { code?: unknown; message?: unknown } } | null)?.error;
  const code = typeof body?.code === "string" ? body.code : `http_${response.status}`;
  const message = typeof body?.message === "string" ? body.message : response.statusText;
  const header = response.headers.get("Retry-After");
  const retryAfter = header !== null && /^\d+$/.test(header) ? Number(header) : null;
  return new ApiError(response.status, code, message, retryAfter);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export function describe(err: unknown): string {
  if (!(err instanceof ApiError)) return "Something went wrong. Please try again.";
  const wait = err.retryAfterS ?? 1;
  switch (err.status) {
    case 0:
      return "You're offline: check your connection. We'll keep trying.";
    case 429:
      return `Too many attempts. Try again in ${wait} s.`;
    case 503:
      return `We're busy right now. Try again in ${wait} s.`;
    case 401:
      return err.code === "invalid_token" ? "Your session has ended. Please log in again." : err.message;
    default:
      if (err.status >= 500) return "Something went wrong on our side. Please try again.";
      return err.message;
  }
}
