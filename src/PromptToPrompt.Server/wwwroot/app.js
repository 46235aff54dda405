// The editor page. It talks to the JSON API only (see README, "p2p serve"); every edit is a spec as p2p edit --spec takes.
"use strict";
const $ = id => document.getElementById(id);
const state = { jobs: {}, info: null, source: null, photo: null, current: null, words: {}, diff: null, viewed: null };

async function api(method, url, body) {
  const init = { method, headers: {} };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
  const response = await fetch(url, init);
  const json = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(json.error || `${response.status} ${response.statusText}`);
  return json;
}

function showError(message) { $("error").textContent = message || ""; }

function sampling() {
  const o = { steps: +$("steps").value, guidance_scale: +$("guidance").value, scheduler: $("scheduler").value };
  if ($("seed").value !== "") o.seed = +$("seed").value;
  if ($("negative").value) o.negative_prompt = $("negative").value;
  if ($("width").value) o.width = +$("width").value;
  if ($("height").value) o.height = +$("height").value;
  return o;
}

// The spec of the edit the controls describe: a word swap or refinement, re-weighting on top, local blend.
function editSpec() {
  const source = state.source ? state.source.prompt : $("prompt").value.trim();
  const target = $("target").value.trim();
  const implied = state.diff ? state.diff.edit : "refine";
  // cross_replace_steps, with the per-word windows the word rows give (the reference's {"default_": ..., word: ...}).
  const perWord = Object.entries(state.words).filter(([k, w]) => k.startsWith("t:") && w.cross !== undefined && w.cross !== "");
  const cross = perWord.length ? Object.fromEntries([["default_", +$("cross").value], ...perWord.map(([k, w]) => [k.slice(2), +w.cross])]) : +$("cross").value;
  const window = { cross_replace_steps: cross, self_replace_steps: +$("self").value };
  const extra = $("targets").value.split("\n").map(t => t.trim()).filter(t => t);
  const spec = { prompts: [source, target, ...extra], variant: $("variant").value };
  const reweights = Object.entries(state.words).filter(([k, w]) => k.startsWith("t:") && w.weight !== 1);
  if (reweights.length) {
    spec.edit = "reweight";
    if (source !== target) spec.base = { edit: implied, ...window };
    else Object.assign(spec, window);
    spec.equalizer = { words: reweights.map(([k]) => k.slice(2)), values: reweights.map(([, w]) => w.weight) };
  } else Object.assign(spec, { edit: implied }, window);
  const blendOf = side => Object.entries(state.words).filter(([k, w]) => k.startsWith(side) && w.blend).map(([k]) => k.slice(2));
  const blendSource = blendOf("s:"), blendTarget = blendOf("t:");
  if (blendSource.length || blendTarget.length) {
    // Each further target blends the target's words it has, else the source's.
    const of = prompt => { const own = blendTarget.filter(w => prompt.split(" ").includes(w)); return own.length ? own : blendSource; };
    spec.local_blend = { words: [blendSource, ...spec.prompts.slice(1).map(of)], threshold: +$("threshold").value };
  }
  if (state.photo) return { ...spec, photo: state.photo.id };
  return Object.assign(spec, state.source ? state.source.sampling : sampling());
}

async function run(kind, body) {
  showError("");
  try {
    const { job } = await api("POST", `/api/${kind}`, body);
    state.current = job;
    $("cancel").disabled = false;
    // A short job can finish before its id comes back: its events were kept, so show where it is now.
    if (state.jobs[job]) follow(state.jobs[job]);
  } catch (e) { showError(e.message); }
}

$("generate").onclick = () => {
  const s = sampling();
  state.photo = null;
  state.source = { prompt: $("prompt").value.trim(), sampling: s };
  if (!$("target").value.trim()) $("target").value = state.source.prompt;
  run("generate", { prompt: state.source.prompt, ...s });
};
$("edit").onclick = () => run("edit", editSpec());
$("selfComponents").onclick = () => state.viewed && run("attention", { job: state.viewed.id, self_components: 6, res: +$("grid").value });

// A sweep: the edit above with one target, over one or two parameters (the p2p sweep grid).
const axisNames = ["", "cross_replace", "self_replace", "reweight", "blend_threshold"];
for (const select of document.querySelectorAll("select.axis"))
  for (const name of axisNames) { const o = document.createElement("option"); o.value = name; o.textContent = name || "(none)"; select.append(o); }
