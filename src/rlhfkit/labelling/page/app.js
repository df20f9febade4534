// The labelling page. Text from the server (prompts, responses, guidelines, errors) is only ever
// put on the page with textContent, never parsed as HTML; the server's Content-Security-Policy
// also refuses inline scripts, so markup inside a response stays text.
"use strict";

// The name a tab labels under lives in that tab (sessionStorage: kept over a reload, never
// shared with another tab), so several people on one browser each keep their own; the last
// name given in this browser only fills in the name field of a new tab.
const NAME_KEY = "rlhfkit-labeller";
const FLAG_CHOICES = [["", "no flag"], ["unsafe", "unsafe"], ["broken", "broken"]];

// The item on screen and how the labeller has arranged it.
const view = {
  labeller: null,
  item: null,
  order: [],         // response indices, best first, as arranged now
  tied: new Set(),   // response indices tied with the response just above them
  flags: new Map(),  // response index -> flag
  letters: new Map(), // response index -> the letter it was first shown with
  shownAt: 0,
  busy: false,
  poll: null,        // the timer of a page waiting for a prompt held by someone else
};

const $ = (id) => document.getElementById(id);

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

async function call(method, path, body) {
  const options = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch {
    // no answer at all: the server has stopped (a training run that serves this page has
    // ended, been stopped, or timed out), so nothing sent now was stored
    throw new Error(
      "The labelling server is not answering (it has stopped: the training run serving this " +
        "page may have ended). Nothing was saved just now; open the new link once it runs again."
    );
  }
  if (response.status === 403) {
    throw new Error(
      "Access refused: open the page with the link the server printed (rlhfkit label serve, or " +
        "the training run's 'labelling page:' line). A server started again prints a new link."
    );
  }
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || `request failed (${response.status})`);
  return data;
}

// ---- what the page shows -------------------------------------------------------------------

function showState(state) {
  view.labeller = state.labeller;
  const p = state.progress;
  let mine = `you: ${p.mine}`;
  if (p.mine_skipped) mine += ` (${p.mine_skipped} skipped)`;
  $("progress").textContent = `${p.done} of ${p.total} done · ${mine}`;
  $("who-name").textContent = state.labeller;
  $("who").hidden = false;
  $("undo").disabled = !state.can_undo;
  $("item").hidden = state.item === null;
  const waiting = state.item === null && state.waiting > 0;
  $("waiting").hidden = !waiting;
  $("finished").hidden = state.item !== null || waiting;
  clearTimeout(view.poll);
  if (state.item === null) {
    view.item = null;
    if (waiting) {
      // the last open prompts are on other labellers' screens: one may come back (skipped, or
      // left for the hold time), so ask again rather than say there is nothing left
      const n = state.waiting;
      $("waiting-count").textContent =
        `${n} prompt${n === 1 ? " is" : "s are"} on other labellers' screens.`;
    }
    // nothing open now: ask again by itself, also when nothing is held, since a training run
    // (online DPO, labeller=human) adds the next refresh's prompts to the store as it goes
    const again = () => call("GET", `/api/next?labeller=${encodeURIComponent(view.labeller)}`);
    view.poll = setTimeout(() => act(again), state.ask_again_seconds * 1000);
    return;
  }
  if (!view.item || view.item.item_id !== state.item.item_id) startItem(state.item);
}

function startItem(item) {
  view.item = item;
  $("item").dataset.itemId = item.item_id;
  view.order = item.responses.map((r) => r.index);
  view.tied = new Set();
  view.flags = new Map();
  view.letters = new Map(view.order.map((index, place) => [index, String.fromCharCode(65 + place)]));
  view.shownAt = performance.now();
  $("comment").value = "";
  showPrompt(item.prompt);
  drawResponses(view.order[0]); // focused: the keys work at once, without a click
}

function showPrompt(prompt) {
  const box = $("prompt");
  box.replaceChildren();
  if (typeof prompt === "string") {
    box.append(textBlock("text", prompt));
    return;
  }
  for (const message of prompt) {
    const block = document.createElement("div");
    block.className = "message";
    const role = typeof message === "object" && message !== null ? message.role : "";
    const content = typeof message === "object" && message !== null ? message.content : message;
    block.append(textBlock("role", String(role || "message")));
    block.append(textBlock("text", typeof content === "string" ? content : JSON.stringify(content)));
    box.append(block);
  }
}

