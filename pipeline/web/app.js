// astrogan serve: the page. Plain JS, no build step. State lives here; the server keeps the image.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  config: null, image: null, hints: [], strength: 1, mode: "colorize",
  inflight: false, pending: false, version: 0, urls: {}, job: null,
};

function showError(sentence) {
  const box = $("error");
  box.textContent = sentence;
  box.hidden = !sentence;
}

function status(text) { $("status").textContent = text; }

function busy(delta) {
  const n = Number(document.body.dataset.busy) + delta;
  document.body.dataset.busy = String(Math.max(0, n));
}

async function errorOf(response) {
  try {
    const body = await response.json();
    if (body.error) return body.error;
  } catch (e) { /* not JSON */ }
  return `the server answered ${response.status} ${response.statusText}`;
}

async function api(path, options = {}) {
  let response;
  busy(1);
  try {
    response = await fetch(path, options);
  } catch (e) {
    throw new Error("the server does not answer; is `astrogan serve` still running?");
  } finally {
    busy(-1);
  }
  if (!response.ok) throw new Error(await errorOf(response));
  return response;
}

function postJSON(path, body) {
  return api(path, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
}

function setImage(id, blob) {
  if (state.urls[id]) URL.revokeObjectURL(state.urls[id]);
  state.urls[id] = URL.createObjectURL(blob);
  $(id).src = state.urls[id];
}

async function init() {
  const config = await (await api("/api/config")).json();
  state.config = config;
  for (const s of config.stretches) $("stretch").add(new Option(s, s));
  $("models").textContent = `colorize: ${config.colorize.model} · upscale: ${config.upscale.model}`;
  $("upscale-model").textContent = `Model: ${config.upscale.model}`;
  state.strength = config.colorize.strength;
  $("strength").value = state.strength;
  $("strength-value").textContent = state.strength;
  if (!config.colorize.takes_hints) {
    $("model-note").textContent = config.colorize.note;
    $("model-note").hidden = false;
    $("hint-tools").hidden = true;
  }
  if (config.folder) {
    const list = await (await api("/api/files")).json();
    $("folder-name").textContent = list.folder;
    for (const f of list.files) $("folder-files").add(new Option(f, f));
    $("folder-box").hidden = list.files.length === 0;
  }
}

function decodeFields(form) {
  form.append("stretch", $("stretch").value);
  form.append("lo", $("lo").value);
  form.append("hi", $("hi").value);
  form.append("hdu", $("hdu").value);
  return form;
}

async function openWith(request) {
  showError("");
  status("opening…");
  try {
    const info = await (await request()).json();
    state.image = info;
    state.hints = [];
    state.job = null;
    $("job").hidden = true;
    $("ref-info").textContent = "";
    $("clear-ref").hidden = true;
    const notice = info.notice ? ` ${info.notice}.` : "";
    $("image-info").textContent = `${info.name}: ${info.width}×${info.height}, ${info.grey ? "grey" : "colour"}, ` +
      `${info.bit_depth}-bit ${info.format || ""}${info.stretch && info.stretch !== "none" ? ", stretch " + info.stretch : ""}.${notice}`;
    $("empty").hidden = true;
    $("stage").hidden = false;
    $("compare-box").hidden = false;
    renderHints();
    await showMode();
  } catch (e) {
    showError(e.message);
    status("");
  }
}

function openUpload(file) {
  if (!file) return;
  const form = decodeFields(new FormData());
  form.append("file", file, file.name);
  openWith(() => api("/api/open", {method: "POST", body: form}));
}

function openPath() {
  const body = {path: $("folder-files").value, stretch: $("stretch").value, lo: $("lo").value,
    hi: $("hi").value, hdu: $("hdu").value};
  openWith(() => postJSON("/api/open", body));
}

async function loadBefore(kind) {
  const r = await api(`/api/s/${state.image.session}/before.png?kind=${kind}`);
  setImage("before", await r.blob());
}

async function showMode() {
  const colorize = state.mode === "colorize";
  $("mode-colorize").classList.toggle("on", colorize);
  $("mode-upscale").classList.toggle("on", !colorize);
  $("colorize-panel").hidden = !colorize;
  $("upscale-panel").hidden = colorize;
  $("markers").hidden = !colorize;
  if (!state.image) return;
  $("job").hidden = true;
  if (colorize) {
    await loadBefore("grey");
    requestPreview();
  } else {
    await loadBefore("input");
    setImage("after", await (await api(`/api/s/${state.image.session}/before.png?kind=input`)).blob());
    status("the input; press Upscale 4x to compute the 4x result");
  }
}

// One preview request at a time; clicks during it are folded into one more request.
async function requestPreview() {
  if (!state.image || state.mode !== "colorize") return;
  if (state.inflight) { state.pending = true; return; }
  state.inflight = true;
  state.pending = false;
  const started = performance.now();
  const sent = state.image.session;
  try {
    const r = await postJSON(`/api/s/${sent}/preview`, {hints: state.hints, strength: state.strength});
    const blob = await r.blob();
    if (state.image && state.image.session === sent) {
      setImage("after", blob);
      await $("after").decode().catch(() => {});
      state.version += 1;
      $("after").dataset.version = String(state.version);
      $("after").dataset.hints = String(state.hints.length);
      status(`preview ${Math.round(performance.now() - started)} ms (${state.image.preview[0]}×` +
        `${state.image.preview[1]}; the download is full resolution)`);
      showError("");
    }
  } catch (e) {
    showError(e.message);
    status("");
  } finally {
    state.inflight = false;
    if (state.pending) requestPreview();
  }
}

function imagePoint(event) {
  const rect = $("after").getBoundingClientRect();
  const fx = (event.clientX - rect.left) / rect.width;
  const fy = (event.clientY - rect.top) / rect.height;
  const x = Math.min(state.image.width - 1, Math.max(0, Math.floor(fx * state.image.width)));
  const y = Math.min(state.image.height - 1, Math.max(0, Math.floor(fy * state.image.height)));
  return {x, y};
}

function renderHints() {
  const layer = $("markers");
  const list = $("hint-list");
  layer.replaceChildren();
  list.replaceChildren();
  state.hints.forEach((h, i) => {
    const m = document.createElement("div");
    m.className = "marker";
    m.style.left = `${(100 * (h.x + 0.5)) / state.image.width}%`;
    m.style.top = `${(100 * (h.y + 0.5)) / state.image.height}%`;
    m.style.background = h.color;
    m.title = `hint ${i + 1} at ${h.x}, ${h.y}: ${h.color}`;
    m.dataset.index = String(i);
    m.addEventListener("pointerdown", (e) => dragHint(e, i));
    m.addEventListener("contextmenu", (e) => { e.preventDefault(); removeHint(i); });
    layer.append(m);

    const item = document.createElement("li");
    const picker = document.createElement("input");
    picker.type = "color";
    picker.value = h.color;
    picker.className = "hint-colour";
    picker.addEventListener("change", () => { h.color = picker.value; renderHints(); requestPreview(); });
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "×";
    remove.title = "remove this hint";
    remove.className = "remove-hint";
    remove.addEventListener("click", () => removeHint(i));
    item.append(picker, ` x ${h.x}, y ${h.y} `, remove);
    list.append(item);
  });
}

function removeHint(i) {
  state.hints.splice(i, 1);
  renderHints();
  requestPreview();
}

function dragHint(event, i) {
  event.preventDefault();
  event.stopPropagation();
  const marker = event.currentTarget;
  marker.setPointerCapture(event.pointerId);
  let moved = false;
  const move = (e) => {
    const p = imagePoint(e);
    moved = true;
    state.hints[i].x = p.x;
    state.hints[i].y = p.y;
    marker.style.left = `${(100 * (p.x + 0.5)) / state.image.width}%`;
    marker.style.top = `${(100 * (p.y + 0.5)) / state.image.height}%`;
  };
  const up = () => {
    marker.removeEventListener("pointermove", move);
    marker.removeEventListener("pointerup", up);
    if (moved) { renderHints(); requestPreview(); }
  };
  marker.addEventListener("pointermove", move);
  marker.addEventListener("pointerup", up);
}

function addHint(event) {
  if (!state.image || state.mode !== "colorize" || !state.config.colorize.takes_hints) return;
  if (event.target.classList.contains("marker") || event.button !== 0) return;
  const p = imagePoint(event);
  state.hints.push({x: p.x, y: p.y, color: $("colour").value, radius: 1});
  renderHints();
  requestPreview();
}

async function setReference(file) {
  if (!file || !state.image) return;
  showError("");
  const form = decodeFields(new FormData());
  form.append("file", file, file.name);
  try {
    const r = await (await api(`/api/s/${state.image.session}/reference`, {method: "POST", body: form})).json();
    $("ref-info").textContent = `reference: ${r.reference}`;
    $("clear-ref").hidden = false;
    requestPreview();
  } catch (e) {
    showError(e.message);
  }
  $("reference").value = "";
}

async function clearReference() {
  try {
    await api(`/api/s/${state.image.session}/reference`, {method: "DELETE"});
    $("ref-info").textContent = "";
    $("clear-ref").hidden = true;
    requestPreview();
  } catch (e) { showError(e.message); }
}

async function startJob(kind) {
  if (!state.image) return;
  showError("");
  $("job").hidden = false;
  $("download").hidden = true;
  $("download").removeAttribute("href");
  try {
    const body = {kind, hints: state.hints, strength: state.strength};
    let job = await (await postJSON(`/api/s/${state.image.session}/jobs`, body)).json();
    state.job = job.job;
    while (job.state === "queued" || job.state === "running") {
      $("job-progress").max = Math.max(1, job.total);
      $("job-progress").value = job.done;
      $("job-text").textContent = `${kind} at full resolution: ${job.state}, tile ${job.done} of ${job.total}`;
      await new Promise((resolve) => setTimeout(resolve, 300));
      if (state.job !== job.job) return;
      job = await (await api(`/api/jobs/${job.job}`)).json();
    }
    if (job.state === "error") throw new Error(job.error);
    $("job-progress").value = $("job-progress").max;
    $("job-text").textContent = `${job.width}×${job.height}, ${job.bit_depth}-bit PNG`;
    const link = $("download");
    link.href = job.download;
    link.download = "";
    link.textContent = `Download ${kind === "colorize" ? "the colour image" : "the 4x image"}`;
    link.hidden = false;
    link.dataset.kind = kind;
    if (kind === "upscale") {
      setImage("after", await (await api(job.download)).blob());
      status("4x result: drag the before/after slider to compare with the input");
    }
  } catch (e) {
    showError(e.message);
    $("job").hidden = true;
  }
}

function setCompare() {
  const v = Number($("compare").value);
  $("before").style.clipPath = `inset(0 ${100 - v}% 0 0)`;
}

function wire() {
  $("file").addEventListener("change", () => openUpload($("file").files[0]));
  $("open-path").addEventListener("click", openPath);
  for (const [zone, handler] of [[$("drop"), openUpload], [$("ref-drop"), setReference]]) {
    zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      handler(e.dataTransfer.files[0]);
    });
  }
  $("reference").addEventListener("change", () => setReference($("reference").files[0]));
  $("clear-ref").addEventListener("click", clearReference);
  $("stage").addEventListener("click", addHint);
  $("clear-hints").addEventListener("click", () => { state.hints = []; renderHints(); requestPreview(); });
  $("strength").addEventListener("input", () => {
    state.strength = Number($("strength").value);
    $("strength-value").textContent = state.strength.toFixed(2);
  });
  $("strength").addEventListener("change", requestPreview);
  $("compare").addEventListener("input", setCompare);
  $("download-colour").addEventListener("click", () => startJob("colorize"));
  $("run-upscale").addEventListener("click", () => startJob("upscale"));
  $("mode-colorize").addEventListener("click", () => { state.mode = "colorize"; showMode(); });
  $("mode-upscale").addEventListener("click", () => { state.mode = "upscale"; showMode(); });
  setCompare();
}

window.addEventListener("DOMContentLoaded", () => {
  wire();
  init().catch((e) => showError(e.message));
});
