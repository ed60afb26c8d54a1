// simsearch web page: plain JS, no framework, every request goes to this server.
"use strict";

const $ = (id) => document.getElementById(id);
let lastQuery = null; // {blob, name}: re-run when k changes
// The server's limits, from /api/health (null until it has answered: the server checks anyway).
let maxUpload = null;
let maxK = null;
let originalUrl = null;
let inFlight = null; // AbortController of the running search: a newer one replaces it
let itemImages = true; // false: an index built from embeddings without the item images

function itemImageUrl(id) {
  return "api/items/" + id.split("/").map(encodeURIComponent).join("/") + "/image";
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error;
  } catch (_) { /* not JSON */ }
  return `${response.status} ${response.statusText}`;
}

function sizeText(bytes) {
  return bytes >= 1048576 ? `${+(bytes / 1048576).toFixed(1)} MiB` : `${bytes.toLocaleString("en")} bytes`;
}

function chosenK() {
  const k = Math.max(1, parseInt($("k").value, 10) || 10);
  return maxK ? Math.min(maxK, k) : k;
}

async function search(blob, name) {
  lastQuery = { blob, name };
  // Checked here, before sending: a browser sends the whole body before it reads the answer,
  // so an upload far over the limit could end in a reset connection instead of the server's 413.
  if (maxUpload !== null && blob.size > maxUpload) {
    if (inFlight) inFlight.abort();
    clearResults();
    showError(`${name}: ${sizeText(blob.size)} is over the ${sizeText(maxUpload)} upload limit`);
    return;
  }
  const k = chosenK();
  const form = new FormData();
  form.append("image", blob, name);
  if (inFlight) inFlight.abort();
  const controller = (inFlight = new AbortController());
  document.body.classList.add("busy");
  try {
    const response = await fetch(`api/search?k=${k}`, {
      method: "POST", body: form, signal: controller.signal,
    });
    const body = response.ok ? await response.json() : await errorText(response);
    if (controller !== inFlight) return; // a newer search has started
    if (!response.ok) {
      showError(body);
      clearResults();
      return;
    }
    showError("");
    render(body, blob);
  } catch (err) {
    if (err.name !== "AbortError") showError(`the server did not answer (${err.message})`);
  } finally {
    if (controller === inFlight) {
      inFlight = null;
      document.body.classList.remove("busy");
    }
  }
}

function clearResults() {
  $("results").replaceChildren();
  $("results-title").hidden = true;
  $("query").hidden = true;
}

function render(data, blob) {
  if (originalUrl) URL.revokeObjectURL(originalUrl);
  originalUrl = URL.createObjectURL(blob);
  $("original").src = originalUrl;
  $("seen").src = data.query_image;
  $("framing").textContent = data.query_framing === "as found" ? "" : data.query_framing;
  $("query-name").textContent = `${data.query} · ${data.took_ms} ms`;
  $("query").hidden = false;

  const cards = data.results.map((hit) => {
    const li = document.createElement("li");
    li.className = "hit";
    li.title = `${hit.id}\ndistance ${hit.distance.toFixed(4)}`;
    let img;
    if (itemImages) {
      img = document.createElement("img");
      img.className = "pixels";
      img.loading = "lazy";
      img.alt = hit.id;
      img.src = itemImageUrl(hit.id);
    } else {
      img = document.createElement("div");
      img.className = "pixels none";
      img.textContent = "no image";
    }
    const rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = `#${hit.rank}`;
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = hit.label_name ?? (hit.label ?? "–");
    const sim = document.createElement("span");
    sim.className = "sim";
    sim.textContent = hit.similarity.toFixed(3);
    li.append(img, rank, label, sim);
    return li;
  });
  $("results").replaceChildren(...cards);
  $("results-title").textContent = `Nearest neighbours (${data.results.length})`;
  $("results-title").hidden = false;
}

function fromFiles(files) {
  const file = files && files[0];
  if (file) search(file, file.name || "pasted image");
}

async function randomItem() {
  try {
    const response = await fetch("api/items/random");
    if (!response.ok) return showError(await errorText(response));
    const item = await response.json();
    const image = await fetch(itemImageUrl(item.id));
    if (!image.ok) return showError(await errorText(image));
    await search(await image.blob(), item.id);
  } catch (err) {
    showError(`the server did not answer (${err.message})`);
  }
}

function init() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => { fromFiles(e.target.files); e.target.value = ""; });
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); }
  });
  ["dragenter", "dragover"].forEach((type) => drop.addEventListener(type, (e) => {
    e.preventDefault();
    drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((type) => drop.addEventListener(type, () => {
    drop.classList.remove("over");
  }));
  drop.addEventListener("drop", (e) => { e.preventDefault(); fromFiles(e.dataTransfer.files); });
  // Dropping outside the zone must not navigate away from the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  document.addEventListener("paste", (e) => {
    const files = [...(e.clipboardData?.items || [])]
      .filter((item) => item.kind === "file" && item.type.startsWith("image/"))
      .map((item) => item.getAsFile());
    if (files.length) fromFiles(files);
    else if (e.target.tagName !== "INPUT") showError("the clipboard holds no image");
  });
  $("random").addEventListener("click", randomItem);
  $("k").addEventListener("change", () => {
    if (lastQuery) search(lastQuery.blob, lastQuery.name);
  });

  fetch("api/health")
    .then((r) => r.json())
    .then((h) => {
      maxUpload = h.max_upload_bytes ?? null;
      maxK = h.max_k ?? null;
      if (maxK) $("k").max = maxK;
      itemImages = h.item_images !== false;
      $("status").textContent =
        `${h.count.toLocaleString("en")} catalog items · ${h.model || "?"} model, ${h.dim}-d` +
        (itemImages ? "" : " · no item images");
      if (!itemImages) {
        $("random").disabled = true;
        $("random").title = "this index has no item images (built from embeddings without them)";
      }
    })
    .catch(() => { $("status").textContent = "server not reachable"; });
}

init();
