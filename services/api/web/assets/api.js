// The console's one way to the server: GraphQL over POST and over the WebSocket of /graphql,
// carried by the session cookie with its CSRF token (services/api/console.py). The page never
// holds a key: the cookie is HttpOnly.

let csrf = "";

export class ApiError extends Error {
  constructor(message, code) {
    super(message);
    this.code = code;
  }
}

async function json(response) {
  try {
    return await response.json();
  } catch {
    throw new ApiError(`The API server answered ${response.status} without a body`, response.status);
  }
}

// Who is signed in ({user, role, csrf}), or null.
export async function session() {
  const response = await fetch("/console/session", { credentials: "same-origin" });
  const body = await json(response);
  if (!response.ok) throw new ApiError(body.error || `HTTP ${response.status}`, response.status);
  if (!body.user) return null;
  csrf = body.csrf;
  return body;
}

export async function signIn(key) {
  const response = await fetch("/console/session", {
    method: "POST",
    credentials: "same-origin",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ key }),
  });
  const body = await json(response);
  if (!response.ok) throw new ApiError(body.error || `HTTP ${response.status}`, response.status);
  csrf = body.csrf;
  return body;
}

export async function signOut() {
  await fetch("/console/session", {
    method: "DELETE",
    credentials: "same-origin",
    headers: { "x-runplane-csrf": csrf },
  });
  csrf = "";
}

// The data of one query or mutation; an ApiError with the server's message and code.
export async function gql(query, variables = {}) {
  const response = await fetch("/graphql", {
    method: "POST",
    credentials: "same-origin",
    headers: { "content-type": "application/json", "x-runplane-csrf": csrf },
    body: JSON.stringify({ query, variables }),
  });
  const body = await json(response);
  if (body.errors && body.errors.length) {
    const first = body.errors[0];
    throw new ApiError(first.message, (first.extensions && first.extensions.code) || response.status);
  }
  return body.data;
}

// One subscription over graphql-transport-ws; returns a function that stops it.
export function subscribe(query, variables, { next, error, complete }) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/graphql`, "graphql-transport-ws");
  let done = false;
  const finish = (callback, value) => {
    if (done) return;
    done = true;
    if (callback) callback(value);
    socket.close();
  };
  socket.onopen = () => socket.send(JSON.stringify({ type: "connection_init", payload: { csrf } }));
  socket.onmessage = (message) => {
    const data = JSON.parse(message.data);
    if (data.type === "connection_ack") {
      socket.send(JSON.stringify({ id: "1", type: "subscribe", payload: { query, variables } }));
    } else if (data.type === "next") {
      const payload = data.payload || {};
      if (payload.errors && payload.errors.length) {
        finish(error, new ApiError(payload.errors[0].message, payload.errors[0].extensions?.code));
      } else {
        next(payload.data);
      }
    } else if (data.type === "error") {
      finish(error, new ApiError((data.payload && data.payload[0]?.message) || "Subscription failed", 400));
    } else if (data.type === "complete") {
      finish(complete);
    } else if (data.type === "ping") {
      socket.send(JSON.stringify({ type: "pong" }));
    }
  };
  socket.onclose = (event) => {
    if (!done) finish(error, new ApiError(`The connection closed (${event.code}): reload to follow again`, 503));
  };
  return () => {
    done = true;
    if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ id: "1", type: "complete" }));
    socket.close();
  };
}
