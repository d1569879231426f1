// The smear page: sends images to the server, shows its answers. No library, nothing from the network
// but this server.
"use strict";

const CLASSES = ["Benign", "Early", "Pre", "Pro"];
const $ = (selector, root = document) => root.querySelector(selector);

function setStatus(text) { $("#status").textContent = text; }

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text) node.textContent = text;
  return node;
}

const percent = (p) => `${(100 * p).toFixed(1)}%`;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// POST that waits and retries while the server answers 503 "busy, retry".
async function postWithRetry(url, body, onBusy) {
  for (let attempt = 1; ; attempt++) {
    const response = await fetch(url, { method: "POST", body });
    if (response.status !== 503 || attempt >= 60) return response;
    const wait = 1000 * Number(response.headers.get("Retry-After") || 1);
    onBusy(attempt);
    await sleep(wait);
  }
}

async function errorMessage(response) {
  try { const body = await response.json(); return body.message || body.error || response.statusText; }
  catch { return `${response.status} ${response.statusText}`; }
}

// --- single images -------------------------------------------------------------------------------

function renderAnswer(card, answer) {
  if (answer.status !== "ok") {
    const error = $(".error", card);
    error.hidden = false;
    error.textContent = `Not scored: ${answer.reason}. ${answer.message || ""}` + (answer.detail ? ` (${answer.detail})` : "");
    card.dataset.status = "quarantined";
    return;
  }
  card.dataset.status = "ok";
  card.dataset.predicted = answer.predicted;
  $(".answer", card).hidden = false;
  $(".stage", card).innerHTML = "";
  $(".stage", card).append("Stage: ", element("strong", { class: "predicted" }, answer.predicted),
    ` (${percent(answer.probabilities[answer.predicted])})`);
  const detection = answer.detection;
  $(".detection", card).textContent = `Detection: ${detection.answer} (probability of ` +
    `${detection.positive}: ${percent(detection.malignant_probability)})`;
  const bars = $(".bars", card);
  for (const label of CLASSES) {
    const p = answer.probabilities[label];
    const bar = element("div", { class: label === answer.predicted ? "bar top" : "bar", "data-class": label, "data-probability": String(p) });
    const track = element("div", { class: "track" });
    const fill = element("div", { class: "fill" });
    fill.style.width = `${(100 * p).toFixed(2)}%`;
    track.append(fill);
    bar.append(element("span", { class: "label" }, label), track, element("span", { class: "value" }, percent(p)));
    bars.append(bar);
  }
  const colour = $(".colour", card);
  colour.textContent = answer.colour.message;
  if (answer.colour.available && !answer.colour.within) colour.classList.add("warning");
  $(".picture-image", card).src = answer.pictures.image;
  $(".picture-gradcam", card).src = answer.pictures.gradcam;
  $(".picture-mask", card).src = answer.pictures.blast_mask;
  $(".mask-caption", card).textContent = answer.blast_mask_message;
}

async function scoreImages(files) {
  const results = $("#results");
  let done = 0;
  for (const file of files) {
    const card = $("#result-template").content.firstElementChild.cloneNode(true);
    $(".name", card).textContent = file.name;
    card.dataset.status = "pending";
    results.prepend(card);
    setStatus(`Scoring ${file.name} (${done + 1} of ${files.length})...`);
    const body = new FormData();
    body.append("image", file, file.name);
    try {
      const response = await postWithRetry("/api/score", body,
        (attempt) => setStatus(`Server busy: retrying ${file.name} (attempt ${attempt + 1})...`));
      if (!response.ok) throw new Error(await errorMessage(response));
      renderAnswer(card, await response.json());
    } catch (error) {
      const box = $(".error", card);
      box.hidden = false;
      box.textContent = `Not scored: ${error.message}`;
      card.dataset.status = "error";
    }
    done++;
  }
  setStatus(`Scored ${done} image${done === 1 ? "" : "s"}.`);
}

// --- batches: a folder or a zip ------------------------------------------------------------------

