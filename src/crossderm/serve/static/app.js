// crossderm serve: upload one image (with patient metadata for a model that uses it), show class probabilities,
// the Grad-CAM overlay, the out-of-distribution scores and the model's provenance.
// Plain DOM code, no libraries and no network access beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
let model = null;

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function percent(p) {
  return (100 * p).toFixed(1) + " %";
}

function withCi(entry) {
  if (!entry || entry.value === null || entry.value === undefined) return "n/a";
  const value = entry.value.toFixed(3);
  if (entry.ci_low === null || entry.ci_high === null) return value;
  return `${value} [${entry.ci_low.toFixed(3)}, ${entry.ci_high.toFixed(3)}]`;
}

function setStatus(text, kind) {
  const status = $("status");
  status.textContent = text;
  status.className = kind;
}

function showProvenance(info) {
  const rows = [
    ["experiment", info.experiment ?? "unknown"],
    ["run folder", info.run],
    ["model", info.model],
    ["parameters", info.parameters ? `${(info.parameters / 1e6).toFixed(2)} M` : "unknown"],
    ["folds", `${info.folds.length} (${info.folds.join(", ")}), probabilities averaged`],
    ["input", `${info.image_size} x ${info.image_size} px, ${info.tta_views} flip view(s)`],
    ["patient metadata", info.metadata?.used ? `used (${info.metadata.fields.join(", ")})` : "not used"],
    ["Grad-CAM layers", `${info.gradcam.layers.join(", ")} (mean over ${info.gradcam.folds_averaged} folds)`],
    ["trained with", `crossderm ${info.trained_with.crossderm ?? "?"}, torch ${info.trained_with.torch ?? "?"}`],
  ];
  const list = $("provenance");
  list.replaceChildren();
  for (const [key, value] of rows) list.append(element("dt", key), element("dd", String(value)));

  const body = $("metrics").tBodies[0];
  body.replaceChildren();
  const sources = Object.entries(info.metrics ?? {});
  for (const [pair, gap] of Object.entries(info.gaps ?? {})) sources.push([`gap (${pair})`, { n: "", ...gap }]);
  if (!sources.length) {
    const cell = element("td", "metrics.json not found in the run folder (folds not pooled yet)");
    cell.colSpan = 5;
    const row = element("tr");
    row.append(cell);
    body.append(row);
  }
  for (const [name, m] of sources) {
    const row = element("tr");
    row.append(element("td", name), element("td", String(m.n ?? "")));
    for (const key of ["macro_f1", "accuracy", "balanced_accuracy"]) row.append(element("td", withCi(m[key])));
    body.append(row);
  }
  showMetadataInputs(info.metadata);
  $("limits-hint").textContent =
    `JPEG, PNG, TIFF, BMP or WebP; up to ${(info.limits.max_upload_bytes / 2 ** 20).toFixed(0)} MiB, ` +
    `${(info.limits.max_pixels / 1e6).toFixed(0)} megapixels and an aspect ratio of ${info.limits.max_aspect}:1`;
}

function showMetadataInputs(metadata) {
  if (!metadata?.used) return;
  const vocabulary = metadata.vocabulary;
  const age = $("age");
  age.min = String(vocabulary.age.min);
  age.max = String(vocabulary.age.max);
  for (const [id, values] of [["sex", vocabulary.sex], ["anatom-site", vocabulary.anatom_site]]) {
    const select = $(id);
    for (const value of values) {
      const option = element("option", value);
      option.value = value;
      select.append(option);
    }
  }
  $("metadata").hidden = false;
}

function score(value) {
  return value === null || value === undefined ? "n/a" : value.toFixed(2);
}

function showOod(ood) {
  const notice = $("ood-notice");
  notice.hidden = !ood?.unlike_training;
  notice.textContent = ood?.unlike_training
    ? `This image looks unlike the training data (Mahalanobis score ${score(ood.ood_mahalanobis)}, 1.0 = the ` +
      "95th percentile of validation images): treat the prediction with extra caution."
    : "";
  $("ood-scores").textContent = ood
    ? `Out-of-distribution scores (higher = less like the training data): Mahalanobis ` +
      `${score(ood.ood_mahalanobis)} (1.0 = the 95th percentile of validation images), energy ` +
      `${score(ood.ood_energy)}, 1 - top probability ${score(ood.ood_msp)}.`
    : "";
}

function showResult(data, fileName) {
  const chart = $("chart");
  chart.replaceChildren();
  const names = Object.fromEntries((model?.classes ?? []).map((cls) => [cls.id, cls.name]));
  for (const [id, p] of Object.entries(data.probabilities)) {
    const bar = element("div", undefined, id === data.predicted ? "bar top" : "bar");
    bar.setAttribute("role", "listitem");
    bar.dataset.class = id;
    bar.dataset.probability = String(p);
    const label = element("span", id, "label");
    label.append(element("small", names[id] ?? ""));
    const track = element("span", undefined, "track");
    const fill = element("span", undefined, "fill");
    fill.style.width = `${(100 * p).toFixed(2)}%`;
    track.append(fill);
    bar.append(label, track, element("span", percent(p), "value"));
    chart.append(bar);
  }
  $("overlay").src = data.gradcam_png;
  $("overlay-caption").textContent =
    `Grad-CAM for "${data.gradcam_class}": red regions raised this class's score most`;
  $("predicted").textContent =
    `Most probable class: ${data.predicted} (${data.predicted_name}), ${percent(data.probabilities[data.predicted])}`;
  showOod(data.ood);
  $("result").hidden = false;
  setStatus(`${fileName}: ${data.image.width} x ${data.image.height} ${data.image.format}, ${data.elapsed_ms} ms`, "done");
}

async function predict(file) {
  if (!file) return;
  if (model && file.size > model.limits.max_upload_bytes) {
    setStatus(`${file.name} is ${(file.size / 2 ** 20).toFixed(1)} MiB; the limit is ` +
      `${(model.limits.max_upload_bytes / 2 ** 20).toFixed(0)} MiB`, "error");
    return;
  }
  if (model?.metadata?.used && $("age").validity.badInput) {
    setStatus(`${file.name}: the age is not a number of years`, "error");
    return;
  }
  setStatus(`Predicting ${file.name} ...`, "busy");
  const body = new FormData();
  body.append("file", file, file.name);
  if (model?.metadata?.used) {
    body.append("age", $("age").value.trim());
    body.append("sex", $("sex").value);
    body.append("anatom_site", $("anatom-site").value);
    body.append("impute_metadata", $("impute-metadata").checked ? "true" : "false");
  }
  let response;
  let data;
  try {
    response = await fetch("/api/predict", { method: "POST", body });
  } catch (error) {
    setStatus(`No answer from the server (${error.message})`, "error");
    return;
  }
  try {
    data = await response.json();
  } catch (error) {
    data = {}; // not JSON (e.g. a proxy's error page): the status line below says what happened
  }
  if (!response.ok) {
    setStatus(`${file.name}: ${data.error ?? `HTTP ${response.status}`}`, "error");
    return;
  }
  showResult(data, file.name);
}

function setUp() {
  const input = $("file");
  const zone = $("dropzone");
  input.addEventListener("change", () => {
    predict(input.files[0]);
    input.value = "";
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    predict(event.dataTransfer.files[0]);
  });
  fetch("/api/model")
    .then((response) => response.json())
    .then((info) => {
      model = info;
      showProvenance(info);
      document.body.dataset.ready = "true";
    })
    .catch((error) => setStatus(`Cannot load the model description (${error.message})`, "error"));
}

setUp();