$("sweepCols").value = "cross_replace";
$("sweep").onclick = () => {
  const spec = editSpec();
  spec.prompts = spec.prompts.slice(0, 2);
  if (spec.local_blend) spec.local_blend.words = spec.local_blend.words.slice(0, 2);
  const axis = (name, values) => ({ parameter: name, values: values.split(",").map(Number), ...(name === "reweight" ? { word: $("sweepWord").value.trim() } : {}) });
  spec.axes = [];
  if ($("sweepRows").value) spec.axes.push(axis($("sweepRows").value, $("sweepRowValues").value));
  if ($("sweepCols").value) spec.axes.push(axis($("sweepCols").value, $("sweepColValues").value));
  run("sweep", spec);
};
$("cancel").onclick = () => state.current && api("DELETE", `/api/jobs/${state.current}`).catch(e => showError(e.message));
$("dice").onclick = () => { $("seed").value = Math.floor(Math.random() * 2 ** 32); };
for (const [input, out] of [["cross", "crossValue"], ["self", "selfValue"]]) $(input).oninput = () => { $(out).value = $(input).value; };
$("step").oninput = () => { $("stepValue").value = +$("step").value < 0 ? "all" : $("step").value; };

// Word diff while typing: what the target changes and which edit that is; per-word re-weight and blend controls.
let diffTimer = null;
$("target").oninput = () => { clearTimeout(diffTimer); diffTimer = setTimeout(updateDiff, 150); };
async function updateDiff() {
  const source = state.source ? state.source.prompt : $("prompt").value.trim();
  const target = $("target").value.trim();
  if (!source || !target) return;
  try {
    state.diff = await api("POST", "/api/diff", { source, target });
  } catch (e) { showError(e.message); return; }
  const d = state.diff;
  $("diff").innerHTML = "";
  const line = document.createElement("div");
  for (const w of d.words) {
    const span = document.createElement("span");
    span.textContent = w.word + " ";
    span.className = `word ${w.change}`;
    line.append(span);
  }
  for (const r of d.removed) { const s = document.createElement("del"); s.textContent = r + " "; line.append(s); }
  const note = document.createElement("div");
  note.className = "note";
  note.textContent = d.note;
  $("diff").append(line, note);
  renderWords(source, target);
}

function renderWords(source, target) {
  const box = $("words");
  box.innerHTML = "";
  const rows = [...new Set(target.split(" "))].map(w => ["t:" + w, w, "target"])
    .concat([...new Set(source.split(" "))].filter(w => !target.split(" ").includes(w)).map(w => ["s:" + w, w, "source"]));
  for (const w of source.split(" ")) if (target.split(" ").includes(w)) state.words["s:" + w] ??= { weight: 1, blend: false };
  for (const [key, word, side] of rows) {
    const w = state.words[key] ??= { weight: 1, blend: false };
    const row = document.createElement("div");
    row.className = "wordrow";
    row.innerHTML = `<span class="w ${side}"></span>` +
      (side === "target" ? `<input type="range" min="-2" max="5" step="0.5" class="weight" title="re-weight"> <output></output>` : `<span class="spacer"></span>`) +
      `<label class="blend"><input type="checkbox"> blend</label>` +
      (side === "target" ? `<input type="number" class="window" min="0" max="1" step="0.05" placeholder="cross" title="this word's cross_replace_steps (empty: the global one)">` : "");
    row.querySelector(".w").textContent = word;
    const slider = row.querySelector(".weight"), out = row.querySelector("output"), box2 = row.querySelector("input[type=checkbox]");
    if (slider) { slider.value = w.weight; out.value = w.weight; slider.oninput = () => { w.weight = +slider.value; out.value = slider.value; }; }
    box2.checked = w.blend;
    const windowInput = row.querySelector(".window");
    if (windowInput) { windowInput.value = w.cross ?? ""; windowInput.oninput = () => { w.cross = windowInput.value; }; }
    box2.onchange = () => {
      w.blend = box2.checked;
      // A blend word of the target that the source also has blends on both sides.
      if (side === "target" && source.split(" ").includes(word)) state.words["s:" + word].blend = box2.checked;
    };
    box.append(row);
  }
}

