// hemaseg serve: upload photos one at a time, show the analysis, correct WBC types. No build step.
"use strict";
// a probability shown with two decimals, rounded down (as the report): one under a threshold never reads as it
const down2 = (p) => (Math.floor(Math.round(p * 1e4) / 100 + 1e-6) / 100).toFixed(2);
const sid = document.body.dataset.sid;
const api = (path) => `/api/s/${sid}/${path}`;
const maxBytes = parseFloat(document.body.dataset.maxUploadMb) * 1024 * 1024;
const $ = (sel) => document.querySelector(sel);
let state = null;
let queue = [];
let busy = false;
let done = 0;

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k.startsWith("data-")) e.setAttribute(k, v); else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function message(text, kind) {
  $("#messages").append(el("li", {class: kind}, text));
}

function setProgress(text, fraction) {
  $("#progress-box").hidden = false;
  $("#progress-text").textContent = text;
  $("#progress").value = fraction;
}

function enqueue(files) {
  for (const f of files) queue.push(f);
  if (!busy) next();
}

function next() {
  const total = done + queue.length;
  if (!queue.length) {
    busy = false;
    setProgress(`done: ${done} photo(s) processed`, 1);
    return;
  }
  busy = true;
  const file = queue.shift();
  const n = done + 1;
  if (file.size > maxBytes) {
    message(`${file.name}: file too large: the limit is ${document.body.dataset.maxUploadMb} MB per photo`, "error");
    done++; next(); return;
  }
  const form = new FormData();
  form.append("image", file, file.name);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", api("images") + `?name=${encodeURIComponent(file.name)}`);  // named if refused as too large
  xhr.responseType = "json";
  xhr.upload.onprogress = (ev) => {
    if (ev.lengthComputable) setProgress(`uploading ${file.name} (${n} of ${total})`, (done + 0.3 * ev.loaded / ev.total) / total);
  };
  xhr.upload.onload = () => setProgress(`analysing ${file.name} (${n} of ${total})…`, (done + 0.3) / total);
  xhr.onload = () => {
    done++;
    if (xhr.status === 200 && xhr.response) {
      render(xhr.response);
      message(`${file.name}: analysed`, "ok");
      for (const note of xhr.response.notes || []) message(note, "note");
    } else {
      const why = xhr.response && xhr.response.error ? xhr.response.error : `${file.name}: failed (HTTP ${xhr.status})`;
      message(why, "error");
    }
    next();
  };
  xhr.onerror = () => {
    done++;
    message(`${file.name}: upload failed (connection closed; is the file over ${document.body.dataset.maxUploadMb} MB, or the server stopped?)`, "error");
    next();
  };
  setProgress(`uploading ${file.name} (${n} of ${total})`, done / total);
  xhr.send(form);
}

function cell(text, attrs = {}) { return el("td", attrs, text); }