function textBlock(className, text) {
  const div = document.createElement("div");
  div.className = className;
  div.dir = "auto"; // Arabic or Hebrew text is laid out right to left, English left to right
  div.textContent = text;
  return div;
}

function responseText(index) {
  return view.item.responses.find((r) => r.index === index).text;
}

// Dense ranks of the arrangement: place 1 is best, a tie shares the place of the one above.
function places() {
  const result = [];
  let place = 0;
  view.order.forEach((index, position) => {
    if (position === 0 || !view.tied.has(index)) place += 1;
    result.push(place);
  });
  return result;
}

function drawResponses(focusIndex) {
  const list = $("responses");
  list.replaceChildren();
  const ranks = places();
  view.order.forEach((index, position) => {
    const card = document.createElement("li");
    card.className = "response";
    card.tabIndex = 0;
    card.draggable = true;
    card.dataset.index = String(index);
    if (position > 0 && view.tied.has(index)) card.classList.add("tied");

    const head = document.createElement("div");
    head.className = "head";
    const rank = textBlock("rank", String(ranks[position]));
    rank.title = "place";
    head.append(rank, textBlock("letter", `Response ${view.letters.get(index)}`));

    const tie = document.createElement("label");
    tie.className = "tie-control";
    const tieBox = document.createElement("input");
    tieBox.type = "checkbox";
    tieBox.className = "tie";
    tieBox.checked = view.tied.has(index);
    tieBox.disabled = position === 0;
    tieBox.addEventListener("change", () => toggleTie(index));
    tie.append(tieBox, document.createTextNode(" tie with the one above"));

    const flag = document.createElement("select");
    flag.className = "flag";
    flag.setAttribute("aria-label", "flag this response");
    for (const [value, label] of FLAG_CHOICES) {
      const option = document.createElement("option");
      option.value = value;
      option.textContent = label;
      flag.append(option);
    }
    flag.value = view.flags.get(index) || "";
    flag.addEventListener("change", () => {
      if (flag.value) view.flags.set(index, flag.value);
      else view.flags.delete(index);
      card.classList.toggle("flagged", Boolean(flag.value));
    });
    card.classList.toggle("flagged", view.flags.has(index));
    head.append(tie, flag);

    card.append(head, textBlock("text", responseText(index)));
    addDragHandlers(card, index);
    list.append(card);
  });
  if (focusIndex !== undefined) {
    list.querySelector(`[data-index="${focusIndex}"]`).focus();
  }
}

// ---- arranging -----------------------------------------------------------------------------

// Move the response at `from` to place `to` (0-based). A tie belongs to two neighbours: moving a
// response ends the ties it had and the one it would split.
function move(from, to) {
  to = Math.max(0, Math.min(view.order.length - 1, to));
  if (from === to) return;
  const index = view.order[from];
  const oldBelow = view.order[from + 1];
  view.order.splice(from, 1);
  view.order.splice(to, 0, index);
  const newBelow = view.order[to + 1];
  for (const broken of [index, oldBelow, newBelow]) view.tied.delete(broken);
  drawResponses(index);
}

function toggleTie(index) {
  const position = view.order.indexOf(index);
  if (position === 0) return;
  if (view.tied.has(index)) view.tied.delete(index);
  else view.tied.add(index);
  drawResponses(index);
}

function addDragHandlers(card, index) {
  card.addEventListener("dragstart", (event) => {
    event.dataTransfer.setData("text/plain", String(index));
    event.dataTransfer.effectAllowed = "move";
    card.classList.add("dragging");
  });
  card.addEventListener("dragend", () => card.classList.remove("dragging"));
  card.addEventListener("dragover", (event) => {
    event.preventDefault();
    event.dataTransfer.dropEffect = "move";
  });
  card.addEventListener("drop", (event) => {
    event.preventDefault();
    const dragged = Number(event.dataTransfer.getData("text/plain"));
    if (!view.order.includes(dragged)) return;
    move(view.order.indexOf(dragged), view.order.indexOf(index));
  });
}