// Results: images side by side, each with its prompt's tokens; hovering a token overlays its attention.
function showResult(job) {
  const box = $("images");
  box.innerHTML = "";
  const prompts = job.details && job.details.prompts ? job.details.prompts : null;
  for (let i = 0; i < job.images.length; i++) {
    // A sweep shows its grid; the other jobs their images (their grid is for download).
    if ((job.labels[i] === "grid") !== (job.kind === "sweep")) continue;
    const figure = document.createElement("figure");
    if (job.kind === "sweep" || job.kind === "attention") figure.className = "grid";
    const img = document.createElement("img");
    img.src = job.images[i];
    img.alt = job.labels[i];
    img.dataset.src = job.images[i];
    const caption = document.createElement("figcaption");
    caption.textContent = job.labels[i];
    figure.append(img, caption);
    const download = document.createElement("a");
    download.href = job.images[i];
    download.download = "";
    download.textContent = "download";
    figure.append(download);
    box.append(figure);
    if ((job.kind === "edit" || job.kind === "generate") && prompts && i < prompts.length) addTokens(figure, img, job, i, prompts[i]);
  }
  if (job.details && job.details.steps) { $("step").max = job.details.steps - 1; }
  if (job.details && job.details.attention_grids) {
    state.viewed = job;
    $("grid").innerHTML = "";
    for (const g of job.details.attention_grids) {
      const o = document.createElement("option");
      o.value = g; o.textContent = `${g} (on the shorter side)`;
      $("grid").append(o);
    }
    $("grid").value = job.details.attention_grid;
  }
}

// The prompt's tokens under its image (fetched while the image shows); hovering one overlays its attention.
async function addTokens(figure, img, job, index, prompt) {
  const tokens = document.createElement("div");
  tokens.className = "tokens";
  figure.append(tokens);
  const { target_tokens } = await api("POST", "/api/diff", { source: prompt, target: prompt });
  for (const t of target_tokens) {
    const span = document.createElement("span");
    span.className = "token";
    span.textContent = t.text;
    span.onmouseenter = () => {
      const step = +$("step").value;
      img.src = `/api/jobs/${job.id}/attention?prompt=${index}&token=${t.position}&res=${$("grid").value}` + (step >= 0 ? `&step=${step}` : "");
    };
    span.onmouseleave = () => { img.src = img.dataset.src; };
    tokens.append(span);
  }
}

function describe(job) {
  const d = job.details || {};
  if (job.kind === "invert") return `invert: ${d.prompt || ""}${d.psnr ? ` (PSNR ${d.psnr} dB)` : ""}`;
  return `${job.kind}: ${(d.prompts || []).slice(-1)[0] || ""}`;
}

function command(job) {
  const spec = JSON.parse(job.details.spec);
  return `p2p edit --spec spec.json --out out  # spec.json: ${JSON.stringify(spec)}`;
}

function addHistory(job) {
  let item = document.querySelector(`#jobs li[data-id="${job.id}"]`);
  if (!item) {
    item = document.createElement("li");
    item.dataset.id = job.id;
    $("jobs").prepend(item);
  }
  item.className = job.state;
  item.innerHTML = "";
  const title = document.createElement("a");
  title.href = "#";
  title.textContent = `${describe(job)} — ${job.state}`;
  if (job.details && job.details.spec) title.title = job.details.spec; // its parameters, on hover
  if (job.error) title.title = job.error;
  title.onclick = e => { e.preventDefault(); if (job.state === "done") showResult(job); };
  item.append(title);
  if (job.state === "done" && job.details && job.details.spec) {
    for (const [label, text] of [["copy spec JSON", () => job.details.spec], ["copy p2p command", () => command(job)]]) {
      const b = document.createElement("button");
      b.textContent = label;
      b.onclick = () => navigator.clipboard && navigator.clipboard.writeText(text());
      item.append(" ", b);
    }
  }
}

// Live progress of every job (server-sent events).
const events = new EventSource("/api/events");
events.addEventListener("job", e => {
  const job = JSON.parse(e.data);
  state.jobs[job.id] = job;
  addHistory(job);
  if (job.id === state.current) follow(job);
});

// The page's progress and results follow the job the user started last.
function follow(job) {
  const p = job.progress;
  if (job.state === "running" && job.preview) { $("preview").src = job.preview; $("preview").hidden = false; }
  if (job.state === "running" && p) {
    $("bar").max = p.total; $("bar").value = p.step;
    $("progressText").textContent = `${p.phase} ${p.step}/${p.total}` + (p.inner_total ? ` (inner ${p.inner}/${p.inner_total}, loss ${p.loss?.toExponential(2)})` : "") +
      ` · ${p.it_per_s} it/s · ETA ${p.eta_s} s`;
  } else $("progressText").textContent = job.state;
  if (job.state === "done" || job.state === "failed" || job.state === "cancelled") {
    $("cancel").disabled = true;
    $("preview").hidden = true;
    $("bar").value = job.state === "done" ? $("bar").max : 0;
    if (job.state === "failed") showError(job.error);
    if (job.state === "done") {
      if (job.kind === "invert") {
        state.photo = { id: job.id, prompt: job.details.prompt };
        state.source = { prompt: job.details.prompt, sampling: {} };
        $("target").value = job.details.prompt;
        $("progressText").textContent = `reconstruction PSNR ${job.details.psnr} dB`;
      }
      showResult(job);
      updateDiff();
    }
  }
}