function renderSummary(summary) {
  const box = $("#batch-summary");
  box.innerHTML = "";
  const counts = CLASSES.map((label) => `${label} ${summary.predicted[label]}`).join(", ");
  box.append(element("p", {}, `${summary.files} files: ${summary.scored} scored (${counts}), ${summary.quarantined} quarantined.`));
  if (summary.labelled) {
    const [low, high] = summary.accuracy_interval;
    box.append(element("p", { id: "batch-accuracy" },
      `Accuracy on the ${summary.labelled} images in class folders: ${percent(summary.accuracy)} ` +
      `(95% interval ${percent(low)} to ${percent(high)}); detection (benign against malignant) ${percent(summary.detection_accuracy)}.`));
    const table = element("table", { id: "confusion-matrix" });
    const head = element("tr");
    head.append(element("th", {}, "folder \\ predicted"), ...CLASSES.map((label) => element("th", {}, label)));
    table.append(head);
    summary.confusion_matrix.counts.forEach((row, i) => {
      const tr = element("tr");
      tr.append(element("th", {}, CLASSES[i]), ...row.map((count) => element("td", { class: "number" }, String(count))));
      table.append(tr);
    });
    box.append(table);
  }
}

function renderTable(rows) {
  const table = $("#batch-table");
  table.innerHTML = "";
  if (!rows.length) return;
  const columns = Object.keys(rows[0]);
  const head = element("tr");
  head.append(...columns.map((column) => element("th", {}, column)));
  table.append(head);
  for (const row of rows) {
    const tr = element("tr");
    for (const column of columns) {
      const value = row[column];
      const shown = typeof value === "number" ? value.toFixed(4) : (value ?? "");
      tr.append(element("td", typeof value === "number" ? { class: "number" } : {}, String(shown)));
    }
    table.append(tr);
  }
}

async function scoreBatch(body, what) {
  const section = $("#batch");
  section.hidden = false;
  $("#batch-csv").hidden = true;
  $("#batch-summary").innerHTML = "";
  $("#batch-table").innerHTML = "";
  $("#batch-state").textContent = `Uploading ${what}...`;
  section.dataset.state = "uploading";
  const response = await postWithRetry("/api/batches", body,
    (attempt) => { $("#batch-state").textContent = `Server busy: retrying (attempt ${attempt + 1})...`; });
  if (!response.ok) {
    $("#batch-state").textContent = `Not scored: ${await errorMessage(response)}`;
    section.dataset.state = "failed";
    return;
  }
  const { id } = await response.json();
  for (;;) {
    const status = await (await fetch(`/api/batches/${id}`)).json();
    const progress = $("#batch-progress");
    progress.max = Math.max(status.usable, 1);
    progress.value = status.scored;
    section.dataset.state = status.state;
    if (status.state === "failed") { $("#batch-state").textContent = `Failed: ${status.error}`; return; }
    if (status.state === "done") {
      $("#batch-state").textContent = `Done: ${status.files} files in ${status.seconds} s.`;
      progress.value = progress.max;
      renderSummary(status.summary);
      renderTable(status.rows);
      const link = $("#batch-csv");
      link.href = `/api/batches/${id}/predictions.csv`;
      link.setAttribute("download", `predictions-batch-${id}.csv`);
      link.hidden = false;
      return;
    }
    const states = {
      checking: "Checking the files...",
      waiting: `Waiting for the batch before it (${status.files} files checked)...`,
    };
    $("#batch-state").textContent = states[status.state]
      ?? `Scored ${status.scored} of ${status.usable} usable images (${status.files} files)...`;
    await sleep(400);
  }
}

function batchOfFiles(files) {
  const body = new FormData();
  for (const file of files) body.append("files", file, file.webkitRelativePath || file.relativePath || file.name);
  return body;
}

function zipBody(file) {
  const body = new FormData();
  body.append("files", file, file.name);
  return body;
}

// Dropped folders: walk them (the File System entries API) into files with their relative paths.
async function filesOfEntry(entry, prefix = "") {
  if (entry.isFile) {
    const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
    Object.defineProperty(file, "relativePath", { value: prefix + file.name });
    return [file];
  }
  const reader = entry.createReader();
  const children = [];
  for (;;) {
    const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
    if (!batch.length) break;
    children.push(...batch);
  }
  const nested = await Promise.all(children.map((child) => filesOfEntry(child, `${prefix}${entry.name}/`)));
  return nested.flat();
}

function isZip(file) { return /\.zip$/i.test(file.name); }