function onKey(event) {
  const card = event.target.closest && event.target.closest(".response");
  if (!view.item || event.altKey || event.ctrlKey || event.metaKey) return;
  // typing in the comment box or choosing a flag is not a command
  if (["INPUT", "TEXTAREA", "SELECT", "BUTTON"].includes(event.target.tagName)) return;
  if (event.key === "Enter") {
    event.preventDefault();
    submit(false);
    return;
  }
  if (!card) return;
  const index = Number(card.dataset.index);
  const position = view.order.indexOf(index);
  if (event.key === "ArrowUp" || event.key === "ArrowDown") {
    event.preventDefault();
    move(position, position + (event.key === "ArrowUp" ? -1 : 1));
  } else if (/^[1-9]$/.test(event.key)) {
    event.preventDefault();
    move(position, Number(event.key) - 1);
  } else if (event.key === "t" || event.key === "T") {
    event.preventDefault();
    toggleTie(index);
  }
}

// ---- answering -----------------------------------------------------------------------------

function ranking() {
  const groups = [];
  view.order.forEach((index, position) => {
    if (position > 0 && view.tied.has(index)) groups[groups.length - 1].push(index);
    else groups.push([index]);
  });
  return groups;
}

async function submit(skip) {
  if (!view.item || view.busy) return;
  const body = {
    labeller: view.labeller,
    item_id: view.item.item_id,
    ranking: skip ? null : ranking(),
    flags: Object.fromEntries(view.flags),
    comment: $("comment").value,
    seconds: (performance.now() - view.shownAt) / 1000,
  };
  await act(() => call("POST", "/api/submit", body));
}

async function undo() {
  if (view.busy) return;
  await act(async () => {
    const state = await call("POST", "/api/undo", { labeller: view.labeller });
    // only once the server took it back: the undone item comes back as new, a fresh
    // arrangement; a failed undo leaves the item on screen as it was, still answerable
    view.item = null;
    return state;
  });
}

// One request at a time; the page moves on only once the server has stored the answer.
async function act(request) {
  view.busy = true;
  for (const id of ["submit", "skip", "undo"]) $(id).disabled = true;
  try {
    showState(await request());
    showError("");
  } catch (error) {
    showError(error.message);
    $("undo").disabled = false;
  } finally {
    view.busy = false;
    $("submit").disabled = false;
    $("skip").disabled = false;
  }
}

// ---- starting ------------------------------------------------------------------------------

async function start(name) {
  $("login").hidden = true;
  $("work").hidden = false;
  try {
    const guidelines = await call("GET", "/api/guidelines");
    $("guidelines").textContent = guidelines.text;
    $("guidelines-box").hidden = !guidelines.text;
    showState(await call("GET", `/api/next?labeller=${encodeURIComponent(name)}`));
    sessionStorage.setItem(NAME_KEY, name);
    localStorage.setItem(NAME_KEY, name);
    showError("");
  } catch (error) {
    showError(error.message);
    askName();
  }
}

function askName() {
  $("work").hidden = true;
  $("who").hidden = true;
  $("login").hidden = false;
  $("name").value = sessionStorage.getItem(NAME_KEY) || localStorage.getItem(NAME_KEY) || "";
  $("name").focus();
}

function main() {
  // the token came in the link and is now a cookie: keep it out of the address bar and history
  if (new URLSearchParams(location.search).has("token")) {
    history.replaceState(null, "", location.pathname);
  }
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    view.item = null;
    start($("name").value.trim());
  });
  $("change-name").addEventListener("click", () => {
    sessionStorage.removeItem(NAME_KEY);
    view.item = null;
    askName();
  });
  $("submit").addEventListener("click", () => submit(false));
  $("skip").addEventListener("click", () => submit(true));
  $("undo").addEventListener("click", undo);
  document.addEventListener("keydown", onKey);
  const name = sessionStorage.getItem(NAME_KEY);
  if (name) start(name);
  else askName();
}

main();