// Photos: drop or choose a PNG/JPEG; one of our PNGs (or an A1111 PNG) restores its settings instead.
async function takeFile(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  const text = pngText(bytes);
  if (text["prompt-to-prompt"] || text.parameters) { restore(text); return; }
  const form = new FormData();
  form.append("image", file);
  form.append("prompt", $("prompt").value.trim());
  form.append("method", $("method").value);
  form.append("steps", $("steps").value);
  form.append("guidance_scale", $("guidance").value);
  await run("invert", form);
}
$("photo").onchange = () => $("photo").files[0] && takeFile($("photo").files[0]);
document.addEventListener("dragover", e => e.preventDefault());
document.addEventListener("drop", e => {
  e.preventDefault();
  if (e.dataTransfer.files[0]) takeFile(e.dataTransfer.files[0]);
});

// tEXt and iTXt chunks of a PNG.
function pngText(bytes) {
  const out = {};
  if (bytes[0] !== 0x89 || bytes[1] !== 0x50) return out;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const utf8 = new TextDecoder("utf-8"), latin1 = new TextDecoder("latin1");
  for (let at = 8; at + 8 <= bytes.length;) {
    const length = view.getUint32(at), type = latin1.decode(bytes.subarray(at + 4, at + 8));
    const data = bytes.subarray(at + 8, at + 8 + length);
    const zero = data.indexOf(0);
    if (type === "tEXt" && zero > 0) out[latin1.decode(data.subarray(0, zero))] = latin1.decode(data.subarray(zero + 1));
    if (type === "iTXt" && zero > 0 && data[zero + 1] === 0) {
      let p = data.indexOf(0, zero + 3); p = data.indexOf(0, p + 1);
      out[latin1.decode(data.subarray(0, zero))] = utf8.decode(data.subarray(p + 1));
    }
    at += 12 + length;
  }
  return out;
}

function restore(text) {
  if (text["prompt-to-prompt"]) {
    const spec = JSON.parse(text["prompt-to-prompt"]);
    $("prompt").value = spec.prompts[0];
    $("target").value = spec.prompts[spec.prompts.length - 1];
    if (spec.seed !== undefined) $("seed").value = spec.seed;
    if (spec.steps) $("steps").value = spec.steps;
    if (spec.guidance_scale) $("guidance").value = spec.guidance_scale;
    if (spec.scheduler) $("scheduler").value = spec.scheduler;
    $("negative").value = spec.negative_prompt || "";
    const cross = spec.base ? spec.base.cross_replace_steps : spec.cross_replace_steps;
    const self = spec.base ? spec.base.self_replace_steps : spec.self_replace_steps;
    if (typeof cross === "number") { $("cross").value = cross; $("crossValue").value = cross; }
    if (typeof self === "number") { $("self").value = self; $("selfValue").value = self; }
    state.words = {};
    if (spec.equalizer) spec.equalizer.words.forEach((w, i) => { state.words["t:" + w] = { weight: spec.equalizer.values[i], blend: false }; });
    state.source = null;
  } else {
    // AUTOMATIC1111: "prompt\nNegative prompt: ...\nSteps: 20, Sampler: ..., CFG scale: 7, Seed: 1, Size: 512x512, ..."
    const lines = text.parameters.split("\n");
    const settings = lines.pop();
    $("prompt").value = lines.filter(l => !l.startsWith("Negative prompt:")).join(" ").trim();
    $("target").value = $("prompt").value;
    const neg = lines.find(l => l.startsWith("Negative prompt:"));
    $("negative").value = neg ? neg.slice(16).trim() : "";
    const field = name => (settings.match(new RegExp(`${name}: ([^,]+)`)) || [])[1];
    if (field("Steps")) $("steps").value = field("Steps");
    if (field("CFG scale")) $("guidance").value = field("CFG scale");
    if (field("Seed")) $("seed").value = field("Seed");
    const size = field("Size");
    if (size) { const [w, h] = size.split("x"); $("width").value = w; $("height").value = h; }
    state.source = null;
  }
  $("progressText").textContent = "settings restored from the dropped PNG";
  updateDiff();
}

(async () => {
  state.info = await api("GET", "/api/info");
  $("model").textContent = `model: ${state.info.model}`;
  for (const s of state.info.schedulers) {
    const o = document.createElement("option");
    o.value = o.textContent = s;
    $("scheduler").append(o);
  }
  $("scheduler").value = state.info.scheduler;
  $("width").placeholder = state.info.width;
  $("height").placeholder = state.info.height;
  $("target").value = $("prompt").value;
})();
