// Talking to the subscriber's REST API. Every URL is relative to the page, so
// that the page works behind a reverse proxy under any path prefix.

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Return the relative URL of `endpoint` for dataset (or root) `fullpath`, with `params`. */
export function apiUrl(endpoint, fullpath, params) {
  let url = `api/${endpoint}`;
  if (fullpath !== undefined) {
    url += "/" + fullpath.split("/").map(encodeURIComponent).join("/");
  }
  if (params) {
    url += "?" + new URLSearchParams(params).toString();
  }
  return url;
}

/** Go to the login form: the session is missing or over. */
export function toLogin() {
  window.location.assign("auth/login");
}

/**
 * Fetch `url` and return the response; an error answer becomes an ApiError with
 * the server's message (a 401, the login form). A 304 is returned as is.
 */
export async function request(url, options = {}) {
  let response;
  try {
    response = await fetch(url, { cache: "no-store", credentials: "same-origin", ...options });
  } catch (exc) {
    throw new ApiError(0, `the subscriber cannot be reached (${exc.message})`);
  }
  if (response.status === 401) {
    toLogin();
    throw new ApiError(401, "log in first");
  }
  if (!response.ok && response.status !== 304) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (body && typeof body.error === "string") message = body.error;
    } catch {
      // Not JSON (a proxy's page): the status line says enough.
    }
    throw new ApiError(response.status, message);
  }
  return response;
}

export async function getJson(url) {
  return (await request(url)).json();
}

/** POST to `url` (the subscriber's cross-site checks pass: the browser says it is same-origin). */
export async function post(url) {
  return (await request(url, { method: "POST" })).json();
}
