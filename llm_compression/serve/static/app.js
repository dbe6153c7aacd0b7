"use strict";
// The search page: text or a dropped file -> POST /v1/search -> ranked results.
const $ = (id) => document.getElementById(id);
let pendingFile = null;
let latest = 0; // only the newest search renders its answer

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim() || localStorage.getItem("llmc-key") || "";
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function buildQuery() {
  if (pendingFile) {
    const kind = pendingFile.type.startsWith("audio") ? "audio" : "image";
    return { [kind]: await readAsDataURL(pendingFile) };
  }
  const text = $("query").value.trim();
  return text || null;
}

async function search() {
  const query = await buildQuery();
  if (!query) { setStatus("Type a query or drop a file.", true); return; }
  const body = { query, k: Number($("k").value) || 10 };
  if ($("modality").value) body.modality = $("modality").value;
  setStatus("Searching...");
  const started = performance.now();
  const mine = ++latest;
  const resp = await fetch("/v1/search", { method: "POST", headers: headers(), body: JSON.stringify(body) });
  const data = await resp.json();
  if (mine !== latest) return;
  if (!resp.ok) { setStatus(data.error ? data.error.message : resp.statusText, true); render([]); return; }
  const ms = Math.round(performance.now() - started);
  setStatus(`${data.data.length} results for the ${data.query_modality} query in ${data.tables.join(", ")} (${ms} ms)`);
  render(data.data);
}

async function mediaElement(media) {
  const resp = await fetch(media.url, { headers: headers() });
  if (!resp.ok) return document.createTextNode("(media unavailable)");
  const url = URL.createObjectURL(await resp.blob());
  const el = document.createElement(media.kind === "image" ? "img" : media.kind);
  el.src = url;
  if (media.kind !== "image") el.controls = true;
  return el;
}

function render(hits) {
  const list = $("results");
  list.replaceChildren();
  for (const hit of hits) {
    const li = document.createElement("li");
    li.className = "result";
    li.dataset.id = hit.id;
    li.dataset.score = hit.score;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(4);
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.textContent = hit.modality;
    const body = document.createElement("div");
    const title = document.createElement("div");
    title.className = "title";
    title.textContent = hit.source || hit.id;
    body.append(title);
    if (hit.snippet) {
      const snip = document.createElement("div");
      snip.className = "snippet";
      snip.textContent = hit.snippet;
      body.append(snip);
    }
    li.append(score, tag);
    if (hit.media) mediaElement(hit.media).then((el) => li.insertBefore(el, body));
    li.append(body);
    list.append(li);
  }
}

function takeFile(file) {
  if (!file) return;
  pendingFile = file;
  $("file-name").textContent = `${file.name} (${file.type || "unknown type"})`;
  $("query").value = "";
  search().catch((e) => setStatus(String(e), true));
}

$("search-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  pendingFile = null;
  $("file-name").textContent = "";
  search().catch((e) => setStatus(String(e), true));
});
$("file").addEventListener("change", (ev) => takeFile(ev.target.files[0]));
$("modality").addEventListener("change", () => { if (pendingFile || $("query").value.trim()) search(); });
$("api-key").addEventListener("change", () => localStorage.setItem("llmc-key", $("api-key").value.trim()));
const drop = $("drop");
drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (ev) => { ev.preventDefault(); drop.classList.remove("over"); takeFile(ev.dataTransfer.files[0]); });
fetch("/health").then((r) => r.json()).then((h) => {
  $("store-info").textContent = h.store ? `tables: ${h.store.tables.join(", ")}; models: ${h.models.join(", ")}` : "no store loaded";
}).catch(() => {});
