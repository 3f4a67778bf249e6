// The public HTTP API, as the console calls it: one fetch wrapper that adds the API key kept
// for this tab, shows the progress bar, and turns error answers into ApiError.

const KEY_STORAGE = "faceverify.apiKey";
// The progress bar appears only for requests slower than this, so quick ones do not flicker.
const PROGRESS_DELAY_MS = 150;

export class ApiError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

// API routes live at the service's root, one level above /console/ (works behind a prefix).
export function apiUrl(path) {
  return new URL(`../${path.replace(/^\//, "")}`, document.baseURI).href;
}

let pending = 0;
let progressTimer = null;

function busy(delta) {
  pending += delta;
  const bar = document.getElementById("progress");
  const main = document.getElementById("main");
  if (pending > 0 && progressTimer === null && !bar.classList.contains("active")) {
    progressTimer = setTimeout(() => {
      progressTimer = null;
      if (pending > 0) {
        bar.classList.add("active");
        bar.setAttribute("aria-hidden", "false");
      }
    }, PROGRESS_DELAY_MS);
  }
  main.setAttribute("aria-busy", String(pending > 0));
  if (pending === 0) {
    clearTimeout(progressTimer);
    progressTimer = null;
    bar.classList.remove("active");
    bar.setAttribute("aria-hidden", "true");
  }
}

// `body`: FormData (files) or a plain object sent as JSON.
export async function request(path, { method = "GET", body } = {}) {
  const headers = {};
  const key = apiKey();
  if (key) headers["X-API-Key"] = key;
  let payload = body;
  if (body !== undefined && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  busy(+1);
  let response;
  try {
    response = await fetch(apiUrl(path), { method, headers, body: payload });
  } catch {
    throw new ApiError(0, "network", "the service did not answer");
  } finally {
    busy(-1);
  }
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = new ApiError(
      response.status,
      data?.error?.code ?? `http_${response.status}`,
      data?.error?.message ?? response.statusText,
      response.headers.get("Retry-After"),
    );
    if (response.status === 401) {
      window.dispatchEvent(new CustomEvent("faceverify:unauthorized", { detail: error }));
    }
    throw error;
  }
  return data;
}

export function photoForm(file, fields = {}) {
  const form = new FormData();
  form.append("image", file, file.name || "photo");
  for (const [name, value] of Object.entries(fields)) form.append(name, String(value));
  return form;
}
