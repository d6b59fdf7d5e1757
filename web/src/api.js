// The gateway's REST/JSON API (see /openapi.json): unary calls, uploads, server-sent events, downloads.

/** An error the page shows as is: the gateway's gRPC status and message, or what went wrong on the way. */
export class ApiError extends Error {
  constructor(message, { status = "", httpStatus = 0, reason = "", retryDelay = null } = {}) {
    super(message);
    this.status = status;
    this.httpStatus = httpStatus;
    this.reason = reason;          // the ErrorInfo reason, e.g. SERVER_SHUTTING_DOWN
    this.retryDelay = retryDelay;  // seconds the server's RetryInfo asks for, or null
  }
}

/** How many times a stream the server cut as UNAVAILABLE (draining, restarting) is opened again. */
export const STREAM_ATTEMPTS = 5;

/** The ErrorInfo reason and RetryInfo delay (seconds) among a gateway error's google.rpc details. */
export function errorDetails(error) {
  const details = error?.details ?? [];
  const reason = details.find((d) => d.reason)?.reason ?? "";
  const delay = details.find((d) => d.retryDelay)?.retryDelay;
  return { reason, retryDelay: delay ? parseFloat(delay) : null };
}

/** Seconds to wait before attempt `attempt` + 1 after `error`, or null: only UNAVAILABLE is retried, boundedly. */
export function retryDelay(error, attempt, attempts = STREAM_ATTEMPTS) {
  if (attempt + 1 >= attempts || error?.status !== "UNAVAILABLE") return null;
  return Math.min(Math.max(0.5 * 2 ** attempt, error.retryDelay ?? 0), 10);
}

export class Api {
  constructor() {
    this.token = sessionStorage.getItem("medsam2-token") ?? "";
    this.openapi = null;
  }

  setToken(token) {
    this.token = token;
    sessionStorage.setItem("medsam2-token", token);
  }

  headers(extra = {}) {
    const headers = { ...extra };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    return headers;
  }

  /** The OpenAPI document: which methods and result formats this server has. */
  async describe() {
    const response = await this.fetch("/openapi.json", {});
    this.openapi = await response.json();
    return this.openapi;
  }

  has(method) {
    return Boolean(this.openapi?.paths?.[`/v1/${method}`]);
  }

  enumValues(name) {
    return this.openapi?.components?.schemas?.[name]?.enum ?? [];
  }

  async fetch(path, init) {
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      throw new ApiError(`Cannot reach the server (${error.message}). Is medsam2 serve still running?`,
        { status: "UNAVAILABLE" });
    }
    if (!response.ok) throw await errorOf(response);
    return response;
  }

  /** A unary RPC: POST /v1/<method> with a proto-JSON body. */
  async call(method, body = {}) {
    const response = await this.fetch(`/v1/${method}`, {
      method: "POST", headers: this.headers({ "Content-Type": "application/json" }), body: JSON.stringify(body),
    });
    return response.json();
  }

  /**
   * CreateSession: one framed body (application/vnd.medsam2.upload): a 4-byte big-endian length, the study
   * header as UTF-8 JSON, then the voxels. The header travels in the body, so a DICOM series' SOP Instance UIDs
   * are not squeezed into an HTTP header's 64 KiB.
   */
  async upload(header, voxels) {
    const json = new TextEncoder().encode(JSON.stringify(header));
    const prefix = new Uint8Array(4);
    new DataView(prefix.buffer).setUint32(0, json.length, false);
    const response = await this.fetch("/v1/CreateSession", {
      method: "POST",
      headers: this.headers({ "Content-Type": "application/vnd.medsam2.upload" }),
      body: new Blob([prefix, json, voxels]),
    });
    return response.json();
  }

  /** CreateSession without voxels (a PACS reference). */
  async open(header) {
    const response = await this.fetch("/v1/CreateSession", {
      method: "POST", headers: this.headers({ "Content-Type": "application/json" }), body: JSON.stringify(header),
    });
    return response.json();
  }

  /**
   * A server-streaming RPC as server-sent events; calls onMessage per message; resolves at `event: end`.
   * A stream that ends UNAVAILABLE (a server draining for a restart says SERVER_SHUTTING_DOWN) is opened again,
   * a few times, after the delay the server asks for; it starts over, so onRetry(error, seconds) lets the
   * caller reset what it counts.
   */
  async stream(method, body, onMessage, onRetry = () => {}) {
    for (let attempt = 0; ; attempt += 1) {
      try {
        return await this.streamOnce(method, body, onMessage);
      } catch (error) {
        const delay = retryDelay(error, attempt);
        if (delay === null) throw error;
        onRetry(error, delay);
        await new Promise((resolve) => setTimeout(resolve, delay * 1000));
      }
    }
  }

  async streamOnce(method, body, onMessage) {
    const response = await this.fetch(`/v1/${method}`, {
      method: "POST",
      headers: this.headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify(body),
    });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (error) {
        throw new ApiError(`Lost the connection to the server mid-stream (${error.message}).`,
          { status: "UNAVAILABLE" });
      }
      if (chunk.done) {
        throw new ApiError("The server closed the stream before it finished: it may have stopped or restarted.",
          { status: "UNAVAILABLE" });
      }
      buffer += chunk.value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let kind = "message";
        let data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) kind = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
        }
        const payload = data ? JSON.parse(data) : {};
        if (kind === "end") return;
        if (kind === "error") {
          throw new ApiError(`${payload.error?.status}: ${payload.error?.message}`,
            { status: payload.error?.status, ...errorDetails(payload.error) });
        }
        await onMessage(payload);
      }
    }
  }

  /** A file-chunk stream as one file (POST /v1/<method>:download). */
  async download(method, body) {
    const response = await this.fetch(`/v1/${method}:download`, {
      method: "POST", headers: this.headers({ "Content-Type": "application/json" }), body: JSON.stringify(body),
    });
    return response.blob();
  }

  async measurements(sessionId) {
    const response = await this.fetch("/gateway/v1/Measurements", {
      method: "POST", headers: this.headers({ "Content-Type": "application/json" }),
      body: JSON.stringify({ sessionId }),
    });
    return response.json();
  }
}

async function errorOf(response) {
  let status = "";
  let message = `${response.status} ${response.statusText}`;
  let details = { reason: "", retryDelay: null };
  try {
    const body = await response.json();
    status = body.error?.status ?? "";
    message = body.error?.message ?? message;
    details = errorDetails(body.error);
  } catch {
    // Not the gateway's JSON error (a proxy's page): keep the HTTP status line.
  }
  if (response.status === 401) {
    message = `The server refused the token (${status || "UNAUTHENTICATED"}: ${message}). Sign in with a valid token.`;
  } else if (status) {
    message = `${status}: ${message}`;
  }
  return new ApiError(message, { status, httpStatus: response.status, ...details });
}