async function handleDrop(event) {
  event.preventDefault();
  $("#drop-zone").classList.remove("over");
  const entries = [...event.dataTransfer.items].map((item) => item.webkitGetAsEntry && item.webkitGetAsEntry()).filter(Boolean);
  if (entries.some((entry) => entry.isDirectory)) {
    const files = (await Promise.all(entries.map((entry) => filesOfEntry(entry)))).flat();
    return scoreBatch(batchOfFiles(files), `${files.length} files`);
  }
  const files = [...event.dataTransfer.files];
  if (files.length === 1 && isZip(files[0])) return scoreBatch(zipBody(files[0]), files[0].name);
  return scoreImages(files);
}

// --- the model's card ----------------------------------------------------------------------------

function renderCard(card) {
  const box = $("#model-card");
  box.innerHTML = "";
  if (card.synthetic) $("#synthetic-banner").hidden = false;
  const list = element("dl");
  const add = (term, value, link) => {
    if (value === undefined || value === null || value === "") return;
    list.append(element("dt", {}, term));
    const dd = element("dd");
    if (link) dd.append(element("a", { href: link, target: "_blank", rel: "noopener" }, String(value)));
    else dd.textContent = String(value);
    list.append(dd);
  };
  add("Model", card.registered_name ? `${card.registered_name} version ${card.version}` : card.model_uri);
  add("Model URI", card.model_uri);
  add("MLflow run", card.run_name ? `${card.run_name} (${card.run_id})` : card.run_id, card.mlflow_run_url);
  add("Trained on", card.dataset_root ? `${card.synthetic ? "synthetic smears" : "real smears"} from ${card.dataset_root}` : null);
  add("Manifest", card.manifest_sha256 ? card.manifest_sha256.slice(0, 12) : null);
  add("Input", `${card.preprocessing.input_mode} images at ${card.preprocessing.image_size} px` +
    (card.tta ? `, test-time augmentation ${card.tta}` : ""));
  if (card.test) {
    const [low, high] = card.test.interval || [null, null];
    const interval = low === null ? "" : ` (95% interval ${percent(low)} to ${percent(high)})`;
    add("Test accuracy", `${percent(card.test.accuracy)}${interval} on ${card.test.n} test images`);
    add("Test recall", Object.entries(card.test.recall || {}).map(([label, r]) => `${label} ${percent(r)}`).join(", "));
  }
  const audit = card.shortcut_audit;
  if (audit) {
    if (audit.colour_null_accuracy !== null && audit.colour_null_accuracy !== undefined) {
      add("Colour alone", `${percent(audit.colour_null_accuracy)}: a logistic regression on global colour statistics, no shapes, on the same test images`);
    }
    if (audit.stain_swap_accuracy !== null && audit.stain_swap_accuracy !== undefined) {
      add("Stain swap", `${percent(audit.stain_swap_accuracy)} when each smear is given another class's stain ` +
        `(${percent(audit.unchanged_accuracy)} unchanged; follows the donor's class ${percent(audit.stain_swap_follows_donor || 0)})`);
    }
    if (audit.gradcam_blast_mask_share !== null && audit.gradcam_blast_mask_share !== undefined) {
      add("Grad-CAM on cells", `${percent(audit.gradcam_blast_mask_share)} of the evidence lies on the blast mask, which covers ${percent(audit.blast_mask_area || 0)} of the image`);
    }
  }
  if (card.colour_range) {
    add("Colour range", `warns beyond distance ${card.colour_range.limit.toFixed(1)} (${Math.round(100 * card.colour_range.quantile)}% of the training images lie within, each measured out of fold)`);
  }
  box.append(list);
  if (card.model_card_md) {
    const details = element("details");
    details.append(element("summary", {}, "The run's full model card"), element("pre", {}, card.model_card_md));
    box.append(details);
  }
  box.append(element("p", { class: "disclaimer" }, card.disclaimer));
}

// --- wiring --------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", async () => {
  const zone = $("#drop-zone");
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", handleDrop);
  $("#image-input").addEventListener("change", (event) => { scoreImages([...event.target.files]); event.target.value = ""; });
  $("#folder-input").addEventListener("change", (event) => {
    const files = [...event.target.files];
    scoreBatch(batchOfFiles(files), `${files.length} files`);
    event.target.value = "";
  });
  $("#zip-input").addEventListener("change", (event) => {
    const [file] = event.target.files;
    if (file) scoreBatch(zipBody(file), file.name);
    event.target.value = "";
  });
  try {
    const response = await fetch("/api/model");
    renderCard(await response.json());
    document.body.dataset.ready = "true";
  } catch (error) {
    $("#model-card").textContent = `The model's card could not be read: ${error.message}`;
  }
});
