// The login form: posted as JSON, so that a wrong password is told on the
// form itself; without JavaScript the form posts itself (and a wrong password
// shows the server's JSON error).

const form = document.querySelector("form");
const error = document.getElementById("login-error");

/** Return how long a refusal's Retry-After says to wait, as people read it. */
function retryAfter(response) {
  const seconds = Number.parseInt(response.headers.get("Retry-After"), 10);
  if (!(seconds >= 0)) return "a while";
  return seconds < 120 ? `${seconds} s` : `${Math.ceil(seconds / 60)} min`;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = { username: form.elements.username.value, password: form.elements.password.value };
  error.hidden = true;
  let response;
  try {
    response = await fetch("login", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body),
    });
  } catch (exc) {
    response = null;
    error.textContent = `The subscriber cannot be reached (${exc.message}).`;
  }
  if (response && response.ok) {
    // The session cookie is set: on to the page, next to this one's directory.
    window.location.assign("../");
    return;
  }
  if (response && response.status === 429) {
    // Too many failed logins from here: the password was not even checked.
    error.textContent = `Too many failed logins; try again in ${retryAfter(response)}.`;
  } else if (response) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json()).error || message;
    } catch {
      // Not JSON: the status says enough.
    }
    error.textContent = `Cannot log in: ${message}`;
  }
  error.hidden = false;
});
