// The demo page: a live list of the rows of public.todos. It reads the rows
// with app.todos.list, then subscribes to db.public.todos from the head that
// the list returned, so a change made between the two is replayed, not
// lost. After a reconnect the client resumes from the last event id it saw.
// When that history has expired, the client emits 'reload' and the page
// reads the list again.
import { SidecarClient } from '/client.js';

const TOPIC = 'db.public.todos';
const CALL_TIMEOUT_MS = 5000;
const RETRY_MS = 1000;

const badge = document.getElementById('state');
const list = document.getElementById('todos');
const empty = document.getElementById('empty');
const form = document.getElementById('add');
const input = document.getElementById('title');
const errorLine = document.getElementById('error');

/** Rows by id, as the list and the row-change events carry them. */
const rows = new Map();
/** Function that ends the current subscription, or null while there is none. */
let unsubscribe = null;
/** The load in flight, or null. */
let loading = null;

// The token comes from the dev server on every connect, so the page keeps
// working after the sidecar restarts with a new signing secret.
async function fetchToken() {
  const res = await fetch('/dev/token', { cache: 'no-store' });
  if (!res.ok) throw new Error(`GET /dev/token failed with HTTP ${res.status}`);
  const body = await res.json();
  return body.token;
}

const client = new SidecarClient({
  url: `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/ws`,
  token: fetchToken,
});

client.on('state', ({ state }) => {
  badge.dataset.state = state;
  badge.textContent = state;
});
client.on('error', (err) => console.warn('sidecar client:', err));
client.on('reload', () => reload());

/** Calls app.todos.list until it succeeds, waiting RETRY_MS between tries. */
async function readList() {
  for (;;) {
    try {
      return await client.call('app.todos.list', {}, { timeout: CALL_TIMEOUT_MS });
    } catch (err) {
      console.warn('app.todos.list failed, retrying:', err);
      await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
    }
  }
}

// Reads the list, then subscribes from its head, so the subscription
// replays every change that the list missed. A subscription from an earlier
// load is ended first: after 'reload' the client would otherwise resubscribe
// it from the current head, which may be newer than the list's snapshot.
async function load() {
  unsubscribe?.();
  unsubscribe = null;
  const result = await readList();

  rows.clear();
  for (const todo of result.todos) rows.set(todo.id, todo);
  list.dataset.loaded = 'true';
  render();
  unsubscribe = client.subscribe(TOPIC, onEvent, { since: result.head });
}

function reload() {
  loading ??= load()
    .catch((err) => showError(`Loading the list failed: ${err.message}`))
    .finally(() => {
      loading = null;
    });
}

function onEvent(event) {
  if (event.data?.truncated) {
    // The row was too large to send whole: read it from the table.
    reload();
    return;
  }
  const changed = apply(event.data);
  render(changed);
}

/** Applies one row change to rows and returns the id of the changed row. */
function apply(change) {
  switch (change?.op) {
    case 'INSERT':
    case 'UPDATE':
      rows.set(change.new.id, change.new);
      return change.new.id;
    case 'DELETE':
      rows.delete(change.old.id);
      return undefined;
    case 'TRUNCATE':
      rows.clear();
      return undefined;
    default:
      return undefined;
  }
}

function render(changedId) {
  const items = [...rows.values()].sort((a, b) => a.id - b.id).map((todo) => {
    const item = document.createElement('li');
    item.dataset.id = String(todo.id);
    item.dataset.done = String(todo.done);
    if (todo.id === changedId) item.classList.add('fresh');

    const label = document.createElement('label');
    const box = document.createElement('input');
    box.type = 'checkbox';
    box.checked = todo.done;
    box.addEventListener('change', () => toggle(todo.id));
    const title = document.createElement('span');
    title.className = 'title';
    title.textContent = todo.title;

    label.append(box, title);
    item.append(label);
    return item;
  });
  list.replaceChildren(...items);
  empty.hidden = rows.size > 0;
}

async function toggle(id) {
  try {
    await client.call('app.todos.toggle', { id }, { timeout: CALL_TIMEOUT_MS });
    clearError();
  } catch (err) {
    showError(`Updating the item failed: ${err.message}`);
    render();
  }
}

form.addEventListener('submit', async (event) => {
  event.preventDefault();
  const title = input.value.trim();
  if (title === '') return;
  try {
    await client.call('app.todos.add', { title }, { timeout: CALL_TIMEOUT_MS });
    input.value = '';
    clearError();
  } catch (err) {
    showError(`Adding the item failed: ${err.message}`);
  }
});

function showError(message) {
  errorLine.textContent = message;
  errorLine.hidden = false;
}

function clearError() {
  errorLine.hidden = true;
}

reload();