function render(s) {
  if (state && s.revision < state.revision) return;  // an answer older than the one shown
  state = s;
  $("#results").hidden = s.images.length === 0;
  const t = s.totals;
  const body = $("#totals tbody");
  body.replaceChildren();
  for (const im of s.images) {
    body.append(el("tr", {}, cell(im.filename), cell(im.counts.rbc), cell(im.counts.wbc), cell(im.counts.platelet), cell(im.unsure)));
  }
  body.append(el("tr", {class: "total"}, cell("all photos"), cell(t.rbc, {id: "count-rbc"}), cell(t.wbc, {id: "count-wbc"}),
                 cell(t.platelet, {id: "count-platelet"}), cell(s.untyped, {id: "count-unsure"})));

  $("#diff-note").textContent = `Rests on ${s.n_differential} typed white cell(s) of ${t.wbc} found` +
    (s.untyped ? `; ${s.untyped} of unsure type are counted in no type until you type them` : "") +
    (s.beside.length ? `; not leukocytes, outside it: ${s.beside.map((b) => `${b.type} ${b.count}`).join(", ")}` : "") + ".";
  const warn = $("#diff-warning");
  warn.hidden = s.n_differential >= s.min_differential;
  warn.textContent = `This differential rests on ${s.n_differential} white cell(s), fewer than the ${s.min_differential} ` +
    "of a manual differential: each percentage is uncertain by the width of its 95 % interval.";
  const diff = $("#differential tbody");
  diff.replaceChildren();
  for (const d of s.differential) {
    const has = s.n_differential > 0;
    diff.append(el("tr", {"data-type": d.type}, cell(d.type), cell(d.count, {class: "count"}),
                   cell(has ? d.pct.toFixed(1) : "-", {class: "pct"}),
                   cell(has ? `${d.lo.toFixed(1)} – ${d.hi.toFixed(1)}` : "-", {class: "ci"})));
  }
  $("#models").textContent = Object.entries(s.models).map(([role, label]) => `${role} model: ${label}`).join("; ") +
    (s.images.length ? `; hemaseg ${s.version}` : "");
  for (const a of document.querySelectorAll("#downloads a")) {
    a.href = api(`download/${a.dataset.name}`) + `?r=${s.revision}`;
  }

  const gallery = $("#gallery");
  gallery.replaceChildren();
  for (const g of s.gallery) {
    // unsure for another reason than a low probability (a grey photo, a platelet call too big for one): that reason
    const label = g.corrected_from ? `${g.class_name} (was ${g.corrected_from})` :
      g.unsure && g.reason && !g.reason.includes(", under ") ? `unsure: ${g.reason}` :
      `${g.unsure ? "unsure: " + g.probs.map((p) => p[0]).slice(0, 2).join("/") : g.class_name} ${down2(g.confidence)}`;
    const fig = el("figure", {class: "thumb" + (g.unsure ? " unsure" : "") + (g.corrected_from ? " corrected" : ""),
                              tabIndex: 0, title: `${g.filename}${g.reason ? " (" + g.reason + ")" : ""}: click to change the type`,
                              "data-image": g.image, "data-cell": g.cell, "data-type": g.class_name},
                   el("img", {src: api(`thumb/${g.image}/${g.cell}.png`), alt: g.class_name}), el("figcaption", {}, label));
    fig.addEventListener("click", () => openCorrection(g));
    fig.addEventListener("keydown", (ev) => { if (ev.key === "Enter") openCorrection(g); });
    gallery.append(fig);
  }
  if (!s.gallery.length) gallery.append(el("p", {class: "hint"}, "No white cell found."));

  const ovs = $("#overlays");
  for (const f of ovs.querySelectorAll("figure")) f.remove();
  for (const im of s.images) {
    ovs.append(el("figure", {class: "overlay"},
                  el("figcaption", {}, `${im.filename}: ${im.width}×${im.height} px, red-cell diameter ${im.cell_diameter} px; ` +
                                       `RBC ${im.counts.rbc}, WBC ${im.counts.wbc}, platelets ${im.counts.platelet}`),
                  el("img", {src: api(`overlay/${im.index}.png`) + `?r=${s.revision}`, alt: `overlay of ${im.filename}`})));
  }
}

function openCorrection(g) {
  const dlg = $("#correct");
  $("#correct-img").src = api(`thumb/${g.image}/${g.cell}.png`);
  $("#correct-info").textContent = `${g.filename}, cell ${g.cell}. Classifier: ` +
    g.probs.map((p) => `${p[0]} ${down2(p[1])}`).join(", ") + (g.corrected_from ? `; you changed it from ${g.corrected_from}` : "");
  const box = $("#choices");
  box.replaceChildren();
  for (const c of g.choices) {
    const b = el("button", {type: "button", class: "choice" + (c === g.class_name ? " current" : ""), "data-type": c},
                 c === "wbc" ? "unsure (no type)" : c);
    b.addEventListener("click", () => correct(g, c));
    box.append(b);
  }
  dlg.showModal();
}

async function correct(g, type) {
  $("#correct").close();
  try {
    const r = await fetch(api(`cells/${g.image}/${g.cell}`), {method: "POST", headers: {"Content-Type": "application/json"},
                                                               body: JSON.stringify({type})});
    const body = await r.json();
    if (!r.ok) { message(body.error || `correction failed (HTTP ${r.status})`, "error"); return; }
    render(body);
    message(`${g.filename}: cell ${g.cell} is now ${type === "wbc" ? "of unsure type" : type}`, "ok");
  } catch (e) {
    message(`correction failed: ${e}`, "error");
  }
}

const drop = $("#drop");
drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (ev) => { ev.preventDefault(); drop.classList.remove("over"); enqueue(ev.dataTransfer.files); });
$("#files").addEventListener("change", (ev) => { enqueue(ev.target.files); ev.target.value = ""; });

// A reload shows what the session holds: its results, and the photos that failed (said once, as at upload).
fetch(api("state")).then((r) => r.json()).then((s) => {
  if (s.images) render(s);
  for (const f of s.failed || []) message(`${f.filename}: ${f.reason}`, "error");
  for (const im of s.images || []) for (const note of im.notes || []) message(note, "note");
});
