// The launch control room: live charts of the stack's Prometheus metrics, through the
// gateway's /control/api with the operator's token (never PromQL from here: named queries).
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import "./control.css";

type Labels = Record<string, string>;
interface Matrix {
  metric: Labels;
  values: [number, string][];
}
interface Vector {
  metric: Labels;
  value: [number, string];
}

const KEY = "mt.operator";
const REFRESH_MS = 2000;
const STEP_S = 5;
const COLORS = ["#0b57d0", "#b3261e", "#137333", "#a142f4", "#e37400", "#007b83", "#5f6368", "#d01884"];

interface ChartSpec {
  id: string;
  title: string;
  queries: string[];
  unit: string;
  label: (query: string, metric: Labels) => string;
  scale?: number; // values multiplied by this (seconds -> ms)
  top?: number; // only the series with the most over the window (routes: a legend that fits)
}

const jobClass: Record<string, string> = {};
const deferredNow: Record<string, boolean> = {};

const CHARTS: ChartSpec[] = [
  { id: "signups", title: "Signups per second", queries: ["signups"], unit: "/s", label: () => "signups" },
  {
    id: "requests",
    title: "Requests per second, by route (the 8 busiest)",
    queries: ["requests"],
    unit: "/s",
    top: 8,
    label: (_, m) => `${m.method ?? ""} ${m.route ?? ""}`,
  },
  {
    id: "p99",
    title: "p99 latency by route (the 8 slowest)",
    queries: ["p99"],
    unit: "ms",
    top: 8,
    scale: 1000,
    label: (_, m) => `${m.method ?? ""} ${m.route ?? ""}`,
  },
  {
    id: "refused",
    title: "Shed (503) and rate-limited (429) per second",
    queries: ["shed", "rate_limited"],
    unit: "/s",
    label: (q, m) => (q === "shed" ? `shed ${m.criticality}` : `429 ${m.scope}`),
  },
  {
    id: "backlog",
    title: "Async backlog (records waiting), by job kind",
    queries: ["backlog"],
    unit: "",
    label: (_, m) => kindLabel(m.kind ?? "?"),
  },
  {
    id: "job_rate",
    title: "Async execution (jobs per second), by job kind",
    queries: ["job_rate"],
    unit: "/s",
    label: (_, m) => kindLabel(m.kind ?? "?"),
  },
  {
    id: "admission",
    title: "Gateway admission: limit and requests in flight",
    queries: ["admission", "in_flight"],
    unit: "",
    label: (q) => (q === "admission" ? "limit" : "in flight"),
  },
  {
    id: "kv_events",
    title: "KV: failovers (per shard) and moves under way",
    queries: ["failovers", "moves"],
    unit: "",
    label: (q, m) => (q === "failovers" ? `failover shard ${m.shard}` : `moving: ${m.kind}`),
  },
];

function kindLabel(kind: string): string {
  const cls = jobClass[kind] ?? "?";
  return `${kind} (${cls}${deferredNow[kind] ? ", deferred" : ""})`;
}

function el<K extends keyof HTMLElementTagNameMap>(tag: K, text?: string): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  return node;
}

function token(): string | null {
  const fragment = new URLSearchParams(location.hash.slice(1)).get("op");
  if (fragment) {
    sessionStorage.setItem(KEY, fragment);
    history.replaceState(null, "", location.pathname); // out of the address bar and history
  }
  return sessionStorage.getItem(KEY);
}

class Unauthorized extends Error {}

async function api<T>(path: string): Promise<T> {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${token() ?? ""}` } });
  if (response.status === 401 || response.status === 403) throw new Unauthorized();
  const body = (await response.json().catch(() => null)) as { error?: { message?: string } } | null;
  if (!response.ok) throw new Error(body?.error?.message ?? `HTTP ${response.status}`);
  return body as T;
}

// Failover times (seconds) drawn as red lines on every chart: the timeline's events.
let failoverTimes: number[] = [];

function eventLines(): uPlot.Plugin {
  return {
    hooks: {
      draw: [
        (u: uPlot) => {
          const { ctx } = u;
          ctx.save();
          ctx.strokeStyle = "#b3261e";
          ctx.lineWidth = 2 * devicePixelRatio;
          for (const t of failoverTimes) {
            const x = u.valToPos(t, "x", true);
            if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
            ctx.beginPath();
            ctx.moveTo(x, u.bbox.top);
            ctx.lineTo(x, u.bbox.top + u.bbox.height);
            ctx.stroke();
          }
          ctx.restore();
        },
      ],
    },
  };
}

interface Drawn {
  plot: uPlot;
  keys: string;
}
const drawn: Record<string, Drawn> = {};

// An axis label that fits: 1500ms as 1.5s, 12000 as 12k.
function tick(v: number, unit: string): string {
  if (unit === "ms" && Math.abs(v) >= 1000) return `${+(v / 1000).toFixed(1)}s`;
  if (Math.abs(v) >= 10_000) return `${+(v / 1000).toFixed(0)}k${unit}`;
  return `${+v.toFixed(2)}${unit}`;
}

function grid(start: number, end: number): number[] {
  const xs: number[] = [];
  for (let t = Math.ceil(start / STEP_S) * STEP_S; t <= end; t += STEP_S) xs.push(t);
  return xs;
}

function render(spec: ChartSpec, found: Record<string, Matrix[]>, start: number, end: number): void {
  const xs = grid(start, end);
  const names: string[] = [];
  const ys: (number | null)[][] = [];
  for (const q of spec.queries) {
    for (const series of found[q] ?? []) {
      const byT = new Map(series.values.map(([t, v]) => [Math.round(t / STEP_S) * STEP_S, Number(v)]));
      names.push(spec.label(q, series.metric));
      ys.push(xs.map((t) => {
        const v = byT.get(t);
        return v === undefined || !Number.isFinite(v) ? null : v * (spec.scale ?? 1);
      }));
    }
  }
  if (spec.top !== undefined && ys.length > spec.top) {
    const total = (row: (number | null)[]) => row.reduce<number>((sum, v) => sum + (v ?? 0), 0);
    const keep = ys.map((row, i) => [total(row), i] as const).sort((a, b) => b[0] - a[0]).slice(0, spec.top).map(([, i]) => i).sort((a, b) => a - b);
    const kept = keep.map((i) => [names[i]!, ys[i]!] as const);
    names.splice(0, names.length, ...kept.map(([n]) => n));
    ys.splice(0, ys.length, ...kept.map(([, y]) => y));
  }
  const keys = names.join("|");
  const box = document.getElementById(`chart-${spec.id}`)!;
  const data = [xs, ...ys] as uPlot.AlignedData;
  const width = Math.max(280, box.clientWidth);
  const existing = drawn[spec.id];
  if (existing && existing.keys === keys) {
    existing.plot.setData(data);
    return;
  }
  existing?.plot.destroy();
  const opts: uPlot.Options = {
    width,
    height: 200,
    series: [
      {},
      ...names.map((name, i) => ({
        label: name,
        stroke: COLORS[i % COLORS.length]!,
        width: 2,
        points: { show: spec.id === "kv_events" },
      })),
    ],
    axes: [{}, { size: 64, values: (_u: uPlot, vals: number[]) => vals.map((v) => tick(v, spec.unit)) }],
    scales: { y: { range: (_u, min, max) => [Math.min(0, min ?? 0), Math.max(1, max ?? 1)] } },
    legend: { live: false }, // names only: the values are on the axes
    plugins: [eventLines()],
  };
  drawn[spec.id] = { plot: new uPlot(opts, data, box), keys };
  box.dataset.series = String(names.length);
}

function layout(): void {
  const charts = document.getElementById("charts")!;
  for (const spec of CHARTS) {
    const figure = el("figure");
    figure.className = "chart";
    const caption = el("figcaption", spec.title);
    const box = el("div");
    box.id = `chart-${spec.id}`;
    box.setAttribute("role", "img");
    box.setAttribute("aria-label", spec.title);
    figure.append(caption, box);
    charts.append(figure);
  }
}

function showShards(now: Record<string, Vector[]>): void {
  const epochs = new Map((now.epoch ?? []).map((v) => [v.metric.shard ?? "", v.value[1]]));
  const primaries = new Map((now.primary ?? []).map((v) => [v.metric.shard ?? "", v.metric.replica ?? ""]));
  const shards = [...epochs.keys()].sort((a, b) => Number(a) - Number(b));
  const body = document.querySelector("#shards tbody")!;
  body.replaceChildren(
    ...shards.map((shard) => {
      const row = el("tr");
      row.dataset.shard = shard;
      row.append(el("td", shard), el("td", epochs.get(shard) ?? ""), el("td", primaries.get(shard) ?? "(none)"));
      return row;
    }),
  );
  const alive = (now.alive ?? []).map((v) => `${v.metric.replica}: ${v.value[1] === "1" ? "up" : "DOWN"}`);
  document.getElementById("replicas")!.textContent = alive.length ? `Replicas — ${alive.join(", ")}` : "";
  for (const v of now.job_class ?? []) if (v.metric.kind) jobClass[v.metric.kind] = v.metric.class ?? "?";
}

async function refresh(): Promise<void> {
  const minutes = Number((document.getElementById("minutes") as HTMLSelectElement).value);
  const names = [...new Set(CHARTS.flatMap((c) => c.queries)), "deferred"].join(",");
  const [series, now] = await Promise.all([
    api<{ at: number; series: Record<string, Matrix[]> }>(`/control/api/series?names=${names}&minutes=${minutes}&step=${STEP_S}`),
    api<{ now: Record<string, Vector[]> }>("/control/api/now"),
  ]);
  showShards(now.now);
  for (const d of series.series.deferred ?? []) {
    const last = d.values[d.values.length - 1];
    if (d.metric.kind) deferredNow[d.metric.kind] = last !== undefined && last[1] === "1";
  }
  failoverTimes = (series.series.failovers ?? []).flatMap((s) => s.values.filter(([, v]) => Number(v) > 0).map(([t]) => t));
  const end = series.at;
  for (const spec of CHARTS) render(spec, series.series, end - minutes * 60, end);
  const failovers = new Set(failoverTimes).size;
  document.getElementById("status")!.textContent = `Live · updated ${new Date(end * 1000).toLocaleTimeString()}${failovers ? ` · failovers in view: ${failovers}` : ""}`;
  document.body.dataset.updated = String(end);
}

async function links(): Promise<void> {
  const found = await api<{ zipkin: string; services: string[] }>("/control/api/links");
  const box = document.getElementById("links")!;
  box.append(el("span", "Traces: "));
  for (const service of found.services) {
    const a = el("a", service);
    a.href = `${found.zipkin}?serviceName=${encodeURIComponent(service)}&lookback=900000`;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    box.append(a, document.createTextNode(" "));
  }
}

function askForToken(message: string): void {
  document.getElementById("room")!.hidden = true;
  const form = document.getElementById("login") as HTMLFormElement;
  form.hidden = false;
  document.getElementById("login-error")!.textContent = message;
  document.getElementById("status")!.textContent = "Operator token needed";
}

let timer: number | undefined;

async function loop(): Promise<void> {
  timer = undefined;
  if (!document.hidden) {
    try {
      await refresh();
    } catch (err) {
      if (err instanceof Unauthorized) {
        sessionStorage.removeItem(KEY);
        askForToken("That token does not open the control room.");
        return;
      }
      document.getElementById("status")!.textContent = `Data unavailable: ${(err as Error).message}. Retrying…`;
    }
  }
  timer = window.setTimeout(() => void loop(), REFRESH_MS);
}

async function open(): Promise<void> {
  document.getElementById("login")!.hidden = true;
  document.getElementById("room")!.hidden = false;
  try {
    await links();
  } catch (err) {
    if (err instanceof Unauthorized) {
      sessionStorage.removeItem(KEY);
      return askForToken("That token does not open the control room.");
    }
  }
  if (timer === undefined) void loop();
}

function start(): void {
  layout();
  (document.getElementById("login") as HTMLFormElement).addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, (document.getElementById("token") as HTMLInputElement).value.trim());
    void open();
  });
  document.getElementById("minutes")!.addEventListener("change", () => {
    for (const d of Object.values(drawn)) d.plot.destroy();
    for (const k of Object.keys(drawn)) delete drawn[k];
    void refresh().catch(() => undefined);
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && timer === undefined && !document.getElementById("room")!.hidden) void loop();
  });
  if (token()) void open();
  else askForToken("");
}

start();
